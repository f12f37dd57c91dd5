"""Spectral aliasing of down-sampled feature maps: pure tensor math, no modules.

For a down-sampling op with factor (s, t) let x be its full-resolution output (the same op with stride 1),
shape (..., H, W), zero-padded at the end to multiples of (s, t). With X = FFT2(x) / (H W) the spectrum of
the real output y = x[..., ::s, ::t] (normalised by its own size) is the sum of the s*t replicas of X that
fold onto each bin of the small (H/s, W/t) grid. The alias-free spectrum Z keeps, for each small bin, only
the replica whose signed frequency lies below the new Nyquist frequency: one of the "four corners" of X.
Aliasing of one map is ``sum |Y - Z|`` over the small grid (the metric AM of Grabinski et al.).

Everything here is computed from one FFT of x; Y and Z are both foldings of X.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F

from cnn_aliasing.errors import CnnAliasingError
from cnn_aliasing.runtime import check_maps
from cnn_aliasing.validation import is_int_pair

MAX_FACTOR = 32
"""The largest factor measured on each axis: 32 covers patch embeddings (ViT 16x16, Swin/ConvNeXt 4x4, 32x32).
Nothing here grows with the factor: Y and Z are formed on the small grid straight from x (O(H W) per map,
never the s*t replicas as separate arrays)."""


class Nyquist(str, enum.Enum):
    """What the alias-free spectrum holds at the new Nyquist bin (only exists when the small size is even).

    ``ZERO``: nothing, as in the paper's eq. (5). ``KEEP_NEGATIVE``: the replica of negative frequency,
    which is what FLC pooling keeps.
    """

    ZERO = "zero"
    KEEP_NEGATIVE = "keep_negative"


def as_factor(factor: int | Sequence[int]) -> tuple[int, int]:
    """Normalise a down-sampling factor given as ``s`` or ``(s, t)`` and check it lies in 1..MAX_FACTOR."""
    return is_int_pair(1, MAX_FACTOR)(factor, "factor")


def as_nyquist(nyquist: str | Nyquist) -> Nyquist:
    """Parse a Nyquist convention name, naming the valid ones when it is unknown."""
    try:
        return Nyquist(nyquist)
    except ValueError:
        valid = ", ".join(repr(n.value) for n in Nyquist)
        raise CnnAliasingError(f"unknown nyquist convention {nyquist!r}; valid: {valid}") from None


def pad_to_multiple(x: torch.Tensor, factor: tuple[int, int]) -> torch.Tensor:
    """Zero-pad the last two axes of x at the end to the next multiples of (s, t)."""
    s, t = factor
    h, w = x.shape[-2:]
    ph, pw = -h % s, -w % t
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph))


def spectrum(x: torch.Tensor) -> torch.Tensor:
    """X = FFT2(x) / (H W) over the last two axes, computed in at least float32."""
    return torch.fft.fft2(_at_least_float32(x), norm="forward")


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _kept_bins(big: int, factor: int) -> tuple[int, int, bool]:
    """How the alias-free spectrum fills one axis of the small grid (n = ``big // factor`` bins).

    Small bins k < n0 keep replica 0 (X bin k); bins k >= n0 keep the last replica (X bin big - n + k),
    whose signed frequency k - n is negative. Returns (n, n0, has_nyquist): bin n0 = n/2 is the new
    Nyquist bin when n is even and the axis is down-sampled.
    """
    n = big // factor
    return n, (n + 1) // 2, factor > 1 and n % 2 == 0


def fold(
    spec: torch.Tensor, factor: tuple[int, int], nyquist: Nyquist = Nyquist.ZERO
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold a full spectrum X (..., H, W) onto the small grid: (Y, Z), the actual and alias-free spectra.

    H and W must be multiples of the factor. Y sums all s*t replicas; Z keeps the one below the new
    Nyquist frequency on each axis (at a Nyquist bin: zero, or the negative replica). This is the plain
    form, for figures and tests; :func:`per_map_metrics` computes the same sums without forming X.
    """
    s, t = factor
    h, w = spec.shape[-2:]
    y = spec.reshape(*spec.shape[:-2], s, h // s, t, w // t).sum(dim=(-4, -2))
    z = spec
    for axis, big, f in ((-2, h, s), (-1, w, t)):
        n, n0, has_nyquist = _kept_bins(big, f)
        z = torch.cat([z.narrow(axis, 0, n0), z.narrow(axis, big - n + n0, n - n0)], dim=axis)
        if has_nyquist and nyquist is Nyquist.ZERO:
            z = z.index_fill(axis, torch.tensor([n0], device=z.device), 0)
    return y, z


@dataclass
class SmallSpectra:
    """Y and Y - Z of each map (real and imaginary parts, shape (B, n, L)) and how to sum over the grid.

    With the zero Nyquist convention Y and Z of real maps are Hermitian, so only columns 0..m/2 are
    formed (L = m//2 + 1) and ``weights`` counts each twice except column 0 and the Nyquist column; with
    ``keep_negative`` all m columns are formed and ``weights`` is None.
    """

    y_re: torch.Tensor
    y_im: torch.Tensor
    alias_re: torch.Tensor  # Y - Z
    alias_im: torch.Tensor
    weights: torch.Tensor | None
    x: torch.Tensor | None  # the maps themselves (None where they were never formed)

    def kept_energy(self) -> torch.Tensor:
        """sum |Z|^2 per map (Z = Y - (Y - Z))."""
        return self.bin_sum((self.y_re - self.alias_re).square() + (self.y_im - self.alias_im).square())

    def energy(self) -> torch.Tensor:
        """sum |X|^2 per map, by Parseval: sum x^2 / (H W)."""
        if self.x is None:
            raise CnnAliasingError("the energy of X needs the full-resolution maps, which were not formed")
        h, w = self.x.shape[-2:]
        return self.x.square().sum(dim=(-2, -1), dtype=torch.float64) / (h * w)

    def bin_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum of real per-bin values over the whole small grid, per map, in float64: each column's rows
        first in the values' own precision (a pairwise float32 sum of a few hundred values is as exact as
        the float32 FFTs that gave them, and 10x faster on the CPU than converting every value), then the
        columns in float64."""
        if self.weights is None:
            return values.sum(dim=-2).sum(dim=-1, dtype=torch.float64)
        return values.sum(dim=-2).to(torch.float64) @ self.weights

    def magnitude_sum(self, re: torch.Tensor, im: torch.Tensor) -> torch.Tensor:
        """sum over the grid of |re + i im| per map, in float64. On the CPU as sqrt(re^2 + im^2) (torch's
        CPU hypot is 3x slower), redone with hypot for maps whose squares overflowed (|values| > 1e19 in
        float32)."""
        if re.device.type != "cpu":
            return self.bin_sum(torch.hypot(re, im))
        sums = self.bin_sum(torch.addcmul(re * re, im, im).sqrt_())
        overflowed = ~torch.isfinite(sums)
        if bool(overflowed.any()):
            sums[overflowed] = self.bin_sum(torch.hypot(re[overflowed], im[overflowed]))
        return sums


@dataclass(frozen=True)
class Grid:
    """Which frequencies of X the small spectra need, for maps (H, W), a factor and a convention."""

    h: int
    w: int
    factor: tuple[int, int]
    nyquist: Nyquist

    @property
    def half(self) -> bool:
        return self.nyquist is Nyquist.ZERO

    def rows(self) -> list[int | None]:
        """For each small row k, the row of X that Z keeps (None: zero at the Nyquist row)."""
        return self._kept(self.h, self.factor[0], range(self.h // self.factor[0]))

    def columns(self) -> list[int | None]:
        """For each small column formed (0..m/2 for the half grid, else 0..m-1), the column of X kept."""
        m = self.w // self.factor[1]
        return self._kept(self.w, self.factor[1], range(m // 2 + 1 if self.half else m))

    def _kept(self, big: int, factor: int, bins: range) -> list[int | None]:
        n, n0, has_nyquist = _kept_bins(big, factor)
        return [
            None if has_nyquist and k == n0 and self.half else (k if k < n0 else big - n + k) for k in bins
        ]

    def weights(self, device: torch.device) -> torch.Tensor | None:
        if not self.half:
            return None
        m = self.w // self.factor[1]
        weights = torch.full((m // 2 + 1,), 2.0, dtype=torch.float64, device=device)
        weights[0] = 1
        if m % 2 == 0:
            weights[-1] = 1
        return weights


def _small_spectra_fft(x: torch.Tensor, grid: Grid) -> SmallSpectra:
    """Y and Z by FFTs: Y from the rFFT of y = x[..., ::s, ::t]; Z by an rFFT of x along W, the kept
    columns only, an FFT along H of those, and the kept rows. For large maps."""
    s, t = grid.factor
    n, n0, _ = _kept_bins(grid.h, s)
    m, m0, _ = _kept_bins(grid.w, t)
    y = grid_spectrum(x[..., ::s, ::t], grid)
    rows = torch.fft.rfft(x, dim=-1, norm="forward")
    if grid.half:
        columns = rows[..., : m // 2 + 1]
    else:
        columns = torch.cat([rows[..., :m0], rows[..., 1 : m - m0 + 1].flip(-1).conj()], dim=-1)
    kept = torch.fft.fft(columns, dim=-2, norm="forward")
    z = torch.cat([kept[..., :n0, :], kept[..., grid.h - n + n0 :, :]], dim=-2)
    alias = y - z
    if grid.half:
        copy_nyquist(alias, y, grid)
    return SmallSpectra(y.real, y.imag, alias.real, alias.imag, grid.weights(x.device), x)


def grid_spectrum(y: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Y: the spectrum of real maps y on the small grid (..., n, m), normalised by n m, as the columns the
    grid forms (0..m/2 for the half grid, else all m)."""
    return torch.fft.rfft2(y, norm="forward") if grid.half else torch.fft.fft2(y, norm="forward")


def copy_nyquist(alias: torch.Tensor, y: torch.Tensor, grid: Grid) -> None:
    """Set Y - Z to Y on the new Nyquist row and column in place, where they exist: Z is zero there (the
    zero convention)."""
    _, n0, row_nyquist = _kept_bins(grid.h, grid.factor[0])
    _, m0, col_nyquist = _kept_bins(grid.w, grid.factor[1])
    if row_nyquist:
        alias[..., n0, :] = y[..., n0, :]
    if col_nyquist:
        alias[..., m0] = y[..., m0]


def _dft_matrix(
    samples: int, frequencies: Sequence[int | None], period: int, stride: int = 1
) -> torch.Tensor:
    """Real (samples*stride, 2F) matrix [cos | -sin] of the DFT at these frequencies, divided by ``period``.

    Row j*stride is sample j (other rows are zero); a None frequency gives zero columns.
    """
    j = torch.arange(samples, dtype=torch.float64)[:, None]
    f = torch.tensor([0 if k is None else k for k in frequencies], dtype=torch.float64)[None, :]
    angle = 2 * torch.pi * j * f / period
    block = torch.cat([torch.cos(angle), -torch.sin(angle)], dim=1) / period
    missing = [i + len(frequencies) * half for half in (0, 1) for i, k in enumerate(frequencies) if k is None]
    block[:, missing] = 0
    matrix = torch.zeros(samples * stride, 2 * len(frequencies), dtype=torch.float64)
    matrix[::stride] = block
    return matrix


@functools.lru_cache(maxsize=64)
def _dft_matrices(grid: Grid, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, ...]:
    """The four matrices of :func:`_small_spectra_dft` for this grid, cached per dtype and device."""
    s, t = grid.factor
    n, m = grid.h // s, grid.w // t
    columns = grid.columns()
    small_columns = list(range(len(columns)))
    z_cols = _dft_matrix(grid.w, columns, grid.w)  # (W, 2L)
    y_cols = _dft_matrix(m, small_columns, m, stride=t)  # (W, 2L): samples at columns ::t
    z_rows = _dft_matrix(grid.h, grid.rows(), grid.h)  # (H, 2n)
    y_rows = _dft_matrix(n, list(range(n)), n)  # (n, 2n)
    return tuple(a.to(dtype=dtype, device=device) for a in (z_cols, y_cols, z_rows, y_rows))


def _small_spectra_dft(x: torch.Tensor, grid: Grid) -> SmallSpectra:
    """Y and Z by DFT matrix products over only the frequencies needed. For small maps, where two flat
    matrix products beat FFTs: along W, x (B*H, W) times the kept columns (and, for Y, the rows ::s times
    the small-grid columns), then along H, the transposed result times the kept rows."""
    s, _ = grid.factor
    b, h, w = x.shape
    n = h // s
    z_cols, y_cols, z_rows, y_rows = _dft_matrices(grid, x.dtype, x.device)
    width = z_cols.shape[1]
    tz = (x.reshape(b * h, w) @ z_cols).view(b, h, width).transpose(1, 2).reshape(b * width, h)
    ty = (x[:, ::s].reshape(b * n, w) @ y_cols).view(b, n, width).transpose(1, 2).reshape(b * width, n)
    z = (tz @ z_rows).view(b, width, 2 * n)
    y = (ty @ y_rows).view(b, width, 2 * n)
    parts = []
    for a in (y, z):
        cols = width // 2  # a[:, c, r]: c = (re | im of the W transform), r = (re | im of the H transform)
        real = a[:, :cols, :n] - a[:, cols:, n:]
        imag = a[:, cols:, :n] + a[:, :cols, n:]
        parts += [real.transpose(1, 2), imag.transpose(1, 2)]
    y_re, y_im, z_re, z_im = parts
    return SmallSpectra(y_re, y_im, y_re - z_re, y_im - z_im, grid.weights(x.device), x)


DFT_MAX_SIZE = 32
"""Maps with H and W up to this size get their spectra by DFT matrix products (faster there on CPU and
GPU alike: two flat matrix products), larger ones by FFTs."""


def _small_spectra(x: torch.Tensor, grid: Grid) -> SmallSpectra:
    if max(grid.h, grid.w) <= DFT_MAX_SIZE:
        return _small_spectra_dft(x, grid)
    return _small_spectra_fft(x, grid)


def _aliasing(sp: SmallSpectra) -> torch.Tensor:
    return sp.magnitude_sum(sp.alias_re, sp.alias_im)


def _relative_aliasing(sp: SmallSpectra) -> torch.Tensor:
    return _ratio(_aliasing(sp), sp.magnitude_sum(sp.y_re, sp.y_im))


def _alias_energy_fraction(sp: SmallSpectra) -> torch.Tensor:
    kept = sp.kept_energy()
    energy = sp.energy()
    return _ratio((energy - kept).clamp(min=0), energy)


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den > 0, num / den.clamp(min=torch.finfo(den.dtype).tiny), torch.zeros_like(num))


