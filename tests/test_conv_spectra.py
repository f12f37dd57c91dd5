"""A strided convolution measured from its input's spectra (cnn_aliasing.conv_spectra) against a float64
reference of DESIGN.md's definition: the stride-1 output formed, zero-padded to the multiple, its DFT, and
Y and Z folded bin by bin in plain loops."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnn_aliasing import conv_spectra, measure
from cnn_aliasing.conv_spectra import ConvCall, ConvGeometry, ConvSpectra, spectral_route_pays
from cnn_aliasing.downsamplers import FunctionalKind, _max_pool_stride_one
from cnn_aliasing.spectral import Nyquist


def reference_metrics(full: torch.Tensor, factor: tuple[int, int], nyquist: str) -> dict[str, np.ndarray]:
    """AM's per-map term sum|Y - Z| and sum|Y - Z| / sum|Y| of every map of a full-resolution output."""
    s, t = factor
    x = full.detach().double().numpy()
    h, w = x.shape[-2:]
    hm, wm = h + (-h % s), w + (-w % t)
    padded = np.zeros((*x.shape[:-2], hm, wm))
    padded[..., :h, :w] = x
    spectrum = np.fft.fft2(padded) / (hm * wm)
    n, m = hm // s, wm // t

    def kept(k: int, big: int, small: int, f: int) -> int | None:
        half = (small + 1) // 2
        if f > 1 and small % 2 == 0 and k == half:  # the new Nyquist bin
            return None if nyquist == "zero" else big - small + k
        return k if k < half else big - small + k

    aliasing = np.zeros(x.shape[:-2])
    magnitude = np.zeros(x.shape[:-2])
    for k in range(n):
        for l in range(m):
            y = sum(spectrum[..., k + a * n, l + b * m] for a in range(s) for b in range(t))
            row, col = kept(k, hm, n, s), kept(l, wm, m, t)
            z = 0 if row is None or col is None else spectrum[..., row, col]
            aliasing += np.abs(y - z)
            magnitude += np.abs(y)
    return {"aliasing": aliasing, "relative_aliasing": np.where(magnitude > 0, aliasing / magnitude, 0.0)}


Pair = int | tuple[int, int]


def as_pair(v: Pair) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else v


# in, out, size (H, W), kernel, stride, padding, dilation, groups, bias
CASES: dict[str, tuple[int, int, tuple[int, int], int, Pair, Pair, int, int, bool]] = {
    "stem 7x7": (3, 5, (32, 32), 7, 2, 3, 1, 1, True),
    "3x3 odd size": (3, 5, (17, 15), 3, 2, 1, 1, 1, True),
    "3x3 wide (matrix mix)": (20, 6, (16, 16), 3, 2, 1, 1, 1, True),
    "1x1": (10, 4, (12, 12), 1, 2, 0, 1, 1, True),
    "1x1 grouped, odd height": (4, 6, (15, 16), 1, 2, 0, 1, 2, True),
    "patchify 4x4/4": (3, 4, (32, 32), 4, 4, 0, 1, 1, True),
    "patch 16x16/16 (ViT)": (3, 4, (48, 48), 16, 16, 0, 1, 1, True),
    "2x2/2 no padding": (4, 4, (16, 16), 2, 2, 0, 1, 1, False),
    "depthwise 3x3": (6, 6, (16, 16), 3, 2, 1, 1, 6, True),
    "grouped 5x5": (6, 12, (16, 16), 5, 2, 2, 1, 3, True),
    "grouped wide": (40, 16, (16, 16), 3, 2, 1, 1, 2, False),
    "grouped 8 per group (multiply-add)": (16, 16, (16, 16), 3, 2, 1, 1, 2, False),
    "dilated": (4, 4, (20, 20), 3, 2, 2, 2, 1, True),
    "factor 3, valid": (4, 4, (13, 13), 3, 3, 0, 1, 1, True),
    "factor (2, 3)": (2, 3, (9, 12), 3, (2, 3), (1, 0), 1, 1, True),
}


