"""Architectures: RobustBench key names, parameter counts, forward passes, normalisation, registry."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnn_aliasing.antialias import FLCPool
from cnn_aliasing.errors import ModelArgumentError, ModelInputError, UnknownNameError
from cnn_aliasing.models import (
    NORMALIZATION_PRESETS,
    create_model,
    list_models,
    model_descriptions,
    preact_resnet18,
    register_model,
)

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)


def bn_keys(prefix: str) -> list[str]:
    return [f"{prefix}.{s}" for s in BN]


def expected_preact_keys(bn_before_fc: bool = False) -> list[str]:
    keys = ["conv1.weight"]
    for layer in (1, 2, 3, 4):
        for block in (0, 1):
            p = f"layer{layer}.{block}"
            keys += [*bn_keys(f"{p}.bn1"), f"{p}.conv1.weight", *bn_keys(f"{p}.bn2"), f"{p}.conv2.weight"]
            if layer > 1 and block == 0:
                keys.append(f"{p}.shortcut.0.weight")
    if bn_before_fc:
        keys += bn_keys("bn")
    return [*keys, "linear.weight", "linear.bias"]


def expected_wrn_28_10_keys(sub_block1: bool) -> list[str]:
    keys = ["conv1.weight"]
    groups = ["block1", "sub_block1", "block2", "block3"] if sub_block1 else ["block1", "block2", "block3"]
    for group in groups:
        for i in range(4):  # (28 - 4) / 6 blocks per group
            p = f"{group}.layer.{i}"
            keys += [*bn_keys(f"{p}.bn1"), f"{p}.conv1.weight", *bn_keys(f"{p}.bn2"), f"{p}.conv2.weight"]
            if i == 0:  # 16 -> 160, 160 -> 320, 320 -> 640 channels
                keys.append(f"{p}.convShortcut.weight")
    return [*keys, *bn_keys("bn1"), "fc.weight", "fc.bias"]


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def randomize(model: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights and BatchNorm statistics (so eval-mode BN is not the identity); returns the state."""
    g = torch.Generator().manual_seed(seed)
    state = model.state_dict()
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        if key.endswith("running_var"):
            value.copy_(0.5 + torch.rand(value.shape, generator=g))
        elif key.endswith(".weight") and value.dim() == 1:  # BN scale
            value.copy_(0.5 + torch.rand(value.shape, generator=g))
        else:
            value.copy_(0.3 * torch.randn(value.shape, generator=g) / math.sqrt(value[0].numel() or 1))
    model.load_state_dict(state)
    return model.state_dict()


def bn(x: torch.Tensor, sd: dict[str, torch.Tensor], p: str) -> torch.Tensor:
    return F.batch_norm(
        x,
        sd[f"{p}.running_mean"],
        sd[f"{p}.running_var"],
        sd[f"{p}.weight"],
        sd[f"{p}.bias"],
        False,
        0.0,
        1e-5,
    )


def reference_preact(
    x: torch.Tensor, sd: dict[str, torch.Tensor], shortcut_from_preact: bool, bn_before_fc: bool
) -> torch.Tensor:
    """RobustBench PreActResNet(18) eval-mode forward, written functionally over the state dict."""
    out = F.conv2d(x, sd["conv1.weight"], padding=1)
    for layer in (1, 2, 3, 4):
        for block in (0, 1):
            p = f"layer{layer}.{block}"
            stride = 2 if layer > 1 and block == 0 else 1
            pre = F.relu(bn(out, sd, f"{p}.bn1"))
            if f"{p}.shortcut.0.weight" in sd:
                shortcut = F.conv2d(
                    pre if shortcut_from_preact else out, sd[f"{p}.shortcut.0.weight"], stride=stride
                )
            else:
                shortcut = out
            h = F.conv2d(pre, sd[f"{p}.conv1.weight"], stride=stride, padding=1)
            h = F.conv2d(F.relu(bn(h, sd, f"{p}.bn2")), sd[f"{p}.conv2.weight"], padding=1)
            out = h + shortcut
    if bn_before_fc:
        out = F.relu(bn(out, sd, "bn"))
    out = F.avg_pool2d(out, 4).view(out.shape[0], -1)
    return F.linear(out, sd["linear.weight"], sd["linear.bias"])


