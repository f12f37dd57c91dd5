"""aliasing_per_map and its scale-free variants against a slow float64 reference written here."""

from __future__ import annotations

import cmath
import functools
import math

import numpy as np
import pytest
import torch

from cnn_aliasing import spectral
from cnn_aliasing.errors import CnnAliasingError


def reference_spectra(x: np.ndarray, s: int, t: int, nyquist: str):
    """Plain-loop float64 DFT of one map and its folded spectra (Y, Z) on the small grid."""
    h0, w0 = x.shape
    h, w = -(-h0 // s) * s, -(-w0 // t) * t
    padded = np.zeros((h, w))
    padded[:h0, :w0] = x
    big = np.zeros((h, w), dtype=complex)
    for k in range(h):
        for l in range(w):
            acc = 0j
            for m in range(h):
                for n in range(w):
                    acc += padded[m, n] * cmath.exp(-2j * math.pi * (k * m / h + l * n / w))
            big[k, l] = acc / (h * w)
    n_small, m_small = h // s, w // t

    def signed(freq: int, size: int) -> int:
        return freq if 2 * freq < size else freq - size

    y = np.zeros((n_small, m_small), dtype=complex)
    z = np.zeros((n_small, m_small), dtype=complex)
    for k in range(n_small):
        for l in range(m_small):
            for a in range(s):
                for b in range(t):
                    value = big[k + a * n_small, l + b * m_small]
                    y[k, l] += value
                    fk = signed(k + a * n_small, h)
                    fl = signed(l + b * m_small, w)
                    below_k = 2 * abs(fk) < n_small or s == 1
                    below_l = 2 * abs(fl) < m_small or t == 1
                    at_k = s > 1 and 2 * fk == -n_small  # negative Nyquist replica
                    at_l = t > 1 and 2 * fl == -m_small
                    if nyquist == "keep_negative":
                        keep = (below_k or at_k) and (below_l or at_l)
                    else:
                        keep = below_k and below_l
                    if keep:
                        z[k, l] += value
    return big, y, z


def reference_metrics(x: np.ndarray, s: int, t: int, nyquist: str) -> dict[str, float]:
    big, y, z = reference_spectra(x, s, t, nyquist)
    total = float(np.sum(np.abs(big) ** 2))
    kept = float(np.sum(np.abs(z) ** 2))
    return {
        "aliasing": float(np.sum(np.abs(y - z))),
        "relative_aliasing": float(np.sum(np.abs(y - z)) / np.sum(np.abs(y))),
        "alias_energy_fraction": (total - kept) / total,
    }


CASES = [
    # (H, W, s, t)
    (8, 8, 2, 2),
    (7, 9, 2, 2),
    (6, 10, 2, 2),
    (9, 9, 3, 3),
    (10, 7, 3, 3),
    (8, 12, 4, 4),
    (11, 5, 4, 4),
    (6, 8, 2, 1),
    (8, 6, 1, 3),
    (5, 12, 2, 3),
]


@pytest.fixture(params=["dft", "fft"])
def backend(request, monkeypatch):
    """Run a test with the spectra computed by DFT matrix products, then by FFTs."""
    monkeypatch.setattr(spectral, "DFT_MAX_SIZE", 1 << 30 if request.param == "dft" else 0)
    return request.param


@pytest.mark.parametrize("nyquist", ["zero", "keep_negative"])
@pytest.mark.parametrize(("h", "w", "s", "t"), CASES)
def test_per_map_metrics_match_loop_reference(h, w, s, t, nyquist, backend):
    x, expected = reference_case(h, w, s, t, nyquist)
    got = spectral.per_map_metrics(x, (s, t), tuple(spectral.PER_MAP_METRICS), nyquist=nyquist)
    for values in got.values():
        assert values.shape == (2, 3)
        assert values.dtype == torch.float64
    for (i, c), metrics in expected.items():
        for name, value in metrics.items():
            assert got[name][i, c].item() == pytest.approx(value, rel=1e-10), (name, i, c)


@functools.cache
def reference_case(h: int, w: int, s: int, t: int, nyquist: str):
    """Random maps for one case and their reference metrics (computed once, shared by both backends)."""
    gen = torch.Generator().manual_seed(h * 100 + w * 10 + s + t)
    x = torch.randn(2, 3, h, w, generator=gen, dtype=torch.float64)
    expected = {(i, c): reference_metrics(x[i, c].numpy(), s, t, nyquist) for i in range(2) for c in range(3)}
    return x, expected


def test_conventions_differ_only_at_nyquist(backend):
    x = torch.randn(4, 8, 8, dtype=torch.float64)
    zero = spectral.aliasing_per_map(x, 2, nyquist="zero")
    keep = spectral.aliasing_per_map(x, 2, nyquist="keep_negative")
    assert not torch.allclose(zero, keep)
    # odd small size: no Nyquist bin, so both conventions agree
    x_odd = torch.randn(4, 10, 10, dtype=torch.float64)
    torch.testing.assert_close(
        spectral.aliasing_per_map(x_odd, 2, nyquist="zero"),
        spectral.aliasing_per_map(x_odd, 2, nyquist="keep_negative"),
    )


def band_limited(h: int, w: int, s: int, t: int, seed: int = 0) -> torch.Tensor:
    """A real map whose spectrum lies strictly below the new Nyquist frequency (h/(2s), w/(2t))."""
    rng = np.random.default_rng(seed)
    m, n = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    x = np.zeros((h, w))
    for fk in range(-((h // s - 1) // 2), (h // s - 1) // 2 + 1):
        for fl in range(-((w // t - 1) // 2), (w // t - 1) // 2 + 1):
            amp, phase = rng.normal(), rng.uniform(0, 2 * np.pi)
            x += amp * np.cos(2 * np.pi * (fk * m / h + fl * n / w) + phase)
    return torch.from_numpy(x)


@pytest.mark.parametrize(("h", "w", "s", "t"), [(16, 16, 2, 2), (12, 18, 3, 3), (16, 8, 4, 2)])
def test_band_limited_map_has_no_aliasing(h, w, s, t, backend):
    x = band_limited(h, w, s, t)
    assert x.abs().max() > 1
    for nyquist in ("zero", "keep_negative"):
        assert spectral.aliasing_per_map(x, (s, t), nyquist=nyquist).item() == pytest.approx(0, abs=1e-12)
        assert spectral.alias_energy_fraction_per_map(x, (s, t), nyquist=nyquist).item() == pytest.approx(
            0, abs=1e-12
        )


@pytest.mark.parametrize("size", [4, 8, 32])
def test_unit_checkerboard_aliases_wholly_onto_dc(size, backend):
    m, n = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    board = ((-1.0) ** (m + n)).double()
    assert spectral.aliasing_per_map(board, 2).item() == pytest.approx(1.0, abs=1e-12)
    assert spectral.relative_aliasing_per_map(board, 2).item() == pytest.approx(1.0, abs=1e-12)
    assert spectral.alias_energy_fraction_per_map(board, 2).item() == pytest.approx(1.0, abs=1e-12)
    scaled = spectral.aliasing_per_map(3.5 * board, 2).item()
    assert scaled == pytest.approx(3.5, abs=1e-12)


def test_float32_input_agrees_with_float64_and_returns_float64(backend):
    x = torch.randn(3, 5, 16, 16, dtype=torch.float64)
    a64 = spectral.aliasing_per_map(x, 2)
    a32 = spectral.aliasing_per_map(x.float(), 2)
    assert a32.dtype == torch.float64
    torch.testing.assert_close(a32, a64, rtol=1e-5, atol=1e-6)
    a16 = spectral.aliasing_per_map(x.to(torch.bfloat16), 2)
    torch.testing.assert_close(a16, a64, rtol=3e-2, atol=3e-2)


def test_float32_maps_too_large_to_square_still_give_finite_exact_sums(backend):
    """Values of 1e30 (their squares overflow float32): AM scales with the maps, as the float64 reference
    does, and is finite (the magnitudes fall back to hypot for those maps)."""
    x = torch.randn(2, 3, 24, 24, dtype=torch.float64)
    want = 1e30 * spectral.aliasing_per_map(x, 2)
    got = spectral.aliasing_per_map((1e30 * x).float(), 2)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0)
    relative = spectral.relative_aliasing_per_map((1e30 * x).float(), 2)
    torch.testing.assert_close(relative, spectral.relative_aliasing_per_map(x, 2), rtol=1e-5, atol=0)


def test_leading_dims_and_factor_forms(backend):
    x = torch.randn(2, 3, 4, 9, 9, dtype=torch.float64)
    out = spectral.aliasing_per_map(x, 3)
    assert out.shape == (2, 3, 4)
    torch.testing.assert_close(out, spectral.aliasing_per_map(x, (3, 3)))
    torch.testing.assert_close(out[1, 2], spectral.aliasing_per_map(x[1, 2], 3))
    # factor 1 on both axes: nothing is dropped, nothing aliases
    assert spectral.aliasing_per_map(x, 1).abs().max().item() == pytest.approx(0, abs=1e-12)


@pytest.mark.parametrize(
    ("x", "factor", "nyquist", "message"),
    [
        (torch.zeros(4, 4), 0, "zero", "factor"),
        (torch.zeros(4, 4), 33, "zero", "factor"),
        (torch.zeros(4, 4), (2, 2, 2), "zero", "factor"),
        (torch.zeros(4, 4), 2, "middle", "nyquist"),
        (torch.zeros(4), 2, "zero", "shape"),
        (torch.zeros(4, 4, dtype=torch.int64), 2, "zero", "dtype"),
        (torch.zeros(4, 0), 2, "zero", "shape"),
    ],
)
def test_bad_input_is_named(x, factor, nyquist, message):
    with pytest.raises(CnnAliasingError, match=message):
        spectral.aliasing_per_map(x, factor, nyquist=nyquist)


def test_unknown_metric_lists_valid_ones():
    with pytest.raises(CnnAliasingError, match="valid: aliasing"):
        spectral.per_map_metrics(torch.zeros(4, 4), 2, ("nope",))


@pytest.mark.parametrize("nyquist", ["zero", "keep_negative"])
@pytest.mark.parametrize(("h", "w", "s", "t"), [(8, 8, 2, 2), (9, 12, 3, 2), (16, 8, 4, 1)])
def test_full_spectra_for_figures_agree_with_the_metric(h, w, s, t, nyquist):
    """fold(spectrum(x)) gives the (Y, Z) that figures show: Y is the spectrum of the real output."""
    x = torch.randn(2, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    y, z = spectral.fold(spectral.spectrum(x), (s, t), spectral.Nyquist(nyquist))
    assert y.shape == z.shape == (2, h // s, w // t)
    torch.testing.assert_close(y, torch.fft.fft2(x[:, ::s, ::t], norm="forward"))
    torch.testing.assert_close(
        (y - z).abs().sum(dim=(-2, -1)), spectral.aliasing_per_map(x, (s, t), nyquist=nyquist)
    )
    for i in range(2):
        _, ref_y, ref_z = reference_spectra(x[i].numpy(), s, t, nyquist)
        np.testing.assert_allclose(z[i].numpy(), ref_z, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(y[i].numpy(), ref_y, rtol=1e-10, atol=1e-12)
