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
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from cnn_aliasing.errors import CnnAliasingError

MAX_FACTOR = 8


class Nyquist(str, enum.Enum):
    """What the alias-free spectrum holds at the new Nyquist bin (only exists when the small size is even).

    ``ZERO``: nothing, as in the paper's eq. (5). ``KEEP_NEGATIVE``: the replica of negative frequency,
    which is what FLC pooling keeps.
    """

    ZERO = "zero"
    KEEP_NEGATIVE = "keep_negative"


def as_factor(factor: int | Sequence[int]) -> tuple[int, int]:
    """Normalise a down-sampling factor given as ``s`` or ``(s, t)`` and check it lies in 1..8."""
    pair = (factor, factor) if isinstance(factor, int) else tuple(factor)
    if len(pair) != 2 or not all(isinstance(f, int) and 1 <= f <= MAX_FACTOR for f in pair):
        raise CnnAliasingError(
            f"factor must be an int or a pair of ints in 1..{MAX_FACTOR}, got {factor!r}"
        )
    return pair  # type: ignore[return-value]


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
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    return torch.fft.fft2(x, norm="forward")


def _corner_index(big: int, factor: int, device: torch.device) -> tuple[torch.Tensor, int | None]:
    """Indices into an axis of X (length ``big``) of the replica the alias-free spectrum keeps.

    Small bin k (of n = ``big // factor``) keeps replica 0 while k < n/2 and the last replica (signed
    frequency k - n) above, the negative one at the Nyquist bin k = n/2. Also returns that Nyquist bin,
    or None where the axis has none (odd n, or no down-sampling on this axis).
    """
    n = big // factor
    k = torch.arange(n, device=device)
    index = torch.where(2 * k < n, k, k + big - n)
    nyquist_bin = n // 2 if factor > 1 and n % 2 == 0 else None
    return index, nyquist_bin


def fold(
    spec: torch.Tensor, factor: tuple[int, int], nyquist: Nyquist = Nyquist.ZERO
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold X (..., H, W) onto the small grid: returns (Y, Z), the actual and the alias-free spectra.

    H and W must be multiples of the factor (pad x first). Y sums all s*t replicas; Z keeps the one below
    the new Nyquist frequency on each axis; at a Nyquist bin it is zero or the negative replica.
    """
    s, t = factor
    h, w = spec.shape[-2:]
    y = spec.reshape(*spec.shape[:-2], s, h // s, t, w // t).sum(dim=(-4, -2))
    rows, row_nyquist = _corner_index(h, s, spec.device)
    cols, col_nyquist = _corner_index(w, t, spec.device)
    z = spec.index_select(-2, rows).index_select(-1, cols)
    if nyquist is Nyquist.ZERO:
        if row_nyquist is not None:
            z[..., row_nyquist, :] = 0
        if col_nyquist is not None:
            z[..., :, col_nyquist] = 0
    return y, z


def _sum_bins(values: torch.Tensor) -> torch.Tensor:
    return values.sum(dim=(-2, -1), dtype=torch.float64)


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den > 0, num / den.clamp(min=torch.finfo(den.dtype).tiny), torch.zeros_like(num))


def _aliasing(spec: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return _sum_bins((y - z).abs())


def _relative_aliasing(spec: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return _ratio(_sum_bins((y - z).abs()), _sum_bins(y.abs()))


def _alias_energy_fraction(spec: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    total = _sum_bins(spec.real.square() + spec.imag.square())
    kept = _sum_bins(z.real.square() + z.imag.square())
    return _ratio(total - kept, total)


PER_MAP_METRICS = {
    "aliasing": _aliasing,
    "relative_aliasing": _relative_aliasing,
    "alias_energy_fraction": _alias_energy_fraction,
}
"""Per-map metrics computed from (X, Y, Z). ``aliasing`` is AM's per-map term; the others are scale-free:
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
    if x.dim() < 2 or x.shape[-1] == 0 or x.shape[-2] == 0:
        raise CnnAliasingError(f"expected a tensor of shape (..., H, W) with H, W > 0, got {tuple(x.shape)}")
    if x.is_complex() or not x.is_floating_point():
        raise CnnAliasingError(f"expected a real floating-point tensor, got dtype {x.dtype}")
    names = check_metric_names(metrics)
    f = as_factor(factor)
    spec = spectrum(pad_to_multiple(x, f))
    y, z = fold(spec, f, as_nyquist(nyquist))
    return {name: PER_MAP_METRICS[name](spec, y, z) for name in names}


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