def reference_wrn(x: torch.Tensor, sd: dict[str, torch.Tensor], blocks_per_group: int) -> torch.Tensor:
    """RobustBench WideResNet eval-mode forward, written functionally over the state dict."""
    out = F.conv2d(x, sd["conv1.weight"], padding=1)
    for group, group_stride in (("block1", 1), ("block2", 2), ("block3", 2)):
        for i in range(blocks_per_group):
            p = f"{group}.layer.{i}"
            stride = group_stride if i == 0 else 1
            pre = F.relu(bn(out, sd, f"{p}.bn1"))
            h = F.relu(bn(F.conv2d(pre, sd[f"{p}.conv1.weight"], stride=stride, padding=1), sd, f"{p}.bn2"))
            h = F.conv2d(h, sd[f"{p}.conv2.weight"], padding=1)
            if f"{p}.convShortcut.weight" in sd:
                out = h + F.conv2d(pre, sd[f"{p}.convShortcut.weight"], stride=stride)
            else:
                out = h + out
    out = F.relu(bn(out, sd, "bn1"))
    out = F.avg_pool2d(out, 8).view(out.shape[0], -1)
    return F.linear(out, sd["fc.weight"], sd["fc.bias"])


# --- registry --------------------------------------------------------------------------------------


def test_registry_lists_every_model_sorted_with_descriptions() -> None:
    names = list_models()
    assert names == ["dm_preact_resnet18", "dm_wrn_28_10", "preact_resnet18", "resnet18", "wrn_28_10"]
    descriptions = model_descriptions()
    assert list(descriptions) == names
    assert all(d and "\n" not in d for d in descriptions.values())


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError, match=r"unknown model 'resnet9000'.*preact_resnet18.*wrn_28_10"):
        create_model("resnet9000")


def test_unknown_argument_lists_valid_arguments() -> None:
    with pytest.raises(UnknownNameError, match=r"'widht'.*valid arguments: .*width"):
        create_model("preact_resnet18", widht=8)


def test_the_registry_gives_every_factory_downsample() -> None:
    parameter = inspect.signature(preact_resnet18).parameters["downsample"]
    assert (parameter.default, parameter.kind) == ("strided", inspect.Parameter.KEYWORD_ONLY)
    with pytest.raises(
        UnknownNameError, match=r"valid arguments: num_classes, width, .*, normalize, downsample$"
    ):
        create_model("preact_resnet18", widht=8)
    factory: Callable[..., nn.Module] = preact_resnet18  # its type is the undecorated function's
    called = factory(width=4, downsample="flc")  # the public factory itself takes it too
    assert sum(isinstance(m, FLCPool) for m in called.modules()) == 6  # 3 strided convs, 3 shortcuts
    assert not any(isinstance(m, FLCPool) for m in create_model("resnet18", width=4).modules())

    def takes_downsample(downsample: str = "strided") -> torch.nn.Module:
        return torch.nn.Identity()

    with pytest.raises(ValueError, match="takes downsample itself; the registry adds it"):
        register_model(takes_downsample)
    assert "takes_downsample" not in list_models()


def test_duplicate_registration_raises() -> None:
    def preact_resnet18() -> torch.nn.Module:
        return torch.nn.Identity()

    with pytest.raises(ValueError, match="already registered"):
        register_model(preact_resnet18)


# --- PreAct ResNet-18 ------------------------------------------------------------------------------


def test_preact_resnet18_keys_and_parameter_count() -> None:
    model = create_model("preact_resnet18")
    assert list(model.state_dict()) == expected_preact_keys()
    assert n_params(model) == 11_171_146
    model.eval()
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_preact_bn_before_fc_adds_bn_keys() -> None:
    model = create_model("preact_resnet18", width=4, bn_before_fc=True)
    assert list(model.state_dict()) == expected_preact_keys(bn_before_fc=True)


def test_preact_width_scales_channels() -> None:
    sd = create_model("preact_resnet18", width=8, num_classes=7).state_dict()
    assert sd["conv1.weight"].shape == (8, 3, 3, 3)
    assert sd["layer4.0.shortcut.0.weight"].shape == (64, 32, 1, 1)
    assert sd["linear.weight"].shape == (7, 64)


@pytest.mark.parametrize("shortcut_from_preact", [False, True])
@pytest.mark.parametrize("bn_before_fc", [False, True])
def test_preact_forward_equals_functional_reference(shortcut_from_preact: bool, bn_before_fc: bool) -> None:
    model = create_model(
        "preact_resnet18", width=4, shortcut_from_preact=shortcut_from_preact, bn_before_fc=bn_before_fc
    ).double()
    sd = randomize(model)
    model.eval()
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = model(x)
    torch.testing.assert_close(got, reference_preact(x, sd, shortcut_from_preact, bn_before_fc))


def test_preact_shortcut_variants_differ() -> None:
    v1 = create_model("preact_resnet18", width=4).double()
    v2 = create_model("preact_resnet18", width=4, shortcut_from_preact=True).double()
    v2.load_state_dict(randomize(v1))
    v1.eval(), v2.eval()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    assert not torch.allclose(v1(x), v2(x))


