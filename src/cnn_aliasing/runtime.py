"""Running a model on images: its device and dtype, eval mode and device moves that are undone on exit,
and input errors that name the input.

Every job that runs a model (measuring, evaluating, attacking) uses these, so each leaves the model as it
found it in the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from cnn_aliasing.errors import CnnAliasingError, ModelInputError, first_line


def resolve_device(device: str | torch.device | None, *, option: str = "device") -> torch.device:
    """The torch device ``device`` (None: cuda if available, else cpu), checked to be usable here.

    ``option`` names the setting in error messages (e.g. ``"--device"``).
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise CnnAliasingError(f"{option} {device!r} is not a device name; e.g. cpu, cuda, cuda:1") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise CnnAliasingError(f"{option} {device}: CUDA is not available on this machine; use {option} cpu")
    try:
        torch.empty(0, device=resolved)
    except (RuntimeError, AssertionError) as error:
        raise CnnAliasingError(f"{option} {device} cannot be used here: {first_line(error)}") from None
    return resolved


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (the CPU for a model without any)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype | None:
    """The dtype of the model's first floating-point parameter (None: the model has none)."""
    for tensor in model.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    return None


@contextlib.contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """Put every module in eval mode, and give each its own training flag back on exit."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training


@contextlib.contextmanager
def on_device(model: nn.Module, device: torch.device, *, channels_last: bool = False) -> Iterator[None]:
    """Move the model to ``device`` (and optionally to channels_last) for the duration, and back on exit.

    The parameter objects stay the same (``nn.Module.to`` swaps their data), so references to them held
    by the caller stay valid.
    """
    home = model_device(model)
    weights = [p for p in model.parameters() if p.dim() == 4]
    was_channels_last = bool(weights) and weights[0].is_contiguous(memory_format=torch.channels_last)
    moved = home != device
    if moved:
        model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        if channels_last and not was_channels_last:
            model.to(memory_format=torch.contiguous_format)
        if moved:
            model.to(home)


def check_unit_range(images: torch.Tensor) -> None:
    """Raise unless every value lies in [0, 1] (models take such images and normalise inside)."""
    if images.numel() == 0:
        return
    low, high = torch.aminmax(images)
    if low.item() < 0 or high.item() > 1:
        raise CnnAliasingError(
            f"images must lie in [0, 1] (models normalise inside), got values in [{low.item():.3g}, "
            f"{high.item():.3g}]"
        )


def run_model(model: nn.Module, images: torch.Tensor) -> Any:
    """Call the model, turning a failure on this input into a :class:`ModelInputError` naming its shape."""
    try:
        return model(images)
    except RuntimeError as error:
        raise ModelInputError(
            f"{type(model).__name__} cannot run on input of shape {tuple(images.shape)}: {first_line(error)}"
        ) from error
