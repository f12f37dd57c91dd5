"""Contract tests over ``list_models()`` (as timm's tests run every registered name): every registered
model builds small, runs forward and backward, has its down-sampling found by the probe, is swapped by every
anti-aliasing method (``antialias(model, method)`` and ``create_model(..., downsample=method)`` alike, its
declared slots used), and round-trips its weights through a checkpoint. A new model module is tested by
registering it; ``test_the_contracts_fail_on_a_planted_broken_model`` shows that each check catches a
broken model."""

from __future__ import annotations

import functools
import inspect
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnn_aliasing import find_downsamplers, models
from cnn_aliasing.antialias import AntialiasSlot, antialias, get_method, list_methods
from cnn_aliasing.models import (
    create_model,
    list_models,
    load_checkpoint,
    register_model,
    registry,
    save_checkpoint,
)
from cnn_aliasing.registry import Registry

SMALL_ARGS: dict[str, Any] = {"width": 2, "widen_factor": 1, "depth": 10}
"""Argument values that keep each model small (applied where its factory takes them)."""
POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.LPPool2d)


def small_model(name: str, **kwargs: Any) -> nn.Module:
    """Registered model ``name`` built with the small arguments its factory takes."""
    taken = inspect.signature(registry.MODELS.get(name)).parameters
    return create_model(name, **{k: v for k, v in SMALL_ARGS.items() if k in taken}, **kwargs)


def images(n: int = 2) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def stride_of(module: nn.Module) -> tuple[int, int]:
    stride: Any = module.stride if module.stride is not None else module.kernel_size
    return (stride, stride) if isinstance(stride, int) else (stride[0], stride[1])


def strided_modules(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Every strided convolution and pool module of ``model``, with its stride."""
    return {
        name: stride_of(m)
        for name, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, *POOLS)) and stride_of(m) != (1, 1)
    }


def slots(model: nn.Module) -> dict[str, tuple[nn.Module, AntialiasSlot]]:
    """Every declared slot by name, with its parent."""
    found = {}
    for parent_name, parent in model.named_modules():
        for name, child in parent.named_children():
            if isinstance(child, AntialiasSlot):
                found[f"{parent_name}.{name}".lstrip(".")] = (parent, child)
    return found


# ------------------------------------------------------------------------------------- the contract checks
def check_forward_and_backward(name: str) -> None:
    """Logits (N, 10), finite; a loss reaches every parameter and the input with finite gradients."""
    torch.manual_seed(0)
    model = small_model(name).train()
    x = images().requires_grad_()
    logits = model(x)
    assert logits.shape == (2, 10) and torch.isfinite(logits).all(), logits.shape
    F.cross_entropy(logits, torch.tensor([3, 7])).backward()
    for key, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), f"no gradient at {key}"
    assert x.grad is not None and x.grad.abs().sum() > 0, "the input gets no gradient"


def check_probe_finds_every_strided_module(name: str) -> None:
    """The probe finds exactly the strided conv and pool modules, each with its stride as factor: every
    down-sampling op is a module (so anti-aliasing can swap it)."""
    model = small_model(name)
    found = find_downsamplers(model, images(1))
    assert found, "the probe finds no down-sampling op"
    assert {op.name: op.factor for op in found} == strided_modules(model)


def check_slots_follow_convolutions(name: str) -> None:
    """Every declared slot names a sibling Conv2d (a misspelt one would silently never be filled)."""
    for key, (parent, slot) in slots(small_model(name)).items():
        assert isinstance(getattr(parent, slot.after, None), nn.Conv2d), (
            f"{key} follows no conv {slot.after!r}"
        )


def check_every_method_swaps_and_runs(name: str, method: str) -> None:
    """``antialias(model, method)`` swaps every down-sampling op (no warning), keeps the state dict's keys,
    runs, and equals ``create_model(name, downsample=method)``; a method whose layer goes after the conv
    fills the conv's slot."""
    torch.manual_seed(0)
    strided = small_model(name).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        swapped = antialias(strided, method)
        built = small_model(name, downsample=method).eval()
    assert not caught, [str(w.message) for w in caught]  # an op left strided is an AntialiasWarning
    assert list(swapped.state_dict()) == list(strided.state_dict())
    built.load_state_dict(strided.state_dict())
    x = images()
    with torch.no_grad():
        out = swapped(x)
        assert out.shape == (2, 10) and torch.isfinite(out).all()
        torch.testing.assert_close(built(x), out, rtol=0, atol=0)
    before = strided_modules(strided)
    found = {op.name: op for op in find_downsamplers(swapped, x[:1])}
    kinds = {op.kind for op in found.values()}
    assert len(found) == len(before) and len(kinds) == 1 and kinds != {"conv2d"}, found  # the method's layer
    for key, (parent, slot) in slots(strided).items():
        conv = getattr(parent, slot.after, None)
        if isinstance(conv, nn.Conv2d) and conv.stride != (1, 1) and not get_method(method).before_conv(conv):
            assert key in found, f"{method} left the slot {key} empty"


def check_checkpoint_round_trip(name: str, folder: Path) -> None:
    """Weights (BN statistics included) saved and loaded into another instance give the same model."""
    torch.manual_seed(0)
    model = small_model(name)
    model(images())  # train-mode forward: BN running statistics away from their defaults
    model.eval()
    for suffix in (".safetensors", ".pt"):
        path = folder / f"{name}{suffix}"
        save_checkpoint(model, path)
        torch.manual_seed(1)
        other = load_checkpoint(small_model(name), path).eval()
        saved, loaded = model.state_dict(), other.state_dict()
        assert list(loaded) == list(saved) and all(torch.equal(loaded[k], saved[k]) for k in saved)
        with torch.no_grad():
            assert torch.equal(other(images()), model(images()))


# -------------------------------------------------------------------------- every registered model
@pytest.mark.parametrize("name", list_models())
def test_every_model_runs_forward_and_backward(name: str) -> None:
    check_forward_and_backward(name)


@pytest.mark.parametrize("name", list_models())
def test_every_model_has_its_down_sampling_found_by_the_probe(name: str) -> None:
    check_probe_finds_every_strided_module(name)


@pytest.mark.parametrize("name", list_models())
def test_every_model_declares_its_slots(name: str) -> None:
    check_slots_follow_convolutions(name)


@pytest.mark.parametrize("method", list_methods())
@pytest.mark.parametrize("name", list_models())
def test_every_model_is_swapped_by_every_method(name: str, method: str) -> None:
    check_every_method_swaps_and_runs(name, method)


@pytest.mark.parametrize("name", list_models())
def test_every_model_round_trips_its_checkpoint(name: str, tmp_path: Path) -> None:
    check_checkpoint_round_trip(name, tmp_path)


# ------------------------------------------------------------------------------ the checks catch breakage
class Planted(nn.Module):
    """A small model that keeps the contract, or breaks it as ``breakage`` says."""

    def __init__(self, breakage: str | None, width: int = 4, num_classes: int = 10) -> None:
        super().__init__()
        self.breakage = breakage
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(2 * width)
        self.down_antialias = AntialiasSlot("dwon" if breakage == "misnamed slot" else "down")
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv1(x))
        if self.breakage == "functional stride":
            out = F.conv2d(out, self.down.weight, self.down.bias, stride=2, padding=1)
        else:
            out = self.down(out)
        features = self.down_antialias(F.relu(self.bn(out))).mean(dim=(-2, -1))
        return self.fc(features.detach() if self.breakage == "detached forward" else features)


