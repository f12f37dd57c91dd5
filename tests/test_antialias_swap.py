"""antialias(model, method): swapping a foreign model, weights copied from the strided model, conv
subclasses with their own forward, slots, ``create_model``'s ``downsample`` check and the recipes'
``downsample`` field (every registered architecture with every method: test_model_contracts.py)."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnn_aliasing import find_downsamplers, measure
from cnn_aliasing.antialias import (
    AntialiasedConv2d,
    AntialiasSlot,
    AntialiasWarning,
    ASAPPool,
    BlurPool,
    FLCPool,
    antialias,
    list_methods,
)
from cnn_aliasing.errors import CnnAliasingError, ModelArgumentError, UnknownKeyError, UnknownNameError
from cnn_aliasing.models import create_model

METHODS = ["asap", "blurpool", "flc"]
LAYER = {"flc": FLCPool, "asap": ASAPPool, "blurpool": BlurPool}
KIND = {"flc": "flc_pool", "asap": "asap_pool", "blurpool": "blur_pool"}


class Foreign(nn.Module):
    """A model this package knows nothing about: strided 3x3 conv with a 1x1 strided shortcut, a
    max-pool, an odd-sized input path, and two functional down-samplers that cannot be swapped."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=True), nn.ReLU())
        self.skip = nn.Conv2d(8, 16, 1, stride=2)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stem(x)
        out = self.body(out) + self.skip(out)
        out = self.pool(out)
        out = F.avg_pool2d(out, 2)
        out = out[..., ::2, ::2]
        return self.head(out.mean(dim=(-2, -1)))


def image(size: tuple[int, int] = (32, 32), n: int = 2) -> torch.Tensor:
    return torch.rand(n, 3, *size, generator=torch.Generator().manual_seed(0))


def test_methods_registered() -> None:
    assert list_methods() == METHODS
    with pytest.raises(UnknownNameError) as unknown:
        antialias(Foreign(), "lowpass")
    assert str(unknown.value) == (
        "unknown anti-aliasing method 'lowpass'; valid anti-aliasing methods: asap, blurpool, flc"
    )
    with pytest.raises(UnknownKeyError) as option:
        antialias(Foreign(), "blurpool", size=3)
    assert (
        str(option.value)
        == "anti-aliasing method 'blurpool': unknown option 'size'; valid options: filter_size"
    )
    with pytest.raises(CnnAliasingError, match="filter_size"):
        antialias(Foreign(), "blurpool", filter_size=9)


@pytest.mark.parametrize("method", METHODS)
def test_foreign_model_swapped(method: str) -> None:
    torch.manual_seed(0)
    model = Foreign().train()
    with pytest.warns(AntialiasWarning) as caught:
        swapped = antialias(model, method, example_input=image())
    message = str(caught[0].message)
    assert "avg_pool2d (avg_pool2d)" in message and "(strided_slice)" in message
    assert "2 down-sampling op(s)" in message
    assert swapped is not model and swapped.training
    assert isinstance(model.body[0], nn.Conv2d) and model.body[0].stride == (2, 2)  # the original untouched
    for size in [(32, 32), (33, 29)]:
        assert swapped(image(size)).shape == model(image(size)).shape == (2, 5)
    ops = {op.name: op.kind for op in find_downsamplers(swapped, image())}
    assert ops["body.0.pool" if method != "blurpool" else "body.0.blur"] == KIND[method]
    assert ops["skip.pool"] == KIND[method]
    assert ops["pool.downsample"] == KIND[method]
    assert sum(kind == KIND[method] for kind in ops.values()) == 3
    conv, skip = swapped.get_submodule("body.0"), swapped.get_submodule("skip")
    assert isinstance(conv, AntialiasedConv2d) and conv.stride == (1, 1)
    if method == "blurpool":  # after the 3x3 conv, before the 1x1 shortcut
        assert conv.pool is None and isinstance(conv.blur, BlurPool)
        assert isinstance(skip, AntialiasedConv2d)
        assert isinstance(skip.pool, BlurPool) and skip.blur is None
    else:  # before every conv, sized like the strided conv, "same" padding
        assert isinstance(conv.pool, LAYER[method]) and conv.padding == (1, 1)


