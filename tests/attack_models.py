"""Tiny models and data for the attack tests (made in the test, seeded, 3 x 8 x 8 images)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

SHAPE = (3, 8, 8)
DIM = 3 * 8 * 8


def linear_model(n_classes: int, seed: int = 0) -> nn.Sequential:
    """logits = W x + b on the flattened image, in eval mode."""
    torch.manual_seed(seed)
    linear = nn.Linear(DIM, n_classes)
    with torch.no_grad():
        linear.weight.normal_(0.0, 1.0)
        linear.bias.zero_()
    return nn.Sequential(nn.Flatten(), linear).eval()


def tiny_cnn(seed: int = 0, n_classes: int = 10) -> nn.Sequential:
    """A strided conv, a ReLU and a linear layer, in eval mode."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, n_classes),
    ).eval()


def images(n: int, seed: int = 1, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """``n`` uniform random images in [low, high]."""
    gen = torch.Generator().manual_seed(seed)
    return low + (high - low) * torch.rand(n, *SHAPE, generator=gen)


def predicted(model: nn.Module, x: torch.Tensor, n_wrong: int = 0) -> torch.Tensor:
    """The model's predictions as labels, the first ``n_wrong`` shifted by one class (misclassified)."""
    with torch.no_grad():
        logits = model(x)
    labels = logits.argmax(dim=1)
    labels[:n_wrong] = (labels[:n_wrong] + 1) % logits.shape[1]
    return labels


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one thread: tiny models gain nothing from more, and a busy machine loses a lot."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