def plant(monkeypatch: pytest.MonkeyPatch, breakage: str | None) -> str:
    """Register ``planted_net`` (with ``breakage``) in a registry of its own, for this test only."""
    monkeypatch.setattr(registry, "MODELS", Registry("model"))

    @register_model
    def planted_net(width: int = 4, num_classes: int = 10) -> nn.Module:
        """A planted model."""
        return Planted(breakage, width, num_classes)

    assert list_models() == ["planted_net"]
    return "planted_net"


ALL_CHECKS: list[Callable[[str], None]] = [
    check_forward_and_backward,
    check_probe_finds_every_strided_module,
    check_slots_follow_convolutions,
    *[functools.partial(check_every_method_swaps_and_runs, method=method) for method in list_methods()],
]


def test_the_planted_model_keeps_the_contract(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    name = plant(monkeypatch, None)
    for check in ALL_CHECKS:
        check(name)
    check_checkpoint_round_trip(name, tmp_path)


@pytest.mark.parametrize(
    ("breakage", "failing"),
    [
        ("detached forward", [check_forward_and_backward]),
        ("functional stride", [check_probe_finds_every_strided_module, *ALL_CHECKS[3:]]),
        ("misnamed slot", [check_slots_follow_convolutions]),
    ],
)
def test_the_contracts_fail_on_a_planted_broken_model(
    monkeypatch: pytest.MonkeyPatch, breakage: str, failing: list[Any]
) -> None:
    name = plant(monkeypatch, breakage)
    for check in ALL_CHECKS:
        if check in failing:
            with pytest.raises(AssertionError):
                check(name)
        else:
            check(name)


def test_a_new_module_of_the_models_package_registers_its_model(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The package imports every module in its folder: a model is one module and nothing else."""
    (tmp_path / "planted_arch.py").write_text(
        "from torch import nn\n"
        "from cnn_aliasing.models.registry import register_model\n\n\n"
        "@register_model\n"
        "def planted_arch(num_classes: int = 10) -> nn.Module:\n"
        '    """A model in a module of its own."""\n'
        "    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))\n"
    )
    monkeypatch.setattr(registry, "MODELS", Registry("model"))
    monkeypatch.setattr(models, "__path__", [*models.__path__, str(tmp_path)])
    monkeypatch.delitem(sys.modules, "cnn_aliasing.models.planted_arch", raising=False)
    models._import_modules()
    assert list_models() == ["planted_arch"]
    assert create_model("planted_arch", num_classes=3)(images()).shape == (2, 3)
    sys.modules.pop("cnn_aliasing.models.planted_arch")