@pytest.mark.parametrize("method", METHODS)
def test_weights_copied_give_the_same_stride_one_conv_outputs(method: str) -> None:
    torch.manual_seed(1)
    strided = Foreign()
    with pytest.warns(AntialiasWarning):
        swapped = antialias(strided, method, example_input=image())
    assert list(swapped.state_dict()) == list(strided.state_dict())
    for name, value in strided.state_dict().items():
        torch.testing.assert_close(swapped.state_dict()[name], value, rtol=0, atol=0)
    # a fresh swapped model takes the strided model's state dict as it is
    with pytest.warns(AntialiasWarning):
        fresh = antialias(Foreign(), method, example_input=image())
    fresh.load_state_dict(strided.state_dict())
    z = torch.randn(2, 8, 16, 16)
    for name in ("body.0", "skip"):
        old, new = strided.get_submodule(name), fresh.get_submodule(name)
        assert isinstance(old, nn.Conv2d) and isinstance(new, AntialiasedConv2d)
        expected = F.conv2d(z, old.weight, old.bias, stride=1, padding=new.padding)
        torch.testing.assert_close(new._conv_forward(z, new.weight, new.bias), expected, rtol=0, atol=0)
        assert new.weight is not old.weight


@pytest.mark.parametrize("method", METHODS)
def test_swapped_model_is_measured(method: str) -> None:
    with pytest.warns(AntialiasWarning):
        swapped = antialias(Foreign(), method, example_input=image())
    report = measure(swapped, [image()], progress=False)
    kinds = [op.kind for op in report.ops]
    assert kinds.count(KIND[method]) == 3 and "avg_pool2d" in kinds


def test_create_model_rejects_unknown_downsample() -> None:
    with pytest.raises(ModelArgumentError, match="valid: strided, asap, blurpool, flc"):
        create_model("preact_resnet18", width=4, downsample="blur")


def test_recipe_downsample_field() -> None:
    from cnn_aliasing.training.recipes import get_recipe

    recipe = get_recipe("small-standard", downsample="flc")
    assert recipe.arch_args == {"width": 16, "normalize": "cifar10"}  # the field alone holds downsample
    assert recipe.model_args == {"width": 16, "normalize": "cifar10", "downsample": "flc"}
    assert recipe.to_dict()["arch_args"] == recipe.model_args  # run folders record the model's arguments
    again = recipe.replace(downsample="blurpool")
    assert again.model_args["downsample"] == "blurpool" and again.downsample == "blurpool"
    assert recipe.replace(downsample="strided").model_args == {"width": 16, "normalize": "cifar10"}
    assert type(recipe).from_dict(recipe.to_dict()) == recipe
    with pytest.raises(
        CnnAliasingError, match="field downsample must be one of strided, asap, blurpool, flc, got"
    ):
        get_recipe("small-standard", downsample="max")
    with pytest.raises(CnnAliasingError, match="set only one"):
        get_recipe("small-standard", arch_args={"width": 4, "downsample": "asap"}, downsample="flc")
    model = create_model(recipe.arch, **recipe.model_args)
    assert any(isinstance(m, FLCPool) for m in model.modules())


# ---- Conv2d subclasses with their own forward -----------------------------------------------------------


def standardised(weight: torch.Tensor) -> torch.Tensor:
    """Weight standardisation, per output filter (as the test's WSConv2d does in its forward)."""
    mean = weight.mean(dim=(1, 2, 3), keepdim=True)
    return (weight - mean) / (weight.std(dim=(1, 2, 3), keepdim=True) + 1e-5)


class WSConv2d(nn.Conv2d):
    """A weight-standardised conv: its weight is computed in forward, which follows self.stride."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, standardised(self.weight), self.bias, self.stride, self.padding, self.dilation)


class WSNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.down = WSConv2d(8, 16, 3, stride=2, padding=1)
        self.skip = WSConv2d(8, 16, 1, stride=2)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stem(x)
        out = F.relu(self.down(out)) + self.skip(out)
        return self.head(out.mean(dim=(-2, -1)))


def method_layer(method: str, kernel: int, padding: int) -> tuple[nn.Module, bool]:
    """The method's down-sampler for a stride-2 conv (kernel, padding), and whether it goes before it."""
    geometry = {"kernel_size": (kernel, kernel), "padding": (padding, padding), "dilation": (1, 1)}
    if method == "flc":
        return FLCPool((2, 2), **geometry), True
    if method == "asap":
        return ASAPPool((2, 2), pad_to_odd=False, **geometry), True
    return BlurPool(3, (2, 2)), kernel == 1 and padding == 0


