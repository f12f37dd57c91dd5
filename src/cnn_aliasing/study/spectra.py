"""The spectra of one feature map of a model, for the study's spectrum figures (the paper's Figs. 2 and 3).

For one op and one image, the op's full-resolution output x is captured with the probe; the channel whose
map aliases most is chosen, and its full spectrum X, the spectrum Y of the real (down-sampled) output and
the alias-free spectrum Z are returned as a JSON-ready dict (``docs/results-format.md``, spectra files).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cnn_aliasing import spectral
from cnn_aliasing.downsamplers import StridedCall
from cnn_aliasing.errors import CnnAliasingError
from cnn_aliasing.probe import OpCall, find_downsamplers, probing
from cnn_aliasing.runtime import evaluation_mode, model_device, run_model

SCHEMA = 1


def capture_full_output(model: nn.Module, image: torch.Tensor, op: str) -> tuple[torch.Tensor, OpCall]:
    """The full-resolution output (C, H, W) of the op named ``op`` on one image (C, H, W) in [0, 1].

    Runs the model once (eval mode, no gradients, on its device) and leaves it as found. An op met
    several times in a forward gives its first call.
    """
    captured: list[tuple[torch.Tensor, OpCall]] = []

    def observe(call_op: OpCall, call: StridedCall) -> None:
        if call_op.name == op and not captured:
            captured.append((call.measured().detach(), call_op))

    batch = image.unsqueeze(0).to(model_device(model))
    with torch.no_grad(), evaluation_mode(model), probing(model, observe):
        run_model(model, batch)
    if not captured:
        found = [d.name for d in find_downsamplers(model, batch)]
        raise CnnAliasingError(f"no down-sampling op named {op!r}; the model's ops are: {', '.join(found)}")
    x, call_op = captured[0]
    return x[0], call_op


def _complex_json(z: torch.Tensor) -> dict[str, list[list[float]]]:
    return {"re": z.real.tolist(), "im": z.imag.tolist()}


def map_spectra(x: torch.Tensor, factor: tuple[int, int], nyquist: str) -> dict[str, Any]:
    """Spectra of one full-resolution map x (H, W), in float64: X, Y, Z and the aliasing sum |Y - Z|."""
    convention = spectral.as_nyquist(nyquist)
    full = spectral.spectrum(spectral.pad_to_multiple(x.detach().to(torch.float64).cpu(), factor))
    actual, alias_free = spectral.fold(full, factor, convention)
    return {
        "factor": list(factor),
        "nyquist": convention.value,
        "aliasing": float((actual - alias_free).abs().sum()),
        "full": _complex_json(full),
        "actual": _complex_json(actual),
        "alias_free": _complex_json(alias_free),
    }


def capture_spectrum(
    model: nn.Module,
    image: torch.Tensor,
    op: str,
    *,
    nyquist: str = "zero",
    model_name: str = "",
    index: int = 0,
) -> dict[str, Any]:
    """The spectra file of one model: op ``op`` on ``image`` (C, H, W), the channel that aliases most.

    ``index`` is the image's place among the study's images (recorded, not used).
    """
    x, call_op = capture_full_output(model, image, op)
    per_channel = spectral.aliasing_per_map(x, call_op.factor, nyquist=nyquist)
    channel = int(per_channel.argmax())
    return {
        "schema": SCHEMA,
        "model": model_name,
        "op": op,
        "image": index,
        "channel": channel,
        **map_spectra(x[channel], call_op.factor, nyquist),
    }
