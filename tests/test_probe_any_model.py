"""find_downsamplers and measure on torchvision- and timm-style model definitions written here (ResNet, a
hybrid ViT, depthwise and grouped convs, a functional conv, offset slices, global pooling), against a
float64 plain-sum DFT reference of the metric written here too."""

from __future__ import annotations

import copy
import operator
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnn_aliasing import downsamplers, find_downsamplers, measure
from cnn_aliasing.errors import ModelInputError
from cnn_aliasing.probe import UnmeasurableOpWarning

# ---- the reference: the metric by its definition (DESIGN.md), with explicit DFT sums ---------------------


def dft(x: np.ndarray) -> np.ndarray:
    """X[..., k, l] = sum over m, n of x[..., m, n] exp(-2 pi i (k m / H + l n / W)) / (H W)."""
    h, w = x.shape[-2:]
    m, n = np.arange(h)[:, None], np.arange(w)[None, :]
    out = np.zeros(x.shape, dtype=complex)
    for k in range(h):
        for l in range(w):
            out[..., k, l] = (x * np.exp(-2j * np.pi * (k * m / h + l * n / w))).sum(axis=(-2, -1))
    return out / (h * w)


def kept_bin(k: int, small: int, big: int, factor: int) -> int | None:
    """The bin of X that Z keeps for small bin k: the replica of signed frequency below the new Nyquist
    frequency; None at the Nyquist bin itself (zero convention)."""
    if factor == 1:
        return k
    signed = k if 2 * k < small else k - small
    return None if 2 * signed == -small else signed % big


