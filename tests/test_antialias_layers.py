"""FLC pooling, ASAP and BlurPool against slow float64 references written here (loop DFTs, loop
convolution), their sizes, gradients, dtypes, and how the engine measures them."""

from __future__ import annotations

import cmath
import itertools
import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from cnn_aliasing import measure
from cnn_aliasing.antialias import ASAPPool, BlurPool, FLCPool, asap_pool, blur_pool, flc_pool
from cnn_aliasing.errors import CnnAliasingError

SIZES = [(8, 8), (9, 9), (7, 10), (10, 5), (1, 4), (2, 3)]


# ---- references ----------------------------------------------------------------------------------------


def band(n: int) -> list[int]:
    """Signed frequencies of the centred low band of n bins: -floor(n/2) .. ceil(n/2) - 1."""
    return list(range(-(n // 2), n - n // 2))


def hamming(length: int, position: int) -> float:
    return 1.0 if length == 1 else 0.54 - 0.46 * math.cos(2 * math.pi * position / (length - 1))


def spectral_pool_reference(x2d: list[list[float]], n: int, m: int, window: bool) -> list[list[float]]:
    """Loop DFT of one map: X[k, l] = mean over pixels of x e^{-2 pi i (k a / H + l b / W)} for the signed
    frequencies of the low band, times sqrt(hamming_H(k + H//2) hamming_W(l + W//2)) if ``window``; the
    output y[p, q] = Re sum_{k, l} X[k, l] e^{2 pi i (k p / n + l q / m)}."""
    h, w = len(x2d), len(x2d[0])
    spec = {}
    for k in band(n):
        for l in band(m):
            total = sum(
                x2d[a][b] * cmath.exp(-2j * math.pi * (k * a / h + l * b / w))
                for a in range(h)
                for b in range(w)
            )
            weight = math.sqrt(hamming(h, k + h // 2) * hamming(w, l + w // 2)) if window else 1.0
            spec[k, l] = total / (h * w) * weight
    return [
        [
            sum(v * cmath.exp(2j * math.pi * (k * p / n + l * q / m)) for (k, l), v in spec.items()).real
            for q in range(m)
        ]
        for p in range(n)
    ]


def pascal_row(size: int) -> list[float]:
    """Binomial taps by Pascal's rule (not the closed formula), normalised to sum 1."""
    row = [1]
    for _ in range(size - 1):
        row = [a + b for a, b in zip([0, *row], [*row, 0], strict=True)]
    return [v / sum(row) for v in row]


def reflect(i: int, length: int) -> int:
    """Reflect an index into 0..length-1 (edge not repeated), bouncing as often as needed."""
    if length == 1:
        return 0
    while i < 0 or i >= length:
        i = -i if i < 0 else 2 * (length - 1) - i
    return i


def blur_reference(x2d: list[list[float]], size: int, stride: tuple[int, int]) -> list[list[float]]:
    """Loop convolution: out[p, q] = sum_{u, v} t[u] t[v] x[reflect(p s + u - (size-1)//2), reflect(...)]."""
    h, w = len(x2d), len(x2d[0])
    taps, before = pascal_row(size), (size - 1) // 2
    return [
        [
            sum(
                taps[u] * taps[v] * x2d[reflect(p + u - before, h)][reflect(q + v - before, w)]
                for u in range(size)
                for v in range(size)
            )
            for q in range(0, w, stride[1])
        ]
        for p in range(0, h, stride[0])
    ]


def maps(shape: tuple[int, ...], seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


# ---- values against the references ---------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_flc_matches_loop_dft(size: tuple[int, int]) -> None:
    x = maps((2, 3, *size))
    out = flc_pool(x)
    n, m = math.ceil(size[0] / 2), math.ceil(size[1] / 2)
    assert out.shape == (2, 3, n, m)
    for i in range(2):
        for c in range(3):
            ref = torch.tensor(
                spectral_pool_reference(x[i, c].tolist(), n, m, window=False), dtype=torch.float64
            )
            torch.testing.assert_close(out[i, c], ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("pad_to_odd", [False, True])
def test_asap_matches_loop_dft(size: tuple[int, int], pad_to_odd: bool) -> None:
    x = maps((1, 2, *size), seed=1)
    out = asap_pool(x, pad_to_odd=pad_to_odd)
    n, m = math.ceil(size[0] / 2), math.ceil(size[1] / 2)
    assert out.shape == (1, 2, n, m)
    for c in range(2):
        image = x[0, c]
        if pad_to_odd:  # zero row / column at the end of every even side
            image = torch.nn.functional.pad(image, (0, 1 - size[1] % 2, 0, 1 - size[0] % 2))
        ref = torch.tensor(spectral_pool_reference(image.tolist(), n, m, window=True), dtype=torch.float64)
        torch.testing.assert_close(out[0, c], ref, rtol=1e-10, atol=1e-12)


def test_asap_window_changes_the_output() -> None:
    x = maps((1, 1, 8, 8))
    assert (asap_pool(x) - flc_pool(x)).abs().max() > 1e-3


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("filter_size", range(1, 8))
def test_blurpool_matches_loop_convolution(size: tuple[int, int], filter_size: int) -> None:
    x = maps((1, 2, *size), seed=2)
    for stride in [(2, 2), (1, 3)]:
        out = blur_pool(x, filter_size, stride)
        assert out.shape == (1, 2, math.ceil(size[0] / stride[0]), math.ceil(size[1] / stride[1]))
        for c in range(2):
            ref = torch.tensor(blur_reference(x[0, c].tolist(), filter_size, stride), dtype=torch.float64)
            torch.testing.assert_close(out[0, c], ref, rtol=1e-12, atol=1e-12)


def test_blurpool_taps_are_binomial() -> None:
    from cnn_aliasing.antialias import binomial_taps

    assert binomial_taps(3) == [0.25, 0.5, 0.25]
    assert binomial_taps(5) == [v / 16 for v in (1, 4, 6, 4, 1)]
    with pytest.raises(CnnAliasingError, match=r"1\.\.7"):
        binomial_taps(8)


# ---- sizes, modules, protocol, gradients, dtypes -------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "expected"), [((32, 32), (16, 16)), ((33, 33), (17, 17)), ((31, 20), (16, 10)), ((5, 1), (3, 1))]
)
def test_output_sizes(size: tuple[int, int], expected: tuple[int, int]) -> None:
    x = maps((1, 2, *size))
    for layer in (FLCPool(), ASAPPool(), ASAPPool(pad_to_odd=True), BlurPool(5)):
        assert layer(x).shape == (1, 2, *expected), layer
    # sized like a strided window op: a 3x3 conv without padding on 33 gives 16
    assert FLCPool(kernel_size=3).output_size(maps((1, 1, 33, 33))) == (16, 16)


@pytest.mark.parametrize("factor", [2, (3, 2), (1, 2)])
@pytest.mark.parametrize("size", [(12, 12), (11, 7), (6, 9)])
def test_modules_match_functions_and_their_full_resolution_slice(factor, size) -> None:
    x = maps((2, 3, *size), seed=3)
    s, t = (factor, factor) if isinstance(factor, int) else factor
    layers: list[tuple[FLCPool | ASAPPool | BlurPool, Callable[[torch.Tensor], torch.Tensor]]] = [
        (FLCPool(factor), lambda v: flc_pool(v, factor)),
        (ASAPPool(factor), lambda v: asap_pool(v, factor)),
        (ASAPPool(factor, pad_to_odd=True), lambda v: asap_pool(v, factor, pad_to_odd=True)),
        (BlurPool(4, factor), lambda v: blur_pool(v, 4, factor)),
    ]
    for layer, function in layers:
        out = layer(x)
        torch.testing.assert_close(out, function(x), rtol=0, atol=0)
        full = layer.full_resolution_forward(x)
        torch.testing.assert_close(full[..., ::s, ::t], out, rtol=1e-12, atol=1e-12)
        assert layer.downsampling_factor == (s, t)


@pytest.mark.parametrize("size", [(6, 6), (5, 7)])
def test_gradcheck(size: tuple[int, int]) -> None:
    x = maps((1, 2, *size)).requires_grad_()
    assert torch.autograd.gradcheck(lambda v: flc_pool(v), (x,))
    assert torch.autograd.gradcheck(lambda v: asap_pool(v), (x,))
    assert torch.autograd.gradcheck(lambda v: asap_pool(v, pad_to_odd=True), (x,))
    assert torch.autograd.gradcheck(lambda v: blur_pool(v, 4), (x,))
    assert torch.autograd.gradcheck(lambda v: FLCPool().full_resolution_forward(v), (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dtypes_and_devices(device: torch.device, dtype: torch.dtype) -> None:
    x = maps((2, 3, 10, 9), dtype=torch.float32).to(device)
    for layer in (FLCPool(), ASAPPool(), BlurPool(3)):
        expected = layer(x)
        out = layer.to(device)(x.to(dtype))
        assert out.dtype == dtype and out.device.type == device.type
        tolerance = 1e-6 if dtype == torch.float32 else 3e-2
        torch.testing.assert_close(out.float(), expected, rtol=tolerance, atol=tolerance)


def test_window_follows_the_input_size() -> None:
    """No window cached at the first input size: a second size gives its own reference."""
    layer = ASAPPool()
    layer(maps((1, 1, 8, 8)))
    x = maps((1, 1, 6, 10), seed=4)
    ref = torch.tensor(spectral_pool_reference(x[0, 0].tolist(), 3, 5, window=True), dtype=torch.float64)
    torch.testing.assert_close(layer(x)[0, 0], ref, rtol=1e-10, atol=1e-12)


def test_bad_inputs_are_errors() -> None:
    with pytest.raises(CnnAliasingError, match="real floating-point"):
        flc_pool(torch.ones(1, 4, 4, dtype=torch.int64))
    with pytest.raises(CnnAliasingError, match="factor"):
        FLCPool(0)
    with pytest.raises(CnnAliasingError, match="filter_size"):
        BlurPool(0)


# ---- the engine measures them ---------------------------------------------------------------------------


def images(size: int, n: int = 4) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(5))


def am(model: nn.Module, x: torch.Tensor, nyquist: str = "zero") -> float:
    report = measure(model, [x], nyquist=nyquist, progress=False)
    assert len(report.ops) == 1, report.ops
    return report.ops[0].aliasing


@pytest.mark.parametrize("nyquist", ["zero", "keep_negative"])
def test_flc_am_at_rounding_level_where_no_nyquist_bin(nyquist: str) -> None:
    """Output size odd (30 -> 15): no Nyquist bin, FLC does not alias at all; a strided conv on the same
    input does."""
    x = images(30)
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
    flc = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), FLCPool())
    flc[0].load_state_dict(conv.state_dict())
    assert am(flc, x, nyquist) < 1e-6
    assert am(nn.Sequential(conv), x, nyquist) > 1e-2
    assert am(nn.Sequential(ASAPPool()), x, nyquist) < 1e-6


def nyquist_share(spec: torch.Tensor) -> torch.Tensor:
    """sum |.| over the Nyquist row and column (bin n/2, m/2 of even n, m) of spectra (..., n, m)."""
    n, m = spec.shape[-2:]
    row, col = spec[..., n // 2, :].abs().sum(-1), spec[..., :, m // 2].abs().sum(-1)
    return row + col - spec[..., n // 2, m // 2].abs()


def test_flc_am_is_the_nyquist_share_for_even_outputs() -> None:
    """Output 16 x 16: with nyquist='zero' AM is exactly the mean Nyquist row-and-column share of the
    output's spectrum. With 'keep_negative' it is half the share of the kept (negative) Nyquist bins of
    the input's spectrum: a real output cannot hold the negative Nyquist replica alone (its real part
    puts half of it back on the positive one), so FLC's AM is not zero there under either convention."""
    x = images(32).double()
    y = flc_pool(x)
    out_spec = torch.fft.fft2(y, norm="forward")
    assert am(nn.Sequential(FLCPool()), x, "zero") == pytest.approx(
        nyquist_share(out_spec).mean().item(), rel=1e-9
    )
    kept = torch.fft.fft2(x, norm="forward")[..., [*range(8), *range(24, 32)], :][
        ..., [*range(8), *range(24, 32)]
    ]
    expected = nyquist_share(kept).mean().item() / 2
    assert am(nn.Sequential(FLCPool()), x, "keep_negative") == pytest.approx(expected, rel=1e-9)


def test_blurpool_am_positive_and_falling_with_filter_size() -> None:
    x = images(32)
    values = [am(nn.Sequential(BlurPool(k)), x) for k in range(1, 8)]
    assert values[0] > 0 and values[-1] > 0
    assert all(a > b for a, b in itertools.pairwise(values)), values
    assert values[0] == pytest.approx(am(nn.Sequential(nn.AvgPool2d(1, stride=2)), x), rel=1e-6)
