"""The zoo's extra architectures: DeepMind-style WRN and PreAct ResNet, plain ResNet-18, the 2x - 1 input.

Reference numbers (key lists, parameter counts) were checked against RobustBench's own classes
(``DMWideResNet``, ``DMPreActResNet``, ``ResNet18``, ``WideResNet``, ``PreActResNet``): with the same
weights the outputs agree exactly (SiLU) or to one float ulp (their custom Swish).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cnn_aliasing import find_downsamplers, measure
from cnn_aliasing.errors import UnknownNameError
from cnn_aliasing.models import create_model
from test_models import bn, bn_keys, n_params, randomize
from test_probe import am_by_hand

CIFAR10_MEAN = torch.tensor((0.4914, 0.4822, 0.4465), dtype=torch.float64).view(1, 3, 1, 1)
CIFAR10_STD = torch.tensor((0.2471, 0.2435, 0.2616), dtype=torch.float64).view(1, 3, 1, 1)


def expected_dm_wrn_keys(blocks_per_group: int, first_group_shortcut: bool = True) -> list[str]:
    keys = ["init_conv.weight"]
    for group in range(3):
        for i in range(blocks_per_group):
            p = f"layer.{group}.block.{i}"
            keys += [*bn_keys(f"{p}.batchnorm_0"), f"{p}.conv_0.weight"]
            keys += [*bn_keys(f"{p}.batchnorm_1"), f"{p}.conv_1.weight"]
            if i == 0 and (group > 0 or first_group_shortcut):
                keys.append(f"{p}.shortcut.weight")
    return [*keys, *bn_keys("batchnorm"), "logits.weight", "logits.bias"]


def expected_dm_preact_keys() -> list[str]:
    keys = ["conv_2d.weight"]
    for layer in range(4):
        for block in (0, 1):
            p = f"layer_{layer}.{block}"
            keys += [*bn_keys(f"{p}.batchnorm_0"), f"{p}.conv_2d_1.weight"]
            keys += [*bn_keys(f"{p}.batchnorm_1"), f"{p}.conv_2d_2.weight"]
            if layer > 0 and block == 0:
                keys.append(f"{p}.shortcut.weight")
    return [*keys, *bn_keys("batchnorm"), "logits.weight", "logits.bias"]


def expected_resnet18_keys() -> list[str]:
    keys = ["conv1.weight", *bn_keys("bn1")]
    for layer in (1, 2, 3, 4):
        for block in (0, 1):
            p = f"layer{layer}.{block}"
            keys += [f"{p}.conv1.weight", *bn_keys(f"{p}.bn1"), f"{p}.conv2.weight", *bn_keys(f"{p}.bn2")]
            if layer > 1 and block == 0:
                keys += [f"{p}.shortcut.0.weight", *bn_keys(f"{p}.shortcut.1")]
    return [*keys, "linear.weight", "linear.bias"]


# name, expected keys, parameter count (equal to RobustBench's class)
FULL_SIZE = {
    "dm_wrn_28_10": (expected_dm_wrn_keys(4), 36_479_194),
    "dm_preact_resnet18": (expected_dm_preact_keys(), 12_548_426),
    "resnet18": (expected_resnet18_keys(), 11_173_962),
}


@pytest.mark.parametrize("name", list(FULL_SIZE))
def test_keys_and_parameter_count(name: str) -> None:
    """(Forward, backward and anti-aliasing of every registered model: test_model_contracts.py.)"""
    keys, count = FULL_SIZE[name]
    model = create_model(name)
    assert list(model.state_dict()) == keys
    assert n_params(model) == count


def test_dm_wrn_other_depth_and_width() -> None:
    model = create_model("dm_wrn_28_10", depth=16, width=4)
    assert list(model.state_dict()) == expected_dm_wrn_keys(2)
    assert n_params(model) == 2_748_890  # as RobustBench's DMWideResNet(depth=16, width=4)
    logits = create_model("dm_wrn_28_10", depth=16, width=4, num_classes=7).logits
    assert isinstance(logits, torch.nn.Linear) and logits.weight.shape == (7, 256)
    assert list(create_model("dm_wrn_28_10", depth=10, width=1).state_dict()) == expected_dm_wrn_keys(
        1, False
    )


# --- forwards against functional references over the state dict ---------------------------------------


def silu_bn(x: torch.Tensor, sd: dict[str, torch.Tensor], p: str) -> torch.Tensor:
    return bn(x, sd, p) * torch.sigmoid(bn(x, sd, p))  # DeepMind's swish, written out


def reference_dm_wrn(x: torch.Tensor, sd: dict[str, torch.Tensor], blocks: int) -> torch.Tensor:
    """RobustBench DMWideResNet (Swish) in eval mode."""
    out = F.conv2d((x - CIFAR10_MEAN) / CIFAR10_STD, sd["init_conv.weight"], padding=1)
    for group in range(3):
        for i in range(blocks):
            p = f"layer.{group}.block.{i}"
            stride = 2 if group > 0 and i == 0 else 1
            pre = silu_bn(out, sd, f"{p}.batchnorm_0")
            padded = F.pad(pre, (0, 1, 0, 1) if stride == 2 else (1, 1, 1, 1))
            h = F.conv2d(padded, sd[f"{p}.conv_0.weight"], stride=stride)
            h = F.conv2d(silu_bn(h, sd, f"{p}.batchnorm_1"), sd[f"{p}.conv_1.weight"], padding=1)
            shortcut = sd.get(f"{p}.shortcut.weight")
            out = h + (out if shortcut is None else F.conv2d(pre, shortcut, stride=stride))
    out = F.avg_pool2d(silu_bn(out, sd, "batchnorm"), 8).flatten(1)
    return F.linear(out, sd["logits.weight"], sd["logits.bias"])


def reference_dm_preact(x: torch.Tensor, sd: dict[str, torch.Tensor]) -> torch.Tensor:
    """RobustBench DMPreActResNet (Swish) in eval mode."""
    out = F.conv2d((x - CIFAR10_MEAN) / CIFAR10_STD, sd["conv_2d.weight"], padding=1)
    for layer in range(4):
        for block in (0, 1):
            p = f"layer_{layer}.{block}"
            stride = 2 if layer > 0 and block == 0 else 1
            pad = (0, 1, 0, 1) if stride == 2 else (1, 1, 1, 1)
            pre = silu_bn(out, sd, f"{p}.batchnorm_0")
            shortcut = sd.get(f"{p}.shortcut.weight")
            skip = out if shortcut is None else F.conv2d(F.pad(out, pad), shortcut, stride=stride)
            h = F.conv2d(F.pad(pre, pad), sd[f"{p}.conv_2d_1.weight"], stride=stride)
            out = F.conv2d(silu_bn(h, sd, f"{p}.batchnorm_1"), sd[f"{p}.conv_2d_2.weight"], padding=1) + skip
    out = F.avg_pool2d(silu_bn(out, sd, "batchnorm"), 4).flatten(1)
    return F.linear(out, sd["logits.weight"], sd["logits.bias"])


def reference_resnet(x: torch.Tensor, sd: dict[str, torch.Tensor]) -> torch.Tensor:
    """RobustBench ResNet (BasicBlock) in eval mode."""
    out = F.relu(bn(F.conv2d(x, sd["conv1.weight"], padding=1), sd, "bn1"))
    for layer in (1, 2, 3, 4):
        for block in (0, 1):
            p = f"layer{layer}.{block}"
            stride = 2 if layer > 1 and block == 0 else 1
            h = F.relu(bn(F.conv2d(out, sd[f"{p}.conv1.weight"], stride=stride, padding=1), sd, f"{p}.bn1"))
            h = bn(F.conv2d(h, sd[f"{p}.conv2.weight"], padding=1), sd, f"{p}.bn2")
            if f"{p}.shortcut.0.weight" in sd:
                out = bn(F.conv2d(out, sd[f"{p}.shortcut.0.weight"], stride=stride), sd, f"{p}.shortcut.1")
            out = F.relu(h + out)
    return F.linear(F.avg_pool2d(out, 4).flatten(1), sd["linear.weight"], sd["linear.bias"])


SMALL = {
    "dm_wrn_28_10": ({"depth": 16, "width": 1}, lambda x, sd: reference_dm_wrn(x, sd, 2)),
    "dm_preact_resnet18": ({"width": 2}, reference_dm_preact),
    "resnet18": ({"width": 2}, reference_resnet),
}


@pytest.mark.parametrize("name", list(SMALL))
def test_forward_equals_functional_reference(name: str) -> None:
    kwargs, reference = SMALL[name]
    model = create_model(name, **kwargs).double()
    sd = randomize(model)
    model.eval()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x, sd))


def test_dm_relu_activation_and_unknown_activation() -> None:
    relu = create_model("dm_preact_resnet18", width=4, activation="relu")
    assert isinstance(relu.get_submodule("layer_1.0.relu_0"), torch.nn.ReLU)
    assert isinstance(relu.relu, torch.nn.ReLU)
    with pytest.raises(UnknownNameError, match=r"'swish'.*relu, silu"):
        create_model("dm_wrn_28_10", depth=10, width=1, activation="swish")


def test_pm1_normalisation_is_2x_minus_1_bit_for_bit() -> None:
    """Hendrycks2019Using's wrapper feeds 2x - 1 to a plain WRN."""
    plain = create_model("wrn_28_10", depth=10, widen_factor=1).eval()
    scaled = create_model("wrn_28_10", depth=10, widen_factor=1, normalize="pm1").eval()
    scaled.load_state_dict(randomize(plain))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(scaled(x), plain(2 * x - 1))


