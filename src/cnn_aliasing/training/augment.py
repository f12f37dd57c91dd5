"""Data augmentation on whole batches on their device: random crop after zero padding, horizontal flip.

Driven by a ``torch.Generator`` on the images' device, so a seeded epoch repeats exactly; works on uint8
or float batches and never leaves the device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def crop_flip(
    images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor, padding: int
) -> torch.Tensor:
    """Zero-pad each (N, C, H, W) image by ``padding`` pixels, cut the H x W window whose corner is
    (``top[i]``, ``left[i]``) in the padded image (each in 0..2 * padding), and mirror it left-right
    where ``flip[i]``."""
    n, _, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding)) if padding else images
    rows = top.view(n, 1) + torch.arange(h, device=images.device)  # (N, H)
    cols = left.view(n, 1) + torch.arange(w, device=images.device)  # (N, W)
    cols = torch.where(flip.view(n, 1), cols.flip(1), cols)
    batch = torch.arange(n, device=images.device).view(n, 1, 1)
    # advanced indexing on dims 0, 2, 3 -> (N, H, W, C)
    out = padded.permute(0, 2, 3, 1)[batch, rows.view(n, h, 1), cols.view(n, 1, w)]
    return out.permute(0, 3, 1, 2).contiguous()


def crop_flip_draws(
    n: int, padding: int, flip: bool, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The random (top, left, flip) of ``n`` images for :func:`crop_flip`, drawn from ``generator`` on its
    device: each corner uniform in 0..2 * padding, each flip with probability 1/2 (never if not ``flip``).

    The draws of image i depend only on the generator's state and i, so a slice of a batch's draws is what
    that slice of images gets in the whole batch (how several ranks augment one global batch)."""
    device = generator.device
    top = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=device)
    left = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=device)
    flips = torch.rand(n, generator=generator, device=device) < 0.5
    if not flip:
        flips = torch.zeros_like(flips)
    return top, left, flips


def random_crop_flip(
    images: torch.Tensor, padding: int, flip: bool, generator: torch.Generator
) -> torch.Tensor:
    """Random crop with ``padding``-pixel zero padding and (if ``flip``) a random horizontal flip with
    probability 1/2, independently per image, drawn from ``generator``."""
    draws = crop_flip_draws(images.shape[0], padding, flip, generator)
    top, left, flips = (d.to(images.device) for d in draws)
    return crop_flip(images, top, left, flips, padding)