def make_case(name: str, seed: int = 0):
    c_in, c_out, (h, w), k, stride, padding, dilation, groups, bias = CASES[name]
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, c_in, h, w, generator=gen, dtype=torch.float64)
    weight = torch.randn(c_out, c_in // groups, k, k, generator=gen, dtype=torch.float64)
    b = torch.randn(c_out, generator=gen, dtype=torch.float64) if bias else None
    geometry = ConvGeometry((h, w), (k, k), as_pair(padding), (dilation, dilation), as_pair(stride))
    return x, weight, b, geometry, groups


def formed(x, weight, bias, geometry, groups, stride: int | tuple[int, int] = 1) -> torch.Tensor:
    return F.conv2d(x, weight, bias, stride, geometry.padding, geometry.dilation, groups)


@pytest.mark.parametrize("nyquist", ["zero", "keep_negative"])
@pytest.mark.parametrize("name", list(CASES))
def test_metrics_from_input_spectra_equal_the_formed_full_output(name: str, nyquist: str) -> None:
    x, weight, bias, geometry, groups = make_case(name)
    full = formed(x, weight, bias, geometry, groups)
    assert geometry.full_size == tuple(full.shape[-2:])
    real = formed(x, weight, bias, geometry, groups, geometry.factor)
    plan = ConvSpectra(weight, bias, geometry, groups, Nyquist(nyquist))
    got = plan.per_map_metrics(
        ConvCall(x, weight, bias, geometry, groups), real, ["aliasing", "relative_aliasing"]
    )
    want = reference_metrics(full, geometry.factor, nyquist)
    for metric in ("aliasing", "relative_aliasing"):
        assert got[metric].shape == (2, weight.shape[0])
        np.testing.assert_allclose(got[metric].numpy(), want[metric], rtol=1e-10, atol=1e-12)


def test_pad_or_crop_equals_torch_pad() -> None:
    """Every mix of added and cropped rows and columns, each output built in memory just freed from a
    tensor of NaN (so a zero that was not written shows)."""
    x = torch.randn(2, 3, 7, 9)
    for pads in itertools.product([-2, 0, 1, 3], [-1, 0, 2], [-3, 0, 2], [0, -1, 4]):
        garbage = torch.full((2, 3, 7 + 8, 9 + 8), math.nan)
        del garbage
        torch.testing.assert_close(conv_spectra._pad_or_crop(x, pads), F.pad(x, pads), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["stem 7x7", "3x3 wide (matrix mix)", "grouped wide", "factor (2, 3)"])
def test_one_image_per_chunk_gives_the_same_values(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Images transformed one at a time (each written into its own rows of the spectra; the matrix mixes
    then measure all four together) and measured one at a time."""
    monkeypatch.setattr(conv_spectra, "CHUNK_ELEMENTS", 1)
    x, weight, bias, geometry, groups = make_case(name, seed=2)
    x = torch.cat([x, 2 * x.flip(0)])  # 4 images, each different
    plan = ConvSpectra(weight, bias, geometry, groups, Nyquist.ZERO)
    real = formed(x, weight, bias, geometry, groups, geometry.factor)
    got = plan.per_map_metrics(ConvCall(x, weight, bias, geometry, groups), real, ["aliasing"])["aliasing"]
    want = reference_metrics(formed(x, weight, bias, geometry, groups), geometry.factor, "zero")["aliasing"]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10)


@pytest.mark.parametrize("name", ["stem 7x7", "3x3 wide (matrix mix)", "depthwise 3x3", "grouped 5x5", "1x1"])
def test_selected_output_channels_equal_their_columns(name: str) -> None:
    x, weight, bias, geometry, groups = make_case(name, seed=1)
    index = torch.tensor([0, 2, weight.shape[0] - 1])
    plan = ConvSpectra(weight, bias, geometry, groups, Nyquist.ZERO).select(index)
    assert plan is not None
    real = formed(x, weight, bias, geometry, groups, geometry.factor).index_select(1, index)
    got = plan.per_map_metrics(ConvCall(x, weight, bias, geometry, groups), real, ["aliasing"])["aliasing"]
    want = reference_metrics(formed(x, weight, bias, geometry, groups), geometry.factor, "zero")["aliasing"]
    np.testing.assert_allclose(got.numpy(), want[:, index.numpy()], rtol=1e-10)


def test_grouped_convolution_mixed_by_matrices_cannot_be_restricted() -> None:
    _, weight, bias, geometry, groups = make_case("grouped wide")
    assert ConvSpectra(weight, bias, geometry, groups, Nyquist.ZERO).select(torch.tensor([0, 1])) is None


def test_known_answers_checkerboard_and_constant() -> None:
    """A 1x1 convolution scaling a (-1)^(m+n) checkerboard by w aliases |w| onto DC; a constant gives 0."""
    m = torch.arange(8, dtype=torch.float64)
    board = ((-1.0) ** (m[:, None] + m[None, :]))[None, None]
    geometry = ConvGeometry((8, 8), (1, 1), (0, 0), (1, 1), (2, 2))
    for images, expected in ((board, 2.5), (torch.full_like(board, 3.0), 0.0)):
        weight = torch.tensor([[[[-2.5]]]], dtype=torch.float64)
        real = F.conv2d(images, weight, None, 2)
        plan = ConvSpectra(weight, None, geometry, 1, Nyquist.ZERO)
        got = plan.per_map_metrics(ConvCall(images, weight, None, geometry, 1), real, ["aliasing"])
        assert got["aliasing"].item() == pytest.approx(expected, abs=1e-12)


def test_a_plan_fits_only_its_unchanged_weights() -> None:
    x, weight, bias, geometry, groups = make_case("stem 7x7")
    plan = ConvSpectra(weight, bias, geometry, groups, Nyquist.ZERO)
    call = ConvCall(x, weight, bias, geometry, groups)
    assert plan.fits(call)
    assert not plan.fits(ConvCall(x, weight.clone(), bias, geometry, groups))
    assert not plan.fits(ConvCall(x, weight, bias, ConvGeometry((16, 16), (7, 7), (3, 3), (1, 1), (2, 2)), 1))
    with torch.no_grad():
        weight.mul_(2)  # changed in place: its version moves on
    assert not plan.fits(call)


class Net(nn.Module):
    """A stem that the spectral route measures, a depthwise conv and a 1x1 shortcut."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 7, stride=2, padding=3)
        self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)
        self.short = nn.Conv2d(8, 16, 1, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.short(self.dw(self.stem(x))).mean((2, 3))


def test_measure_takes_the_spectral_route_with_the_same_values_and_outputs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """measure() of convs on the spectral route: AM equals the reference on the formed stride-1 outputs,
    over two batches (the plan kept across them); the stride-1 output is never formed; the model's output
    is unchanged."""
    torch.manual_seed(0)
    net = Net().double().eval()
    batches = [torch.rand(3, 3, 64, 64, dtype=torch.float64) for _ in range(2)]
    monkeypatch.setattr(conv_spectra, "ROUTE_MARGIN", 1e9)  # every conv on the spectral route

    def refuse(self: FunctionalKind, params: dict) -> None:
        raise AssertionError(f"{self.name}: the stride-1 output was formed")

    monkeypatch.setattr(FunctionalKind, "full_resolution", refuse)
    outputs = []
    hook = net.register_forward_hook(lambda m, i, o: outputs.append(o))
    report = measure(net, batches, progress=False)
    hook.remove()
    with torch.no_grad():
        assert all(torch.equal(o, net(b)) for o, b in zip(outputs, batches, strict=True))
        images = torch.cat(batches)
        maps = {"stem": images}
        maps["dw"] = net.stem(images)
        maps["short"] = net.dw(maps["dw"])
    for op in report.ops:
        conv = getattr(net, op.name)
        full = F.conv2d(maps[op.name], conv.weight, conv.bias, 1, conv.padding, conv.dilation, conv.groups)
        want = reference_metrics(full, op.factor, "zero")["aliasing"]
        assert op.aliasing == pytest.approx(want.mean(), rel=1e-10), op.name
        assert op.count == want.size


def test_the_cost_estimate_picks_the_cheaper_route() -> None:
    """From the measured costs: a ResNet stem and a ConvNeXt patchify stem from their 3 input channels, a
    1x1 shortcut on 112 x 112 maps when all its channels are measured (not when 3 of 24 are), a depthwise
    5x5 on a 14x14 map (its bands are half the map) from its stride-1 output."""

    def call(c_in: int, c_out: int, size: int, k: int, stride: int, padding: int, groups: int) -> ConvCall:
        x = torch.empty(1, c_in, size, size)
        weight = torch.empty(c_out, c_in // groups, k, k)
        geometry = ConvGeometry((size, size), (k, k), (padding, padding), (1, 1), (stride, stride))
        return ConvCall(x, weight, None, geometry, groups)

    assert spectral_route_pays(call(3, 64, 224, 7, 2, 3, 1), 64)
    assert spectral_route_pays(call(3, 96, 224, 4, 4, 0, 1), 96)
    assert spectral_route_pays(call(256, 512, 56, 1, 2, 0, 1), 512)
    assert spectral_route_pays(call(32, 24, 112, 1, 2, 0, 1), 24)  # RegNetY's first 1x1 shortcut
    assert not spectral_route_pays(call(32, 24, 112, 1, 2, 0, 1), 3)  # sampled: its input's FFT dominates
    assert not spectral_route_pays(call(672, 672, 14, 5, 2, 2, 672), 672)


@pytest.mark.parametrize(
    ("kernel", "padding", "dilation"), [(3, 1, 1), (2, 0, 1), (3, 0, 2), (5, 2, 1), ((3, 2), (1, 0), (1, 2))]
)
def test_stride_one_max_pool_equals_torch(kernel, padding, dilation) -> None:
    x = torch.rand(2, 3, 11, 13, dtype=torch.float64)
    x[0, 1, 4, 5] = math.nan
    params = {
        "input": x,
        "kernel_size": kernel,
        "stride": 1,
        "padding": padding,
        "dilation": dilation,
        "ceil_mode": False,
        "return_indices": False,
    }
    want = F.max_pool2d(x, kernel, 1, padding, dilation)
    got = _max_pool_stride_one(params)
    assert got is not None
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    assert _max_pool_stride_one({**params, "return_indices": True}) is None
    assert _max_pool_stride_one({**params, "input": x.contiguous(memory_format=torch.channels_last)}) is None