# --- the aliasing engine on these architectures ----------------------------------------------------------

DM_WRN_OPS = [("layer.1.block.0.conv_0", 31), ("layer.1.block.0.shortcut", 32)]
DM_WRN_OPS += [("layer.2.block.0.conv_0", 15), ("layer.2.block.0.shortcut", 16)]
DM_PREACT_OPS = [
    (f"layer_{i}.0.{conv}", size)
    for i, size in ((1, 31), (2, 15), (3, 7))
    for conv in ("shortcut", "conv_2d_1")
]
RESNET_OPS = [
    (f"layer{i}.0.{conv}", size) for i, size in ((2, 32), (3, 16), (4, 8)) for conv in ("conv1", "shortcut.0")
]
ENGINE = {
    "dm_wrn_28_10": ({"depth": 10, "width": 1}, DM_WRN_OPS),
    "dm_preact_resnet18": ({"width": 2}, DM_PREACT_OPS),
    "resnet18": ({"width": 2}, RESNET_OPS),
}


@pytest.mark.parametrize("name", list(ENGINE))
def test_downsamplers_found_in_forward_order_with_odd_full_sizes(name: str) -> None:
    kwargs, expected = ENGINE[name]
    found = find_downsamplers(create_model(name, **kwargs), torch.rand(1, 3, 32, 32))
    assert [(d.name, d.kind, d.factor, d.full_shape[-1]) for d in found] == [
        (op, "conv2d", (2, 2), size) for op, size in expected
    ]


