"""Input normalisation inside a model, and the input checks shared by the architectures.

Models take images in [0, 1] (RobustBench's convention) and normalise inside. The mean and std are
non-persistent buffers: they follow ``.to(device)`` and ``.double()`` but never enter the state dict, so
the state-dict keys stay exactly RobustBench's whether or not a model normalises.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

import torch
import torch.nn.functional as F
from torch import nn

from cnn_aliasing.errors import ModelInputError, UnknownNameError

MeanStd: TypeAlias = tuple[Sequence[float], Sequence[float]]
NormalizeSpec: TypeAlias = str | MeanStd | None
"""None (no normalisation), a preset name from :data:`NORMALIZATION_PRESETS`, or a (mean, std) pair."""

NORMALIZATION_PRESETS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "pm1": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}
"""Named (mean, std) pairs. ``pm1`` maps [0, 1] to [-1, 1], i.e. ``2x - 1`` (bit for bit in float32/64)."""


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` on (N, C, H, W) images."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or len(mean) == 0:
            raise ValueError(f"normalize: mean and std need one value per channel, got {mean!r} and {std!r}")
        if any(s <= 0 for s in std):
            raise ValueError(f"normalize: every std must be positive, got {std!r}")
        shape = (1, len(mean), 1, 1)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(shape), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(shape), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_images(x, self.mean)
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def make_normalizer(spec: NormalizeSpec) -> nn.Module:
    """Build the input normaliser for ``spec``: :class:`Normalize`, or ``nn.Identity`` for None."""
    if spec is None:
        return nn.Identity()
    if isinstance(spec, str):
        if spec not in NORMALIZATION_PRESETS:
            valid = ", ".join(sorted(NORMALIZATION_PRESETS))
            raise UnknownNameError(
                f"unknown normalization preset {spec!r}; valid presets: {valid} (or a (mean, std) pair)"
            )
        return Normalize(*NORMALIZATION_PRESETS[spec])
    if len(spec) != 2:
        raise ValueError(f"normalize: expected None, a preset name or a (mean, std) pair, got {spec!r}")
    return Normalize(*spec)


# The shape checks below are fx-wrapped: a traced model calls them as opaque functions, so checking
# shapes in Python does not make the model untraceable (the probe traces models to find functional ops).


@torch.fx.wrap
def _check_images(x: torch.Tensor, mean: torch.Tensor) -> None:
    channels = mean.shape[1]
    if x.dim() != 4 or x.shape[1] != channels:
        raise ModelInputError(
            f"normalize: expected images of shape (N, {channels}, H, W), got {tuple(x.shape)}"
        )


@torch.fx.wrap
def _check_pooled(pooled: torch.Tensor, out: torch.Tensor, image: torch.Tensor) -> None:
    if pooled.shape[-2:] != (1, 1):
        kernel = (out.shape[-2] // max(pooled.shape[-2], 1), out.shape[-1] // max(pooled.shape[-1], 1))
        raise ModelInputError(
            f"image size {tuple(image.shape[-2:])} does not suit this model: its final average pool "
            f"(kernel {kernel[0]}x{kernel[1]}) got a {tuple(out.shape[-2:])} map; it is built for 32x32 "
            "images (CIFAR-10)"
        )


def pool_to_features(out: torch.Tensor, kernel_size: int, image: torch.Tensor) -> torch.Tensor:
    """Final ``F.avg_pool2d(out, kernel_size)`` flattened to (N, C); raises if the map is not pooled to 1x1.

    RobustBench's models silently mis-shape (or crash in the classifier) on images of the wrong size;
    this names the size instead.
    """
    pooled = F.avg_pool2d(out, kernel_size)
    _check_pooled(pooled, out, image)
    return pooled.flatten(1)