# --- Wide ResNet -----------------------------------------------------------------------------------


def test_wrn_28_10_keys_parameter_count_and_forward() -> None:
    model = create_model("wrn_28_10")
    assert list(model.state_dict()) == expected_wrn_28_10_keys(sub_block1=False)
    assert n_params(model) == 36_479_194
    model.eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_wrn_28_10_sub_block1_keys_and_unused_in_forward() -> None:
    model = create_model("wrn_28_10", sub_block1=True)
    assert list(model.state_dict()) == expected_wrn_28_10_keys(sub_block1=True)
    model.eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        sub_block1 = model.sub_block1
        assert isinstance(sub_block1, nn.Module)
        for p in sub_block1.parameters():
            p.add_(1.0)
        torch.testing.assert_close(model(x), before)


@pytest.mark.parametrize(("depth", "widen_factor"), [(16, 1), (10, 2)])
def test_wrn_forward_equals_functional_reference(depth: int, widen_factor: int) -> None:
    # (16, 1): block1 keeps 16 channels (identity shortcuts); (10, 2): every group starts with convShortcut
    model = create_model("wrn_28_10", depth=depth, widen_factor=widen_factor).double()
    sd = randomize(model)
    model.eval()
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = model(x)
    torch.testing.assert_close(got, reference_wrn(x, sd, (depth - 4) // 6))


def test_wrn_initialisation_matches_robustbench() -> None:
    torch.manual_seed(0)
    model = create_model("wrn_28_10", depth=16, widen_factor=4)
    sd = model.state_dict()
    w = sd["block3.layer.1.conv1.weight"]  # 256 -> 256, fan-out 3 * 3 * 256
    assert w.std().item() == pytest.approx(math.sqrt(2.0 / (9 * 256)), rel=0.02)
    assert torch.all(sd["block2.layer.0.bn1.weight"] == 1) and torch.all(sd["bn1.bias"] == 0)
    assert torch.all(sd["fc.bias"] == 0)


def test_wrn_bad_depth_raises() -> None:
    with pytest.raises(ValueError, match="depth = 6n \\+ 4"):
        create_model("wrn_28_10", depth=27)


def test_wrong_image_size_raises_model_input_error() -> None:
    for model in (
        create_model("preact_resnet18", width=4),
        create_model("wrn_28_10", depth=10, widen_factor=1),
    ):
        with pytest.raises(ModelInputError, match=r"image size \(64, 64\).*32x32"):
            model(torch.rand(1, 3, 64, 64))


# --- normalisation ---------------------------------------------------------------------------------


def test_cifar10_preset_values() -> None:
    assert NORMALIZATION_PRESETS["cifar10"] == (CIFAR10_MEAN, CIFAR10_STD)


@pytest.mark.parametrize("name", ["preact_resnet18", "wrn_28_10"])
def test_normalize_equals_normalising_the_input(name: str) -> None:
    small = {"width": 4} if name == "preact_resnet18" else {"depth": 10, "widen_factor": 1}
    plain = create_model(name, **small).double()
    normed = create_model(name, normalize="cifar10", **small).double()
    assert list(normed.state_dict()) == list(plain.state_dict())
    normed.load_state_dict(randomize(plain))
    plain.eval(), normed.eval()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    mean = torch.tensor(CIFAR10_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD, dtype=torch.float64).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(normed(x), plain((x - mean) / std))


def test_normalize_accepts_mean_std_pair() -> None:
    a = create_model("preact_resnet18", width=4, normalize="cifar10")
    b = create_model("preact_resnet18", width=4, normalize=(CIFAR10_MEAN, CIFAR10_STD))
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(a(x), b(x))


def test_unknown_normalize_preset_lists_valid_ones() -> None:
    with pytest.raises(UnknownNameError, match=r"'imagenet'.*valid presets: cifar10"):
        create_model("preact_resnet18", width=4, normalize="imagenet")


def test_normalize_rejects_wrong_channel_count() -> None:
    model = create_model("preact_resnet18", width=4, normalize="cifar10")
    with pytest.raises(ModelInputError, match=r"\(N, 3, H, W\)"):
        model(torch.rand(2, 1, 32, 32))


def test_an_argument_the_factory_refuses_is_a_clear_error() -> None:
    with pytest.raises(ModelArgumentError, match=r"^cannot build model 'preact_resnet18' with width=0: "):
        create_model("preact_resnet18", width=0)
    with pytest.raises(ModelArgumentError, match=r"^cannot build model 'wrn_28_10' with depth='28': "):
        create_model("wrn_28_10", depth="28")