@pytest.mark.parametrize(
    ("name", "kwargs", "op", "pad"),
    [
        ("dm_wrn_28_10", {"depth": 10, "width": 1}, "layer.1.block.0.conv_0", (0, 1, 0, 1)),
        ("dm_preact_resnet18", {"width": 2}, "layer_1.0.shortcut", (0, 1, 0, 1)),
        ("dm_preact_resnet18", {"width": 2}, "layer_2.0.conv_2d_1", (0, 1, 0, 1)),
    ],
)
def test_dm_downsampling_measured_with_right_factor_and_phase(
    name: str, kwargs: dict, op: str, pad: tuple[int, ...]
) -> None:
    """The unpadded stride-2 conv after F.pad(x, (0, 1, 0, 1)): AM from its odd-sized stride-1 output."""
    model = create_model(name, **kwargs).double()
    randomize(model)
    model.eval()
    conv = model.get_submodule(op)
    assert isinstance(conv, torch.nn.Conv2d)
    inputs: list[torch.Tensor] = []
    handle = conv.register_forward_pre_hook(lambda m, args: inputs.append(args[0]))
    images = torch.rand(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        model(images)
        handle.remove()
        (padded,) = inputs
        n = padded.shape[-1] - 1  # the map's size before the (0, 1, 0, 1) padding
        assert padded[..., n, :].abs().sum() == 0 and padded[..., :, n].abs().sum() == 0  # padded at the end
        full = F.conv2d(padded, conv.weight, stride=1)  # stride 1, everything else unchanged
        assert full.shape[-2:] == (n - 1, n - 1)  # odd: 31x31 for a 32x32 map
        # phase: the real output is the stride-1 output at the even positions
        torch.testing.assert_close(F.conv2d(padded, conv.weight, stride=2), full[..., ::2, ::2])
    report = measure(model, [images], progress=False)
    measured = report.op(op)
    assert measured.factor == (2, 2) and measured.full_size == (n - 1, n - 1)
    per_map = am_by_hand(full, 2, 2)  # zero-pads 31 -> 32 at the end, as the metric defines
    assert measured.count == per_map.size
    assert measured.aliasing == pytest.approx(per_map.mean(), rel=1e-9)
