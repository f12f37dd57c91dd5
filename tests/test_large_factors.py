"""Down-sampling factors up to spectral.MAX_FACTOR = 32 (a ViT's 16x16 patch convolution, a 4x4 or 32x32
patch embedding): per-map AM against an independent float64 numpy.fft reference of DESIGN.md's
definition, the known answers, and a ViT-style patch embedding found, measured and left unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnn_aliasing import find_downsamplers, measure, spectral
from cnn_aliasing.errors import CnnAliasingError

# ---- the reference: DESIGN.md's Y and Z, with numpy.fft and explicit loops over the small grid ----------


def kept_index(k: int, small: int, big: int, factor: int, nyquist: str) -> int | None:
    """The bin of X (one axis) that Z keeps for small bin k: among the replicas k + a * small, the one
    whose signed frequency lies below the new Nyquist frequency small / 2; at the Nyquist bin itself
    nothing (``zero``) or the replica of frequency -small / 2 (``keep_negative``)."""
    if factor == 1:
        return k
    for a in range(factor):
        index = k + a * small
        signed = index if 2 * index < big else index - big
        if 2 * abs(signed) < small:
            return index
        if nyquist == "keep_negative" and 2 * signed == -small:
            return index
    return None


def am_reference(x0: np.ndarray, s: int, t: int, nyquist: str = "zero") -> np.ndarray:
    """Per-map sum |Y - Z| of full-resolution maps (..., H, W), zero-padded at the end to multiples."""
    h0, w0 = x0.shape[-2:]
    h, w = -(-h0 // s) * s, -(-w0 // t) * t
    x = np.zeros((*x0.shape[:-2], h, w))
    x[..., :h0, :w0] = x0
    big = np.fft.fft2(x) / (h * w)  # X
    n, m = h // s, w // t
    y = np.fft.fft2(x[..., ::s, ::t]) / (n * m)  # Y, from the real output itself
    z = np.zeros_like(y)
    for k in range(n):
        for l in range(m):
            a, b = kept_index(k, n, h, s, nyquist), kept_index(l, m, w, t, nyquist)
            if a is not None and b is not None:
                z[..., k, l] = big[..., a, b]
    return np.abs(y - z).sum(axis=(-2, -1))


def test_reference_meets_the_known_answers():
    grid = np.arange(8.0)
    checkerboard = (-1.0) ** (grid[:, None] + grid[None, :])
    assert am_reference(checkerboard, 2, 2) == pytest.approx(1.0, abs=1e-12)
    assert am_reference(np.full((6, 6), 0.3), 2, 2) == pytest.approx(0.0, abs=1e-12)


@pytest.fixture(params=["dft", "fft"])
def backend(request, monkeypatch):
    """Run a test with the spectra computed by DFT matrix products, then by FFTs."""
    monkeypatch.setattr(spectral, "DFT_MAX_SIZE", 1 << 30 if request.param == "dft" else 0)
    return request.param


CASES = [
    # (H, W, s, t): small grids with and without a Nyquist bin, padded sizes, non-square factors
    (64, 64, 16, 16),
    (50, 70, 16, 16),
    (49, 49, 16, 16),
    (64, 64, 32, 32),
    (96, 32, 32, 32),
    (70, 40, 32, 8),
    (64, 16, 16, 4),
    (48, 20, 16, 4),
    (20, 64, 1, 16),
]


@pytest.mark.parametrize("nyquist", ["zero", "keep_negative"])
@pytest.mark.parametrize(("h", "w", "s", "t"), CASES)
def test_large_factor_aliasing_matches_the_reference(h, w, s, t, nyquist, backend):
    gen = torch.Generator().manual_seed(h * 1000 + w * 10 + s + t)
    x = torch.randn(2, 3, h, w, generator=gen, dtype=torch.float64)
    got = spectral.aliasing_per_map(x, (s, t), nyquist=nyquist)
    assert got.shape == (2, 3) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), am_reference(x.numpy(), s, t, nyquist), rtol=1e-10)


def test_float32_maps_at_factor_32_agree_with_the_float64_reference():
    x = torch.randn(4, 256, 256, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = spectral.aliasing_per_map(x.float(), 32)
    np.testing.assert_allclose(got.numpy(), am_reference(x.numpy(), 32, 32), rtol=1e-5)


def test_factors_up_to_32_are_accepted_and_above_refused():
    assert spectral.MAX_FACTOR == 32
    assert spectral.as_factor(32) == (32, 32) and spectral.as_factor((16, 4)) == (16, 4)
    for factor in (33, (32, 33), (64, 1)):
        with pytest.raises(CnnAliasingError, match=r"1\.\.32"):
            spectral.aliasing_per_map(torch.zeros(64, 64), factor)


# ---- known answers ---------------------------------------------------------------------------------------


def band_limited(h: int, w: int, s: int, t: int, seed: int = 0) -> np.ndarray:
    """A real map whose spectrum lies strictly below the new Nyquist frequency (h/(2s), w/(2t))."""
    rng = np.random.default_rng(seed)
    m, n = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    x = np.zeros((h, w))
    for fk in range(-((h // s - 1) // 2), (h // s - 1) // 2 + 1):
        for fl in range(-((w // t - 1) // 2), (w // t - 1) // 2 + 1):
            x += rng.normal() * np.cos(2 * np.pi * (fk * m / h + fl * n / w) + rng.uniform(0, 2 * np.pi))
    return x


@pytest.mark.parametrize(("h", "w", "s", "t"), [(128, 128, 16, 16), (160, 96, 32, 32), (96, 64, 16, 4)])
def test_band_limited_map_has_no_aliasing(h, w, s, t, backend):
    x = torch.from_numpy(band_limited(h, w, s, t))
    assert x.abs().max() > 1
    for nyquist in ("zero", "keep_negative"):
        assert spectral.aliasing_per_map(x, (s, t), nyquist=nyquist).item() == pytest.approx(0, abs=1e-12)


@pytest.mark.parametrize(("size", "factor"), [(8, (2, 2)), (64, (16, 16)), (64, (16, 4)), (64, (32, 32))])
def test_unit_checkerboard_aliases_wholly_onto_dc(size, factor, backend):
    """(-1)^(m+n) is the single bin X[H/2, W/2] = 1, far above any new Nyquist frequency; at an even factor
    every sample of y is 1, so Y is 1 at DC and Z is zero: a = 1."""
    grid = torch.arange(size, dtype=torch.float64)
    board = (-1.0) ** (grid[:, None] + grid[None, :])
    assert spectral.aliasing_per_map(board, factor).item() == pytest.approx(1.0, abs=1e-12)
    assert spectral.aliasing_per_map(2.5 * board, factor).item() == pytest.approx(2.5, abs=1e-12)


@pytest.mark.parametrize(("h", "s"), [(64, 16), (96, 16), (128, 32)])
def test_cosine_above_the_new_nyquist_aliases_with_its_amplitude(h, s, backend):
    """c cos(2 pi (n + 1) m / H + phase), n = H / s the small size, samples at m = s m' to
    c cos(2 pi m' / n + phase): two small bins +-1 of modulus c / 2 in Y that Z lacks (X's bins +-(n + 1)
    lie above n / 2), so a = c. A band-limited part adds the same to Y and Z and changes nothing."""
    n, c = h // s, 0.7
    m = np.arange(h)[:, None] + np.zeros((1, 48))
    x = c * np.cos(2 * np.pi * (n + 1) * m / h + 0.3) + band_limited(h, 48, s, 4, seed=1)
    got = spectral.aliasing_per_map(torch.from_numpy(x), (s, 4)).item()
    assert got == pytest.approx(c, abs=1e-12)


# ---- a ViT-style patch embedding ----------------------------------------------------------------------


class PatchEmbedNet(nn.Module):
    """A ViT stand-in: a 16x16 stride-16 patch convolution, tokens, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, 8, 16, 16)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.proj(x).flatten(2).transpose(1, 2)  # (B, 16 tokens, 8)
        return self.head(tokens.mean(dim=1))


def test_vit_patch_embedding_is_found_and_measured_exactly() -> None:
    torch.manual_seed(0)
    net = PatchEmbedNet().double().eval()
    images = torch.rand(3, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    found = find_downsamplers(net, images)
    assert [(d.name, d.kind, d.factor) for d in found] == [("proj", "conv2d", (16, 16))]
    with torch.no_grad():
        expected = net(images)
    outputs: list[torch.Tensor] = []
    handle = net.register_forward_hook(lambda m, args, out: outputs.append(out))
    try:
        report = measure(net, list(images.split(2)), progress=False)
    finally:
        handle.remove()
    torch.testing.assert_close(torch.cat(outputs), expected, rtol=1e-12, atol=1e-12)
    full = F.conv2d(images, net.proj.weight, net.proj.bias)  # stride 1: 49 x 49, padded to 64 x 64
    per_map = am_reference(full.detach().numpy(), 16, 16)
    (op,) = report.ops
    assert per_map.size == 24  # 3 images x 8 channels
    assert (op.name, op.factor, op.count) == ("proj", (16, 16), 24)
    assert op.aliasing == pytest.approx(per_map.mean(), rel=1e-9)
    assert op.std == pytest.approx(per_map.std(ddof=1), rel=1e-7)
