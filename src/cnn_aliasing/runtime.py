"""How a job runs: the one policy for devices, memory format, CPU threads and progress bars, and running a
model on images (eval mode and device moves undone on exit, input errors that name the input).

Every job that runs a model (measuring, evaluating, attacking, training) uses these, so each resolves a
device setting (:func:`resolve_device`, :func:`device_for`), decides channels_last
(:func:`use_channels_last`, :func:`is_channels_last`), sets threads (:func:`set_threads`) and shows
progress (:func:`progress_bar`: rank 0 only, silenced by ``progress=False``) in the same way, and leaves
the model as it found it.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from cnn_aliasing import distributed
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


def device_for(model: nn.Module, device: str | torch.device | None) -> torch.device:
    """The device a job runs ``model`` on: ``device`` checked by :func:`resolve_device`, or (None) the
    device the model is on."""
    return model_device(model) if device is None else resolve_device(device)


def set_threads(threads: int | None) -> None:
    """Let torch's CPU kernels use ``threads`` threads (None: leave torch's default, one per core)."""
    if threads is not None:
        torch.set_num_threads(threads)


def progress_bar(
    iterable: Any = None,
    *,
    show: bool,
    context: distributed.Context | None = None,
    **options: Any,
) -> tqdm:
    """A tqdm bar over ``iterable`` (or counted with ``update``), shown when ``show`` (a job's ``progress``
    argument, False under ``--quiet``) and only on rank 0 of ``context`` (default: the active process
    group's); ``options`` go to tqdm (``total``, ``desc``, ``unit`` ...)."""
    main = (context or distributed.current()).is_main
    return tqdm(iterable, disable=not (show and main), **options)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (the CPU for a model without any)."""
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return torch.device("cpu") if first is None else first.device


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
    was_channels_last = runs_channels_last(model)
    moved = home != device
    if moved:
        model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # missing from torch's stubs
    try:
        yield
    finally:
        if channels_last and not was_channels_last:
            model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
        if moved:
            model.to(home)


def check_maps(x: torch.Tensor, what: str) -> None:
    """Raise unless ``x`` is a real floating-point tensor of maps (..., H, W) with H, W > 0; the error
    names ``what`` (the argument or the function given it)."""
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[-1] == 0 or x.shape[-2] == 0:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise CnnAliasingError(f"{what}: expected a tensor of shape (..., H, W) with H, W > 0, got {shape}")
    if x.is_complex() or not x.is_floating_point():
        raise CnnAliasingError(f"{what}: expected real floating-point maps, got dtype {x.dtype}")


def check_unit_range(images: torch.Tensor, *, batch: int | None = None) -> None:
    """Raise unless every value lies in [0, 1] (models take such images and normalise inside).

    NaN and Inf fail. One reduction on the images' device and one host sync; ``batch`` (a 0-based index)
    is named in the message.
    """
    if images.numel() == 0:
        return
    low, high = torch.stack(torch.aminmax(images)).tolist()
    if 0 <= low and high <= 1:  # NaN compares false
        return
    where = "images" if batch is None else f"images of batch {batch}"
    if math.isfinite(low) and math.isfinite(high):
        found = f"got values in [{low:.3g}, {high:.3g}]"
    else:  # an error path: the extra reductions cost nothing on the way through
        nan, inf = int(images.isnan().sum()), int(images.isinf().sum())
        finite = images[images.isfinite()]
        span = f"[{finite.min().item():.3g}, {finite.max().item():.3g}]" if finite.numel() else "none"
        found = f"got {nan} NaN and {inf} Inf values (finite values: {span})"
    raise CnnAliasingError(f"{where} must lie in [0, 1] (models normalise inside), {found}")


def check_finite_weights(model: nn.Module) -> None:
    """Raise naming the parameters and buffers of ``model`` that hold NaN or Inf (one host sync)."""
    named = [
        (name, t)
        for name, t in (*model.named_parameters(), *model.named_buffers())
        if t.is_floating_point() or t.is_complex()
    ]
    if not named:
        return
    device = named[0][1].device
    finite = torch.stack([t.isfinite().all().to(device) for _, t in named]).tolist()
    bad = [(name, t) for (name, t), ok in zip(named, finite, strict=True) if not ok]
    if bad:
        listed = ", ".join(
            f"{name} ({int(t.isnan().sum())} NaN, {int(t.isinf().sum())} Inf of {t.numel()} values)"
            for name, t in bad
        )
        raise CnnAliasingError(
            f"the model's weights hold NaN or Inf: {listed}; measuring needs finite weights"
        )


def run_model(model: nn.Module, images: torch.Tensor) -> Any:
    """Call the model, turning a failure on this input into a :class:`ModelInputError` naming its shape."""
    try:
        return model(images)
    except RuntimeError as error:
        raise ModelInputError(
            f"{type(model).__name__} cannot run on input of shape {tuple(images.shape)}: {first_line(error)}"
        ) from error


def use_channels_last(requested: bool | None, device: torch.device) -> bool:
    """Whether a model runs in channels_last on ``device``: ``requested`` if given, else on CUDA only.

    On CUDA it is faster for convolutions. On the CPU it is off by default: oneDNN's channels_last
    convolution backward crashes the interpreter on some x86 CPUs (AVX2-only AMD EPYC, torch 2.13: a 1x1
    stride-2 conv with 2-4 input channels), so a CPU run in channels_last runs under :func:`safe_on_cpu`.
    """
    return device.type == "cuda" if requested is None else requested


def is_channels_last(x: torch.Tensor) -> bool:
    """Whether ``x`` is a 4-d tensor laid out channels_last; one that fits both layouts (a single channel,
    or 1 x 1 maps) counts as contiguous."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def runs_channels_last(model: nn.Module) -> bool:
    """Whether the model's 4-d parameters (conv weights) are laid out channels_last: any of them is."""
    return any(is_channels_last(p) for p in model.parameters())


@contextlib.contextmanager
def safe_on_cpu(model: nn.Module, device: torch.device, *, channels_last: bool = False) -> Iterator[None]:
    """Turn oneDNN off while a channels_last model (or ``channels_last`` inputs) runs on the CPU.

    oneDNN's channels_last convolution backward segfaults on some CPUs (see :func:`use_channels_last`);
    PyTorch's own kernels are slower there but safe. Anywhere else this does nothing.
    """
    if device.type != "cpu" or not (channels_last or runs_channels_last(model)):
        yield
        return
    enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False  # type: ignore[assignment]  # a settable flag, typed as ContextProp
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = enabled