def reference_conv(conv: nn.Conv2d, method: str, x: torch.Tensor) -> torch.Tensor:
    """By hand: the stride-1 conv with the standardised weights and the method's module from
    cnn_aliasing.antialias before it ("same" padding) or after it."""
    kernel, padding = conv.kernel_size[0], int(conv.padding[0])
    layer, before = method_layer(method, kernel, padding)
    weight = standardised(conv.weight)
    if before:
        same = (kernel - 1) // 2 if method != "blurpool" else padding
        return F.conv2d(layer(x), weight, conv.bias, 1, same)
    return layer(F.conv2d(x, weight, conv.bias, 1, padding))


@pytest.mark.parametrize("method", METHODS)
def test_custom_forward_conv_is_swapped_keeping_its_forward(method: str) -> None:
    torch.manual_seed(2)
    model = WSNet()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # everything is swapped: no AntialiasWarning
        swapped = antialias(model, method, example_input=image())
    assert model.down.stride == (2, 2) and type(model.down) is WSConv2d  # the original untouched
    for name in ("down", "skip"):
        module = swapped.get_submodule(name)
        assert isinstance(module, WSConv2d) and module.stride == (1, 1)
        assert type(module).__name__ == "AntialiasedWSConv2d"
    assert list(swapped.state_dict()) == list(model.state_dict())
    x = image((32, 32))
    with torch.no_grad():
        stem = model.stem(x)
        down, skip = reference_conv(model.down, method, stem), reference_conv(model.skip, method, stem)
        expected = model.head((F.relu(down) + skip).mean(dim=(-2, -1)))
        torch.testing.assert_close(swapped.get_submodule("down")(stem), down, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(swapped.get_submodule("skip")(stem), skip, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(swapped(x), expected, rtol=1e-6, atol=1e-6)
        assert swapped(image((33, 29))).shape == model(image((33, 29))).shape == (2, 5)
    kinds = [op.kind for op in find_downsamplers(swapped, image())]
    assert kinds == [KIND[method]] * 2


class SlottedWSNet(WSNet):
    """The registered architectures' convention: BlurPool goes into the slot after the activation."""

    def __init__(self) -> None:
        super().__init__()
        self.down_antialias = AntialiasSlot("down")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stem(x)
        out = self.down_antialias(F.relu(self.down(out))) + self.skip(out)
        return self.head(out.mean(dim=(-2, -1)))


def test_custom_forward_conv_with_a_slot_gets_stride_one_and_blurpool_in_the_slot() -> None:
    torch.manual_seed(3)
    model = SlottedWSNet()
    swapped = antialias(model, "blurpool", example_input=image())
    assert type(swapped.down) is WSConv2d and swapped.down.stride == (1, 1)
    assert isinstance(swapped.down_antialias, BlurPool)
    x = image()
    with torch.no_grad():
        stem = model.stem(x)
        down = F.conv2d(stem, standardised(model.down.weight), model.down.bias, 1, 1)
        out = BlurPool(3, (2, 2))(F.relu(down)) + reference_conv(model.skip, "blurpool", stem)
        torch.testing.assert_close(swapped(x), model.head(out.mean(dim=(-2, -1))), rtol=1e-6, atol=1e-6)


class HardStrideConv(nn.Conv2d):
    """A conv whose forward ignores self.stride: its stride is written into the call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, 2, self.padding)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("stride", "reason"),
    [
        (
            2,
            r"does not use self\.stride: at stride 1 its output keeps the shape \(2, 16, 16, 16\)",
        ),
        (1, r"its forward down-samples by 2x2, not by its stride \(1, 1\)"),
    ],
)
def test_custom_forward_conv_that_ignores_its_stride_is_left_with_a_reason(
    method: str, stride: int, reason: str
) -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), HardStrideConv(8, 16, 3, stride, 1))
    with pytest.warns(AntialiasWarning, match=r"1 down-sampling op\(s\)") as caught:
        swapped = antialias(model, method, example_input=image())
    message = str(caught[0].message)
    assert "1:conv2d (conv2d): " in message
    assert re.search(reason, message), message
    conv = swapped.get_submodule("1")
    assert type(conv) is HardStrideConv and conv.stride == (stride, stride)
    torch.testing.assert_close(swapped(image()), model(image()), rtol=0, atol=0)