PER_MAP_METRICS = {
    "aliasing": _aliasing,
    "relative_aliasing": _relative_aliasing,
    "alias_energy_fraction": _alias_energy_fraction,
}
"""Per-map metrics from Y and Z. ``aliasing`` is AM's per-map term sum|Y - Z|; the others are scale-free:
``relative_aliasing`` = sum|Y - Z| / sum|Y|, ``alias_energy_fraction`` = the share of the energy of X
outside the bins Z keeps (the energy that folding can alias)."""


def check_metric_names(names: Sequence[str]) -> tuple[str, ...]:
    """Validate metric names against :data:`PER_MAP_METRICS`, naming the valid ones on error."""
    unknown = [n for n in names if n not in PER_MAP_METRICS]
    if unknown:
        raise CnnAliasingError(
            f"unknown metric(s) {', '.join(map(repr, unknown))}; valid: {', '.join(PER_MAP_METRICS)}"
        )
    return tuple(names)


def per_map_metrics(
    x: torch.Tensor,
    factor: int | Sequence[int] = 2,
    metrics: Sequence[str] = ("aliasing",),
    *,
    nyquist: str | Nyquist = "zero",
) -> dict[str, torch.Tensor]:
    """Several per-map metrics of a full-resolution output x (..., H, W) from one FFT, each of shape (...)."""
    check_maps(x, "x")
    names = check_metric_names(metrics)
    f = as_factor(factor)
    convention = as_nyquist(nyquist)
    x = pad_to_multiple(_at_least_float32(x), f)
    lead, (h, w) = x.shape[:-2], x.shape[-2:]
    maps = x.reshape(-1, h, w)
    results: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    grid = Grid(h, w, f, convention)
    for chunk in maps.split(_chunk_size(maps)):
        spectra = _small_spectra(chunk, grid)
        for name in names:
            results[name].append(PER_MAP_METRICS[name](spectra))
    return {name: torch.cat(parts).reshape(lead) for name, parts in results.items()}