def am_reference(full: torch.Tensor, s: int, t: int) -> np.ndarray:
    """Per-map aliasing sum |Y - Z| of a full-resolution output (..., H, W), zero-padded at the end."""
    x0 = full.detach().double().numpy()
    h0, w0 = x0.shape[-2:]
    h, w = -(-h0 // s) * s, -(-w0 // t) * t
    x = np.zeros((*x0.shape[:-2], h, w))
    x[..., :h0, :w0] = x0
    big = dft(x)
    small = dft(x[..., ::s, ::t])  # Y = FFT2(y) / (H W / (s t))
    n, m = h // s, w // t
    z = np.zeros_like(small)
    for k in range(n):
        for l in range(m):
            a, b = kept_bin(k, n, h, s), kept_bin(l, m, w, t)
            if a is not None and b is not None:
                z[..., k, l] = big[..., a, b]
    return np.abs(small - z).sum(axis=(-2, -1))


def test_reference_meets_the_known_answers():
    """The reference itself: a checkerboard of amplitude 1 gives 1 at factor 2, a constant gives 0."""
    grid = torch.arange(8.0)
    checkerboard = (-1.0) ** (grid[:, None] + grid[None, :])
    assert am_reference(checkerboard, 2, 2) == pytest.approx(1.0, abs=1e-12)
    assert am_reference(torch.full((6, 6), 0.3), 2, 2) == pytest.approx(0.0, abs=1e-12)


def strided_inputs(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The input of each named module in one plain (unprobed) forward pass."""
    seen: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    handles = [
        modules[n].register_forward_pre_hook(lambda m, args, n=n: seen.setdefault(n, args[0])) for n in names
    ]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return seen


def measured_output(model: nn.Module, batches: list[torch.Tensor], **options) -> tuple:
    """measure()'s report, and the model's outputs during it (seen by a forward hook)."""
    outputs: list[torch.Tensor] = []
    handle = model.register_forward_hook(lambda m, args, out: outputs.append(out))
    try:
        report = measure(model, batches, progress=False, **options)
    finally:
        handle.remove()
    return report, outputs


def unmeasurable_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, UnmeasurableOpWarning)]


# ---- torchvision-style ResNet ------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """torchvision's BasicBlock."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """torchvision's ResNet layout: 7x7 stride-2 stem, 3x3 stride-2 max-pool, stages strided 1, 2, 2, 2."""

    def __init__(self, width: int = 8, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.inplanes = width
        self.layer1 = self._make_layer(width, 1)
        self.layer2 = self._make_layer(width * 2, 2)
        self.after_layer2 = nn.Identity()  # a slot the failure test fills
        self.layer3 = self._make_layer(width * 4, 2)
        self.layer4 = self._make_layer(width * 8, 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * 8, num_classes)

    def _make_layer(self, planes: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )
        block = BasicBlock(self.inplanes, planes, stride, downsample)
        self.inplanes = planes
        return nn.Sequential(block, BasicBlock(planes, planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.after_layer2(self.layer2(self.layer1(x)))
        x = self.layer4(self.layer3(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


RESNET_OPS = [
    ("conv1", "conv2d", (2, 2)),
    ("maxpool", "max_pool2d", (2, 2)),
    ("layer2.0.conv1", "conv2d", (2, 2)),
    ("layer2.0.downsample.0", "conv2d", (2, 2)),
    ("layer3.0.conv1", "conv2d", (2, 2)),
    ("layer3.0.downsample.0", "conv2d", (2, 2)),
    ("layer4.0.conv1", "conv2d", (2, 2)),
    ("layer4.0.downsample.0", "conv2d", (2, 2)),
]


def make_resnet() -> ResNet:
    torch.manual_seed(0)
    net = ResNet().double()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):  # statistics other than the identity
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def test_resnet_ops_aliasing_and_outputs():
    net = make_resnet()
    images = torch.rand(2, 3, 24, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    found = find_downsamplers(net, images)
    assert [(d.name, d.kind, d.factor) for d in found] == RESNET_OPS
    with torch.no_grad():
        expected = net(images)
    report, outputs = measured_output(net, [images[:1], images[1:]])
    torch.testing.assert_close(torch.cat(outputs), expected, rtol=1e-12, atol=1e-12)
    inputs = strided_inputs(net, [name for name, _, _ in RESNET_OPS], images)
    modules = dict(net.named_modules())
    assert [op.name for op in report.ops] == [name for name, _, _ in RESNET_OPS]
    for op in report.ops:
        m, x = modules[op.name], inputs[op.name]
        if isinstance(m, nn.MaxPool2d):
            full = F.max_pool2d(x, m.kernel_size, 1, m.padding)
        else:
            full = F.conv2d(x, m.weight, m.bias, 1, m.padding, m.dilation, m.groups)
        per_map = am_reference(full, *op.factor)
        assert op.count == per_map.size
        assert op.aliasing == pytest.approx(per_map.mean(), rel=1e-9), op.name
        assert op.std == pytest.approx(per_map.std(ddof=1), rel=1e-7), op.name


# ---- timm-style hybrid ViT: conv stem, 16x16 patch embedding, a transformer block, sliced logits ---------


class PatchEmbed(nn.Module):
    def __init__(self, channels: int, dim: int, patch: int = 16):
        super().__init__()
        self.proj = nn.Conv2d(channels, dim, patch, patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, tokens, dim)


class TransformerBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class HybridViT(nn.Module):
    """A stride-2 conv stem (64 -> 32), a 16x16 stride-16 patch conv on its 32x32 maps, a class token and
    position embedding, one block, and a head whose logits are sliced (every other class)."""

    def __init__(self, dim: int = 16):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, 2, 1)
        self.patch_embed = PatchEmbed(4, dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, 5, dim) * 0.02)  # 4 patches + class token
        self.blocks = nn.Sequential(TransformerBlock(dim))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 20)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(F.relu(self.stem(x)))
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))[:, 0]
        logits = self.head(x)
        return logits[:, ::2]


def make_vit() -> HybridViT:
    torch.manual_seed(0)
    return HybridViT().double().eval()


def test_patch_conv_above_max_factor_is_skipped_with_one_warning_and_the_rest_measured():
    net = make_vit()  # its stride-16 patch conv is measured (test_large_factors.py); a stride-64 one is not
    net.patch_embed.proj = nn.Conv2d(4, 16, 16, 64, 24).double()  # still 4 patches of the 32x32 maps
    images = torch.rand(3, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = find_downsamplers(net, images)
    assert [(d.name, d.kind, d.factor) for d in found] == [("stem", "conv2d", (2, 2))]
    assert len(unmeasurable_warnings(caught)) == 1
    with torch.no_grad():
        expected = net(images)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report, outputs = measured_output(net, list(images.split(1)))  # three calls of the patch conv
    (message,) = unmeasurable_warnings(caught)  # one warning per op per call, not per forward
    assert message.startswith("op 'patch_embed.proj' (conv2d, factor 64x64) is not measured")
    assert "above spectral.MAX_FACTOR = 32" in message and "exclude=['patch_embed.proj']" in message
    assert [w for w in caught if "getitem" in str(w.message)] == []  # the logits slice is not an op
    assert [op.name for op in report.ops] == ["stem"]
    torch.testing.assert_close(torch.cat(outputs), expected, rtol=1e-12, atol=1e-12)
    full = F.conv2d(images, net.stem.weight, net.stem.bias, 1, 1)
    per_map = am_reference(full, 2, 2)
    assert report.ops[0].count == per_map.size == 12
    assert report.ops[0].aliasing == pytest.approx(per_map.mean(), rel=1e-9)


def test_excluded_op_is_never_touched(monkeypatch: pytest.MonkeyPatch):
    net = make_vit()
    images = torch.rand(2, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    built: list[tuple[str, tuple[int, int]]] = []
    original_init = downsamplers.StridedCall.__init__

    def recording_init(self, kind, factor, *args, **kwargs):
        built.append((kind, factor))
        original_init(self, kind, factor, *args, **kwargs)

    monkeypatch.setattr(downsamplers.StridedCall, "__init__", recording_init)
    own_forward_seen = []
    net.patch_embed.proj.register_forward_pre_hook(
        lambda m, args: own_forward_seen.append("forward" not in m.__dict__)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning at all, and no error
        report = measure(net, [images], exclude=["patch_embed.proj"], progress=False)
        found = find_downsamplers(net, images, exclude=["patch_embed.*"])
    assert [op.name for op in report.ops] == [d.name for d in found] == ["stem"]
    assert built == [("conv2d", (2, 2))] * 2  # only the stem, once per pass: the patch conv never
    assert own_forward_seen == [True, True]
    included = measure(net, [images], include=["patch_embed.*"], progress=False)  # factor 16: measured
    assert [op.name for op in included.ops] == ["patch_embed.proj"]

    torch.manual_seed(0)
    mixed = MixedNet().eval()
    built.clear()
    excluded = ["focus:*", "down:conv2d"]  # functional calls: left unwrapped in the traced graph
    found = find_downsamplers(mixed, torch.rand(1, 3, 32, 32), exclude=excluded)
    assert [d.name for d in found] == ["dw", "grouped"]
    assert [kind for kind, _ in built] == ["avg_pool2d", "conv2d", "conv2d"]  # global pooling, dw, grouped


def test_model_that_raises_for_some_input_is_restored_and_measurable_again():
    net = make_vit()
    with pytest.raises(ModelInputError, match=r"shape \(1, 3, 96, 96\)"):  # 9 patches: pos_embed has 5
        measure(net, [torch.rand(1, 3, 96, 96, dtype=torch.float64)], progress=False)
    assert all("forward" not in m.__dict__ for m in net.modules())
    assert not net.training
    report = measure(net, [torch.rand(1, 3, 64, 64, dtype=torch.float64)], progress=False)
    assert [op.name for op in report.ops] == ["stem", "patch_embed.proj"]


# ---- timm/MobileNet-style: Focus stem of offset slices, squeeze-excite, depthwise, grouped, functional ---


class Focus(nn.Module):
    """YOLOv5's space-to-depth stem: four offset strided slices, stacked as channels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1)


class SqueezeExcite(nn.Module):
    """Channel attention from global average pooling written as ``F.avg_pool2d(x, x.shape[-1])``."""

    def __init__(self, channels: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, 4, 1)
        self.expand = nn.Conv2d(4, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.avg_pool2d(x, x.shape[-1])
        return x * torch.sigmoid(self.expand(F.relu(self.reduce(s))))


class FunctionalDown(nn.Module):
    """A strided convolution called functionally in the forward."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(channels, channels, 3, 3) * 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, stride=2, padding=1)


class MixedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.focus = Focus()  # 32 -> 16, 12 channels
        self.se = SqueezeExcite(12)  # global pooling of 16x16 maps: factor 16, one pixel
        self.dw = nn.Conv2d(12, 12, 3, 2, 1, groups=12)  # depthwise, 16 -> 8
        self.pw = nn.Conv2d(12, 16, 1)
        self.grouped = nn.Conv2d(16, 16, 3, 2, 1, groups=4)  # 8 -> 4
        self.down = FunctionalDown(16)  # 4 -> 2
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.se(self.focus(x))
        x = self.grouped(F.relu(self.pw(self.dw(x))))
        x = self.down(F.relu(x))
        return self.head(x.mean(dim=(-2, -1)))


MIXED_OPS = [
    ("focus:getitem", "strided_slice", (2, 2)),
    ("focus:getitem_1", "strided_slice", (2, 2)),
    ("focus:getitem_2", "strided_slice", (2, 2)),
    ("focus:getitem_3", "strided_slice", (2, 2)),
    ("dw", "conv2d", (2, 2)),
    ("grouped", "conv2d", (2, 2)),
    ("down:conv2d", "conv2d", (2, 2)),
]


def test_depthwise_grouped_functional_offset_slices_and_global_pooling():
    torch.manual_seed(0)
    net = MixedNet().double().eval()
    images = torch.rand(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # global pooling (factor 16) is passed over silently
        found = find_downsamplers(net, images)
        report, outputs = measured_output(net, [images])
    assert [(d.name, d.kind, d.factor) for d in found] == MIXED_OPS
    assert [op.name for op in report.ops] == [name for name, _, _ in MIXED_OPS]
    with torch.no_grad():
        expected = net(images)
    torch.testing.assert_close(outputs[0], expected, rtol=1e-12, atol=1e-12)

    inputs = strided_inputs(net, ["focus", "dw", "grouped", "down"], images)
    x = inputs["focus"]
    fulls = {
        "focus:getitem": x,
        "focus:getitem_1": x[..., 1:, :],
        "focus:getitem_2": x[..., :, 1:],
        "focus:getitem_3": x[..., 1:, 1:],
        "dw": F.conv2d(inputs["dw"], net.dw.weight, net.dw.bias, 1, 1, 1, 12),
        "grouped": F.conv2d(inputs["grouped"], net.grouped.weight, net.grouped.bias, 1, 1, 1, 4),
        "down:conv2d": F.conv2d(inputs["down"], net.down.weight, None, 1, 1),
    }
    for op in report.ops:
        per_map = am_reference(fulls[op.name], *op.factor)
        assert op.full_size == tuple(fulls[op.name].shape[-2:])
        assert op.count == per_map.size
        assert op.aliasing == pytest.approx(per_map.mean(), rel=1e-9), op.name


class OffsetSlice(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., 1::2, 1::2] * 2


def test_offset_slice_of_one_map_against_plain_loops():
    """One image, one channel, 9 x 10: the full-resolution output x[1:, 1:] is 8 x 9, zero-padded to 8 x 10.
    X, Y and Z written out as plain loops over bins and samples."""
    image = torch.rand(1, 1, 9, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    report = measure(OffsetSlice(), [image], progress=False)
    (op,) = report.ops
    assert (op.name, op.kind, op.factor, op.full_size, op.count) == (
        "getitem",
        "strided_slice",
        (2, 2),
        (8, 9),
        1,
    )
    x = np.zeros((8, 10))
    for m in range(8):
        for n in range(9):
            x[m, n] = float(image[0, 0, 1 + m, 1 + n])

    def spectrum(a: np.ndarray) -> np.ndarray:
        h, w = a.shape
        out = np.zeros((h, w), dtype=complex)
        for k in range(h):
            for l in range(w):
                for m in range(h):
                    for n in range(w):
                        out[k, l] += a[m, n] * np.exp(-2j * np.pi * (k * m / h + l * n / w))
        return out / (h * w)

    big, small = spectrum(x), spectrum(x[::2, ::2])
    aliasing = 0.0
    for k in range(4):
        for l in range(5):
            a, b = kept_bin(k, 4, 8, 2), kept_bin(l, 5, 10, 2)
            z = big[a, b] if a is not None and b is not None else 0.0
            aliasing += abs(small[k, l] - z)
    assert op.aliasing == pytest.approx(aliasing, rel=1e-10)


class MaskedDown(nn.Module):
    """Down-samples a feature map and a boolean mask of it with strided slices."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep = (x > 0.5)[..., ::2, ::2]
        return x[..., ::2, ::2] * keep


def test_maps_that_are_not_floats_are_skipped_with_a_warning():
    x = torch.rand(2, 3, 8, 8)
    with pytest.warns(UnmeasurableOpWarning, match=r"'getitem' .*maps are torch\.bool") as caught:
        report = measure(MaskedDown(), [x], progress=False)
    assert len(unmeasurable_warnings(caught.list)) == 1
    assert [op.name for op in report.ops] == ["getitem_1"]


# ---- restoration after an exception inside the forward -------------------------------------------------


class FailsOnSecondCall(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 2:
            raise ValueError("second call fails")
        return x


def test_model_restored_after_exception_inside_forward():
    net = make_resnet()
    net.after_layer2 = FailsOnSecondCall()
    pristine = copy.deepcopy(net)
    net.train()
    net.layer3.eval()  # mixed modes come back as they were
    own_forward = net.conv1.forward
    net.conv1.forward = own_forward  # an instance-level forward (as a wrapper sets) on a probed op is kept
    pre = net.conv1.register_forward_pre_hook(lambda m, args: None)
    post = net.register_forward_hook(lambda m, args, out: None)
    hooks = {n: (dict(m._forward_pre_hooks), dict(m._forward_hooks)) for n, m in net.named_modules()}
    forwards = {n: m.__dict__.get("forward") for n, m in net.named_modules()}
    training = {n: m.training for n, m in net.named_modules()}
    params = {n: (p, p.detach().clone(), p.device) for n, p in net.named_parameters()}
    buffers = {n: b.clone() for n, b in net.named_buffers()}
    images = torch.rand(2, 3, 24, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(6))

    with pytest.raises(ValueError, match="second call fails"):
        measure(net, [images[:1], images[1:]], progress=False)

    assert {n: m.__dict__.get("forward") for n, m in net.named_modules()} == forwards
    assert net.conv1.__dict__["forward"] is own_forward
    assert {n: m.training for n, m in net.named_modules()} == training
    assert {n: (dict(m._forward_pre_hooks), dict(m._forward_hooks)) for n, m in net.named_modules()} == hooks
    assert pre.id in net.conv1._forward_pre_hooks and post.id in net._forward_hooks
    for n, p in net.named_parameters():
        obj, value, device = params[n]
        assert p is obj and p.device == device and torch.equal(p, value), n
    for n, b in net.named_buffers():
        assert torch.equal(b, buffers[n]), n

    again = measure(net, [images], progress=False)  # the third call passes
    pristine.after_layer2.calls = 2
    reference = measure(pristine, [images], progress=False)
    assert [op.name for op in again.ops] == [name for name, _, _ in RESNET_OPS]
    assert [op.aliasing for op in again.ops] == [op.aliasing for op in reference.ops]


# ---- what counts, and the sizes known without forming the full-resolution output ----------------------


@pytest.mark.parametrize(
    ("function", "args", "kwargs"),
    [
        (F.conv2d, (torch.rand(4, 2, 3, 3),), {"stride": 2, "padding": (2, 1), "dilation": (1, 3)}),
        (F.conv2d, (torch.rand(4, 1, 5, 2),), {"stride": (3, 2), "padding": "valid", "groups": 2}),
        (F.max_pool2d, (3,), {"stride": 2, "padding": 1, "dilation": 2}),
        (F.max_pool2d, ((2, 4),), {}),
        (F.avg_pool2d, (3, 2, 1), {"ceil_mode": True}),
        (F.lp_pool2d, (2.0, 3, 2), {}),
        (operator.getitem, ((Ellipsis, slice(1, -2, 2), slice(3, None, 3)),), {}),
        (operator.getitem, ((slice(None), slice(None, None, 2), slice(None, 5, 2)),), {}),
    ],
)
def test_full_size_known_without_forming_the_output(function, args, kwargs):
    x = torch.rand(2, 2, 13, 11)
    call = downsamplers.functional_strided_call(function, (x, *args), kwargs)
    assert call is not None
    size = call.full_size()
    assert call._full is None  # known from the arguments alone
    assert size == tuple(call.measured().shape[-2:])


class OtherRanks(nn.Module):
    """Strided ops on tensors that are not (N, C, H, W) feature maps, and a refused padding='same'."""

    def __init__(self, same: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, 2, 1)
        self.same = same

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unbatched = self.conv(x[0])  # (C, H, W)
        rows = F.max_pool1d(x.flatten(2), 2)  # (N, C, L)
        tokens = x.flatten(2)[..., ::2, ::2]  # (N, C, L)
        if self.same:
            x = F.conv2d(x, self.conv.weight, stride=2, padding="same")
        return unbatched.sum() + rows.sum() + tokens.sum() + x.sum()


def test_ops_on_other_ranks_are_not_ops_and_refused_calls_fail_as_unprobed():
    x = torch.rand(2, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert find_downsamplers(OtherRanks(), x) == []
    with pytest.raises(ModelInputError, match="padding='same' is not supported for strided convolutions"):
        measure(OtherRanks(same=True), [x], progress=False)