SmallGridMetric = Literal["aliasing", "relative_aliasing"]
SMALL_GRID_METRICS: tuple[SmallGridMetric, ...] = get_args(SmallGridMetric)
"""The metrics that need only Y and Z (the energy of X needs the maps themselves): those a convolution's
input spectra give (see :mod:`cnn_aliasing.conv_spectra`)."""


CPU_CHUNK_ELEMENTS = 1 << 20
"""On the CPU, maps are transformed in chunks of about this many values (4 MiB of float32), so that the
intermediate spectra stay in cache: several times faster than one pass over a large batch."""


def _chunk_size(maps: torch.Tensor) -> int:
    if maps.device.type != "cpu":
        return max(1, maps.shape[0])
    return max(1, CPU_CHUNK_ELEMENTS // max(1, maps.shape[-2] * maps.shape[-1]))


def aliasing_per_map(
    x: torch.Tensor, factor: int | Sequence[int] = 2, *, nyquist: str | Nyquist = "zero"
) -> torch.Tensor:
    """Aliasing a = sum over bins |Y - Z| of every map of a full-resolution output x (..., H, W).

    Returns a float64 tensor of shape (...). The mean of a over all maps of an op is its metric AM.
    """
    return per_map_metrics(x, factor, ("aliasing",), nyquist=nyquist)["aliasing"]


def relative_aliasing_per_map(
    x: torch.Tensor, factor: int | Sequence[int] = 2, *, nyquist: str | Nyquist = "zero"
) -> torch.Tensor:
    """Scale-free aliasing sum|Y - Z| / sum|Y| per map (0 for an all-zero map), float64 of shape (...)."""
    return per_map_metrics(x, factor, ("relative_aliasing",), nyquist=nyquist)["relative_aliasing"]


def alias_energy_fraction_per_map(
    x: torch.Tensor, factor: int | Sequence[int] = 2, *, nyquist: str | Nyquist = "zero"
) -> torch.Tensor:
    """Share of the energy of X outside the alias-free bins, per map, float64 of shape (...)."""
    return per_map_metrics(x, factor, ("alias_energy_fraction",), nyquist=nyquist)["alias_energy_fraction"]
