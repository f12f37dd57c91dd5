"""Measuring the aliasing of every down-sampling op of a model over a stream of images.

:func:`measure` runs the model once per batch with the probe active; each op's full-resolution output is
reduced on the device to per-map metrics and merged into per-channel running means and sums of squared
deviations (float64, Chan et al.'s parallel update), so memory does not grow with the number of images.
Per batch, only the [0, 1] check of the images meets the host; per-op counts of non-finite per-map values
stay on the device until the end, where ops whose full-resolution output held NaN or Inf are an error.

With ``sample_channels``, each op forms its full-resolution output for a random subset of its output
channels only (drawn once per call from ``seed`` and the op's name, the same on every image), and AM is
estimated by the mean over the sampled maps, with a standard error over the channel draw and a 95% interval
(see :func:`measure` and docs/metric.md).

With ``per_image``, each op also keeps every image's AM (the mean over that image's maps): one float64 value
per image, summed on the device during each batch and kept in the order the images came.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import numbers
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from cnn_aliasing import distributed, spectral
from cnn_aliasing.downsamplers import StridedCall
from cnn_aliasing.errors import CnnAliasingError, ReportFormatError
from cnn_aliasing.probe import OpCall, OpSelector, probing
from cnn_aliasing.runtime import (
    check_finite_weights,
    check_unit_range,
    evaluation_mode,
    model_device,
    model_dtype,
    on_device,
    run_model,
)

AM = "aliasing"


@dataclass
class MetricSummary:
    """Mean, standard deviation and count of one per-map metric over all maps of one op.

    For a channel-sampled measurement, ``mean`` estimates the mean over all channels, ``std`` and ``count``
    are over the sampled maps, ``per_channel`` lists the sampled channels only (in the order of
    :attr:`ChannelSample.indices`), ``sampling_sem`` is the standard error of the estimate over the channel
    draw and ``ci95`` its 95% interval (both None for an exact measurement).
    """

    mean: float
    std: float
    count: int
    per_channel: list[float] | None = None
    sampling_sem: float | None = None
    ci95: tuple[float, float] | None = None

    @property
    def sem(self) -> float:
        """Standard error of the mean: for a channel-sampled measurement, ``sampling_sem``; else
        std / sqrt(count), treating maps as independent (they are not quite: see docs)."""
        if self.sampling_sem is not None:
            return self.sampling_sem
        return self.std / math.sqrt(self.count) if self.count > 0 else float("nan")


@dataclass(frozen=True)
class ChannelSample:
    """Which output channels of an op a channel-sampled measurement formed: ``channels`` of ``of``, drawn
    with ``seed`` (and the op's name); ``indices`` sorted."""

    channels: int
    of: int
    seed: int
    indices: tuple[int, ...]


@dataclass
class OpAliasing:
    """The aliasing of one down-sampling op: AM (``aliasing``) with its std and count, plus variants."""

    name: str
    kind: str
    factor: tuple[int, int]
    full_size: tuple[int, int]
    channels: int
    metrics: dict[str, MetricSummary]
    sampled: ChannelSample | None = None  # None: every channel was measured (exact)

    @property
    def aliasing(self) -> float:
        """AM: the mean over all maps of sum |Y - Z| (for a channel-sampled measurement, its estimate)."""
        return self.metrics[AM].mean

    @property
    def ci95(self) -> tuple[float, float] | None:
        """The 95% interval of a channel-sampled AM estimate (None when measured exactly)."""
        return self.metrics[AM].ci95

    @property
    def std(self) -> float:
        """Standard deviation of the per-map aliasing."""
        return self.metrics[AM].std

    @property
    def count(self) -> int:
        """Number of maps K (images x channels) measured."""
        return self.metrics[AM].count


@dataclass
class AliasingReport:
    """Aliasing of every measured op, in forward order, and the settings that produced it."""

    ops: list[OpAliasing]
    n_images: int
    nyquist: str
    metrics: tuple[str, ...]
    meta: dict[str, Any] = field(default_factory=dict)
    sample_channels: int | float | None = None  # measure()'s argument; None: exact
    sample_seed: int | None = None
    per_image: dict[str, list[float]] | None = None  # per op, each image's AM in image order; None: not kept

    @property
    def sampled(self) -> bool:
        """Whether the values are channel-sampled estimates."""
        return self.sample_channels is not None

    def op(self, name: str) -> OpAliasing:
        """The op with this name; the error lists the names measured."""
        for op in self.ops:
            if op.name == name:
                return op
        raise KeyError(f"no op named {name!r}; measured: {', '.join(o.name for o in self.ops)}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the ops keep forward order); ``per_image`` only when it was kept."""
        data: dict[str, Any] = {
            "n_images": self.n_images,
            "nyquist": self.nyquist,
            "metrics": list(self.metrics),
            "sample_channels": self.sample_channels,
            "sample_seed": self.sample_seed,
            "meta": self.meta,
            "ops": [
                {
                    "name": op.name,
                    "kind": op.kind,
                    "factor": list(op.factor),
                    "full_size": list(op.full_size),
                    "channels": op.channels,
                    "aliasing": op.aliasing,
                    "std": op.std,
                    "count": op.count,
                    "sampled": None if op.sampled is None else asdict(op.sampled),
                    "metrics": {k: asdict(v) for k, v in op.metrics.items()},
                }
                for op in self.ops
            ],
        }
        if self.per_image is not None:
            data["per_image"] = {name: list(values) for name, values in self.per_image.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "") -> AliasingReport:
        """Rebuild a report from :meth:`to_dict` output (as read back from JSON). ``meta``,
        ``sample_channels``, ``sample_seed``, ``per_image`` and each op's ``sampled`` may be absent; the
        other keys are needed, else a :class:`ReportFormatError` names the missing key's path, prefixed by
        ``where`` (the path of ``data`` in a larger file, e.g. ``"aliasing."``). A ``per_image`` present
        must map every op, and no other name, to a list of ``n_images`` numbers (null for NaN)."""
        ops = []
        for i, o in enumerate(_key(data, "ops", where)):
            at = f"{where}ops[{i}]."
            metrics = _key(o, "metrics", at)
            _key(metrics, AM, f"{at}metrics.")  # an op's AM, std and count are its "aliasing" metric's
            ops.append(
                OpAliasing(
                    name=str(_key(o, "name", at)),
                    kind=str(_key(o, "kind", at)),
                    factor=_pair(_key(o, "factor", at)),
                    full_size=_pair(_key(o, "full_size", at)),
                    channels=int(_key(o, "channels", at)),
                    metrics={k: _summary_from_json(metrics, k, f"{at}metrics.") for k in metrics},
                    sampled=_sample_from_json(o.get("sampled"), f"{at}sampled."),
                )
            )
        n_images = int(_key(data, "n_images", where))
        return cls(
            ops,
            n_images,
            str(_key(data, "nyquist", where)),
            tuple(_key(data, "metrics", where)),
            data.get("meta", {}),
            data.get("sample_channels"),
            data.get("sample_seed"),
            _per_image_from_json(data.get("per_image"), [op.name for op in ops], n_images, where),
        )

    def rows(self) -> list[dict[str, Any]]:
        """One flat dict per op (for CSV and tables): name, kind, factor, AM, std, count, variants; when
        channel-sampled, also the channels measured and AM's 95% interval after count."""
        rows = []
        for op in self.ops:
            row: dict[str, Any] = {
                "op": op.name,
                "kind": op.kind,
                "factor": "x".join(map(str, op.factor)),
                "aliasing": op.aliasing,
                "std": op.std,
                "count": op.count,
            }
            if self.sampled:
                low, high = op.ci95 or (float("nan"), float("nan"))
                row["channels"] = f"{op.sampled.channels}/{op.sampled.of}" if op.sampled else "all"
                row["ci95_low"], row["ci95_high"] = low, high
            row.update({k: v.mean for k, v in op.metrics.items() if k != AM})
            rows.append(row)
        return rows

    def format_table(self) -> str:
        """The per-op table as aligned plain text."""
        rows = self.rows()
        if not rows:
            return "(no down-sampling ops measured)"
        header = list(rows[0])
        cells = [[_format_cell(r[h]) for h in header] for r in rows]
        widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
        lines = [header, *cells]
        return "\n".join(
            "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
        )

    def __str__(self) -> str:
        head = f"aliasing of {len(self.ops)} down-sampling ops over {self.n_images} images"
        return f"{head} ({self.settings()})\n{self.format_table()}"

    def settings(self) -> str:
        """The settings the values depend on, for a header line (``nyquist=zero``, and the sampling)."""
        if not self.sampled:
            return f"nyquist={self.nyquist}"
        return (
            f"nyquist={self.nyquist}; channel-sampled estimates, sample_channels={self.sample_channels}, "
            f"seed={self.sample_seed}, 95% intervals over the channel draw"
        )


def _key(obj: Any, key: str, where: str) -> Any:
    """``obj[key]`` of a report read back from JSON; a missing key names its path (``where`` is the
    parent's path, ending in a dot)."""
    if not isinstance(obj, dict) or key not in obj:
        raise ReportFormatError(f"missing key {where + key!r}")
    return obj[key]


def _pair(value: Sequence[int]) -> tuple[int, int]:
    return int(value[0]), int(value[1])


def _summary_from_json(metrics: dict[str, Any], name: str, where: str) -> MetricSummary:
    """The MetricSummary ``metrics[name]`` as written to JSON, where NaN is stored as null."""

    def number(value: float | None) -> float:
        return float("nan") if value is None else value

    data = _key(metrics, name, where)
    at = f"{where}{name}."
    mean, std, count = (_key(data, k, at) for k in ("mean", "std", "count"))
    per_channel = data.get("per_channel")
    sem, ci95 = data.get("sampling_sem"), data.get("ci95")
    return MetricSummary(
        number(mean),
        number(std),
        int(count),
        None if per_channel is None else [number(v) for v in per_channel],
        None if sem is None and ci95 is None else number(sem),
        None if ci95 is None else (number(ci95[0]), number(ci95[1])),
    )


def _per_image_from_json(
    data: Any, ops: Sequence[str], n_images: int, where: str
) -> dict[str, list[float]] | None:
    """The per-image AM as written to JSON (NaN as null): one list of ``n_images`` numbers per op."""
    if data is None:
        return None
    at = f"{where}per_image"
    if not isinstance(data, dict) or set(data) != set(ops):
        found = ", ".join(sorted(data)) if isinstance(data, dict) else type(data).__name__
        raise ReportFormatError(f"{at!r} must map every op ({', '.join(ops)}) to a list; got {found}")
    per_image = {}
    for name in ops:
        values = data[name]
        if not isinstance(values, list) or len(values) != n_images:
            size = f"{len(values)} values" if isinstance(values, list) else type(values).__name__
            raise ReportFormatError(f"'{at}.{name}' must list {n_images} values (n_images); got {size}")
        if not all(v is None or (isinstance(v, numbers.Real) and not isinstance(v, bool)) for v in values):
            raise ReportFormatError(f"'{at}.{name}' must hold numbers (null for NaN)")
        per_image[name] = [float("nan") if v is None else float(v) for v in values]
    return per_image


def _sample_from_json(data: dict[str, Any] | None, where: str) -> ChannelSample | None:
    """The ChannelSample as written to JSON (None: every channel was measured)."""
    if data is None:
        return None
    channels, of, seed, indices = (_key(data, k, where) for k in ("channels", "of", "seed", "indices"))
    return ChannelSample(int(channels), int(of), int(seed), tuple(indices))


def _format_cell(value: Any) -> str:
    return f"{value:.5g}" if isinstance(value, float) else str(value)


class _RunningMoments:
    """Per-channel running mean and sum of squared deviations of per-map values, on the device."""

    def __init__(self, channels: int, device: torch.device | None):
        self.n = 0  # maps per channel
        self.mean = torch.zeros(channels, dtype=torch.float64, device=device)
        self.m2 = torch.zeros(channels, dtype=torch.float64, device=device)

    def add(self, values: torch.Tensor) -> None:
        """Merge a (maps, channels) batch of values."""
        n_b = values.shape[0]
        if n_b == 0:
            return
        b_mean = values.mean(dim=0)
        b_m2 = (values - b_mean).square().sum(dim=0)
        total = self.n + n_b
        delta = b_mean - self.mean
        self.mean += delta * (n_b / total)
        self.m2 += b_m2 + delta.square() * (self.n * n_b / total)
        self.n = total

    def summary(self, per_channel: bool, population: int | None = None) -> MetricSummary:
        """Mean, sample std and count over all maps of all channels (one host transfer).

        ``population``: these channels are a simple random sample (without replacement) of that many
        channels of the op, and the summary adds the standard error of the mean over the channel draw and
        its 95% interval (see :func:`_sampling_sem`).
        """
        channels = self.mean.numel()
        count = self.n * channels
        sampled = population is not None
        nan = float("nan")
        if count == 0:
            return MetricSummary(
                nan,
                nan,
                0,
                [] if per_channel else None,
                nan if sampled else None,
                (nan, nan) if sampled else None,
            )
        mean = self.mean.mean()
        m2 = self.m2.sum() + (self.mean - mean).square().sum() * self.n
        std = torch.sqrt(m2 / (count - 1)) if count > 1 else torch.zeros_like(mean)
        stats = [mean, std]
        if population is not None:
            stats.append(_sampling_sem(self.mean, population))
        values = torch.stack(stats).tolist()
        sem = ci95 = None
        if population is not None:
            sem = values[2]
            if sem == 0:  # every channel measured: the estimate is AM itself
                half = 0.0
            else:
                half = t_critical(channels - 1) * sem if channels > 1 else nan
            ci95 = (values[0] - half, values[0] + half)
        return MetricSummary(
            values[0], values[1], count, self.mean.tolist() if per_channel else None, sem, ci95
        )


def _merge_moments(moments: Sequence[_RunningMoments], extra: torch.Tensor) -> torch.Tensor:
    """Replace ``moments`` on every rank by those of all ranks' values together, and return ``extra`` (a
    float64 vector) summed over the ranks: two float64 all-reduces whatever the number of moments (the
    counts and sums of values with ``extra``, then the squared deviations about the common means)."""
    if not moments:
        return distributed.all_reduce_sum(extra)
    sizes = [m.mean.numel() for m in moments]
    local = [torch.cat([m.mean * m.n, m.mean.new_full((1,), float(m.n))]) for m in moments]
    *totals, summed_extra = distributed.all_reduce_sum(torch.cat([*local, extra])).split(
        [size + 1 for size in sizes] + [extra.numel()]
    )
    counts = torch.stack([total[-1] for total in totals])
    means = [total[:-1] / count.clamp(min=1) for total, count in zip(totals, counts, strict=True)]
    deviations = [m.m2 + (m.mean - mean).square() * m.n for m, mean in zip(moments, means, strict=True)]
    m2s = distributed.all_reduce_sum(torch.cat(deviations)).split(sizes)
    for m, mean, m2, count in zip(moments, means, m2s, counts.tolist(), strict=True):
        m.mean, m.m2, m.n = mean, m2, int(count)
    return summed_extra


def _sampling_sem(channel_means: torch.Tensor, population: int) -> torch.Tensor:
    """Standard error over the channel draw of the mean of k sampled channels' means (0-d, float64).

    Channels are clusters of maps (every image of one channel), drawn without replacement from the op's
    ``population`` channels, each with the same number of maps; the mean over the sampled maps is the
    mean of the k channel means, an unbiased estimate of the mean over all channels. Its variance is
    (1 - k / C) S^2 / k (with the finite-population correction), S^2 estimated without bias by the sample
    variance of the k channel means. Exactly 0 when every channel was measured, NaN for one channel of
    several (no spread to estimate).
    """
    k = channel_means.numel()
    if k >= population:
        return torch.zeros((), dtype=channel_means.dtype, device=channel_means.device)
    if k < 2:
        return torch.full((), float("nan"), dtype=channel_means.dtype, device=channel_means.device)
    return torch.sqrt((1 - k / population) * channel_means.var(correction=1) / k)


# ---- channel sampling ----------------------------------------------------------------------------------


def _t_coverage(t: float, df: int) -> float:
    """P(|T| <= t) for Student's T with an integer number ``df`` >= 1 of degrees of freedom (closed forms
    of Abramowitz and Stegun 26.7.3 and 26.7.4)."""
    theta = math.atan(t / math.sqrt(df))
    cos2 = math.cos(theta) ** 2
    if df % 2:
        term = total = math.cos(theta) if df > 1 else 0.0
        for j in range(1, (df - 3) // 2 + 1):
            term *= cos2 * (2 * j) / (2 * j + 1)
            total += term
        return 2 / math.pi * (theta + math.sin(theta) * total)
    term = total = 1.0
    for j in range(1, (df - 2) // 2 + 1):
        term *= cos2 * (2 * j - 1) / (2 * j)
        total += term
    return math.sin(theta) * total


@functools.lru_cache(maxsize=512)
def t_critical(df: int, level: float = 0.95) -> float:
    """The two-sided critical value t of Student's distribution: P(|T| <= t) = ``level`` for ``df``
    degrees of freedom (12.706 for 1, 2.2281 for 10, 1.96 as df grows). Beyond 1000 degrees of freedom,
    the Cornish-Fisher expansion about the normal quantile (error below 1e-8 there)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df > 1000:
        z = _normal_quantile((1 + level) / 2)
        return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
    low, high = 0.0, 1.0
    while _t_coverage(high, df) < level:
        low, high = high, 2 * high
    for _ in range(200):
        mid = (low + high) / 2
        if _t_coverage(mid, df) < level:
            low = mid
        else:
            high = mid
        if high - low <= 1e-13 * high:
            break
    return (low + high) / 2


def _normal_quantile(p: float) -> float:
    """The standard normal quantile by bisection on erf (only used far into the t's normal limit)."""
    low, high = -40.0, 40.0
    for _ in range(200):
        mid = (low + high) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < p:
            low = mid
        else:
            high = mid
    return (low + high) / 2


@dataclass(frozen=True)
class _Sampling:
    """``measure``'s ``sample_channels`` (checked) and ``seed``: how many output channels of each op to
    form, and the seed of their draw."""

    value: int | float
    seed: int

    def count(self, channels: int) -> int:
        """Channels to sample of ``channels``: the count capped at them, or ceil(fraction x channels),
        at least one."""
        if isinstance(self.value, int):
            return min(self.value, channels)
        return min(channels, max(1, math.ceil(self.value * channels - 1e-9)))

    def draw(self, name: str, channels: int) -> ChannelSample:
        """The channels of the op ``name``: a uniform random subset without replacement, from a generator
        seeded by (seed, name), so each op gets its own draw and the same one on every call."""
        digest = hashlib.sha256(f"{self.seed}\0{name}".encode()).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
        k = self.count(channels)
        indices = torch.randperm(channels, generator=generator)[:k].sort().values
        return ChannelSample(k, channels, self.seed, tuple(indices.tolist()))


SAMPLE_CHANNELS_VALID = (
    "an int >= 1 (that many output channels of each op, capped at its channels), a float in (0, 1] "
    "(that fraction of each op's channels, rounded up, at least one), or None to measure every channel"
)


def _check_sampling(sample_channels: Any, seed: Any) -> _Sampling | None:
    """``sample_channels`` and ``seed`` checked, or None for an exact measurement."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise CnnAliasingError(f"seed={seed!r} is invalid; expected an integer >= 0")
    if sample_channels is None:
        return None
    bad = CnnAliasingError(
        f"sample_channels={sample_channels!r} is invalid; expected {SAMPLE_CHANNELS_VALID}"
    )
    if isinstance(sample_channels, bool) or not isinstance(sample_channels, numbers.Real):
        raise bad
    if isinstance(sample_channels, numbers.Integral):
        if sample_channels < 1:
            raise bad
        return _Sampling(int(sample_channels), int(seed))
    value = float(sample_channels)
    if not 0 < value <= 1:  # NaN fails too
        raise bad
    return _Sampling(value, int(seed))


@dataclass(frozen=True)
class _OpLayout:
    """What an op's statistics are of: its kind, factor, full-resolution size, channels and sample."""

    kind: str
    factor: tuple[int, int]
    full_size: tuple[int, int]
    channels: int
    sample: ChannelSample | None  # the channels measured (None: all)

    @property
    def measured(self) -> int:
        """How many channels are measured (the length of the per-channel statistics)."""
        return self.channels if self.sample is None else self.sample.channels


@dataclass
class _OpState:
    layout: _OpLayout
    moments: dict[str, _RunningMoments]
    nonfinite: torch.Tensor  # maps whose aliasing is NaN or Inf (a count on the device)
    index: torch.Tensor | None  # the sample's indices on the device, None when it covers every channel

    @classmethod
    def empty(cls, layout: _OpLayout, metrics: Sequence[str], device: torch.device | None) -> _OpState:
        """No maps seen yet."""
        moments = {m: _RunningMoments(layout.measured, device) for m in metrics}
        nonfinite = torch.zeros((), dtype=torch.int64, device=device)
        sample = layout.sample
        index = None
        if sample is not None and sample.channels < layout.channels:
            index = torch.tensor(sample.indices, dtype=torch.int64, device=device)
        return cls(layout, moments, nonfinite, index)


POINTWISE_MIX_RATIO = 2
"""A channel-sampled strided 1x1 convolution is measured from its input's spectra (which cost the same
whatever the sample) when it samples at least 1/POINTWISE_MIX_RATIO of its input channels, else from the
stride-1 output of the sampled channels alone (cheaper for small samples)."""


class _PerImage:
    """Each op's AM per image, on the device: during a batch, per image the sum of the AM of every map it
    gave the op (over all of the op's calls) and the number of those maps; at the batch's end, their ratio.
    An op not called on a batch gets NaN for its images (so every op lists every image, in order)."""

    def __init__(self, device: torch.device | None) -> None:
        self.device = device
        self.images = 0  # images of the finished batches
        self.batch = 0  # images of the batch in flight
        self.sums: dict[str, torch.Tensor] = {}  # this batch: per image, the sum of its maps' AM
        self.maps: dict[str, int] = {}  # this batch: maps per image
        self.values: dict[str, list[torch.Tensor]] = {}  # per op, the finished batches' per-image AM

    def begin(self, n_images: int) -> None:
        """A batch of ``n_images`` images starts."""
        self.batch, self.sums, self.maps = n_images, {}, {}

    def add(self, name: str, am: torch.Tensor) -> None:
        """Add one call's per-map AM (N, ..., channels) of the op ``name``."""
        if self.batch == 0:
            return
        if am.dim() == 0 or am.shape[0] != self.batch:
            seen = am.shape[0] if am.dim() else 0
            raise CnnAliasingError(
                f"op {name!r} saw {seen} images (its output's first dimension) in a batch of {self.batch}: "
                "per-image aliasing needs ops whose output keeps the batch as its first "
                "dimension (measure without per_image)"
            )
        maps = am.reshape(self.batch, -1)
        if maps.shape[1] == 0:
            return
        total = maps.sum(dim=1, dtype=torch.float64)
        self.sums[name] = self.sums[name] + total if name in self.sums else total
        self.maps[name] = self.maps.get(name, 0) + maps.shape[1]

    def end(self) -> None:
        """The batch in flight is done: keep each op's mean per image."""
        for name in [*self.values, *(n for n in self.sums if n not in self.values)]:
            if name not in self.values:  # first called now: NaN for the images before
                self.values[name] = [self._nan(self.images)]
            self.values[name].append(
                self.sums[name] / self.maps[name] if name in self.sums else self._nan(self.batch)
            )
        self.images += self.batch
        self.batch, self.sums, self.maps = 0, {}, {}

    def lists(self, ops: Iterable[str]) -> dict[str, list[float]]:
        """Each of ``ops`` with its per-image AM over the finished batches (NaN where it was not called)."""
        return {name: torch.cat(self.values.get(name) or [self._nan(self.images)]).tolist() for name in ops}

    def _nan(self, n: int) -> torch.Tensor:
        return torch.full((n,), float("nan"), dtype=torch.float64, device=self.device)


class _Accumulator:
    """The probe's observer: reduces each full-resolution output to per-map metrics and accumulates."""

    def __init__(
        self,
        metrics: Sequence[str],
        nyquist: spectral.Nyquist,
        sampling: _Sampling | None = None,
        device: torch.device | None = None,
        per_image: bool = False,
    ):
        self.metrics = tuple(metrics)
        self.nyquist = nyquist
        self.sampling = sampling
        self.device = device
        self.ops: dict[str, _OpState] = {}
        self.per_image = _PerImage(device) if per_image else None
        self.gathered: dict[str, list[float]] | None = None  # all ranks' per-image AM (combine_ranks)

    def begin_batch(self, n_images: int) -> None:
        """A batch of ``n_images`` images is about to run."""
        if self.per_image is not None:
            self.per_image.begin(n_images)

    def end_batch(self) -> None:
        """The batch has run."""
        if self.per_image is not None:
            self.per_image.end()

    def __call__(self, op: OpCall, call: StridedCall) -> None:
        channels = call.channel_count()
        state = self.ops.get(op.name)
        if state is None:
            sample = self.sampling.draw(op.name, channels) if self.sampling is not None else None
            layout = _OpLayout(op.kind, op.factor, call.full_size(), channels, sample)
            state = self.ops[op.name] = _OpState.empty(layout, self.metrics, self.device)
        elif state.layout.channels != channels:
            raise CnnAliasingError(
                f"op {op.name!r} produced {channels} channels after {state.layout.channels} in an earlier "
                "call"
            )
        values = self._per_map(op, call, state.index)
        state.nonfinite += values[AM].isfinite().logical_not().sum()
        if self.per_image is not None:
            self.per_image.add(op.name, values[AM])
        for name, v in values.items():
            state.moments[name].add(v.reshape(-1, state.layout.measured))

    def combine_ranks(self, n_images: int) -> int:
        """Make every rank's statistics those of all ranks' maps together; return the number of images of
        all ranks.

        The ranks first agree on the ops (in the order of the lowest rank that saw each; a rank that saw
        no images, or not every op, gets empty statistics for the rest), then sum in float64: per channel
        the counts and sums of values (with the non-finite counts and the images), then the squared
        deviations about the common means (Chan et al.'s merge: equal to one process up to rounding). The
        per-image AM, if kept, is gathered in rank order (each rank holds a contiguous shard of images)."""
        self._adopt_ops(distributed.all_gather_object({n: s.layout for n, s in self.ops.items()}))
        if self.per_image is not None:
            shards = distributed.all_gather_object(self.per_image.lists(self.ops))
            self.gathered = {name: [v for shard in shards for v in shard[name]] for name in self.ops}
        moments = [m for s in self.ops.values() for m in s.moments.values()]
        counts = [s.nonfinite.to(self.device, torch.float64).reshape(1) for s in self.ops.values()]
        images = torch.tensor([float(n_images)], dtype=torch.float64, device=self.device)
        summed = _merge_moments(moments, torch.cat([*counts, images]))
        for state, count in zip(self.ops.values(), summed[:-1], strict=True):
            state.nonfinite = count.to(torch.int64)
        return int(summed[-1].item())

    def _adopt_ops(self, layouts: Sequence[dict[str, _OpLayout]]) -> None:
        """Take on the ops every rank saw (``layouts``, in rank order), refusing ops that differ."""
        agreed: dict[str, _OpLayout] = {}
        for rank, ops in enumerate(layouts):
            for name, layout in ops.items():
                if agreed.setdefault(name, layout) != layout:
                    raise CnnAliasingError(
                        f"op {name!r} differs between ranks: {agreed[name]} on a lower rank, {layout} on "
                        f"rank {rank}; every rank must measure the same model"
                    )
        self.ops = {
            name: self.ops.get(name) or _OpState.empty(layout, self.metrics, self.device)
            for name, layout in agreed.items()
        }

    def check_finite(self) -> None:
        """Raise naming the ops whose full-resolution output held NaN or Inf (one host sync)."""
        if not self.ops:
            return
        device = next(iter(self.ops.values())).nonfinite.device
        counts = torch.stack([s.nonfinite.to(device) for s in self.ops.values()]).tolist()
        bad = [
            f"{name!r} ({n} of {s.moments[AM].n * s.layout.measured} maps)"
            for (name, s), n in zip(self.ops.items(), counts, strict=True)
            if n
        ]
        if bad:
            raise CnnAliasingError(
                f"NaN or Inf in the full-resolution output of {', '.join(bad)}: the model's activations "
                "are not finite on these images (its weights and the images are), so their aliasing is "
                "undefined"
            )

    def _per_map(self, op: OpCall, call: StridedCall, index: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Per-map metrics (..., channels) of the channels ``index`` (None: all): from the input's spectra
        for a 1x1 convolution, else from the stride-1 output (of those channels alone where the kind can
        form it so)."""
        linear = call.pointwise
        if linear is not None and all(m in spectral.POINTWISE_METRICS for m in self.metrics):
            if index is not None:
                mix_pays = index.numel() * POINTWISE_MIX_RATIO >= linear.weight.shape[1]
                linear = linear.select(index) if mix_pays else None
            if linear is not None:
                return spectral.pointwise_per_map_metrics(
                    linear.input.detach(),
                    linear.weight.detach(),
                    None if linear.bias is None else linear.bias.detach(),
                    op.factor,
                    self.metrics,
                    groups=linear.groups,
                    nyquist=self.nyquist,
                )
        maps = call.measured() if index is None else call.measured_channels(index)
        return spectral.per_map_metrics(maps.detach(), op.factor, self.metrics, nyquist=self.nyquist)

    def report(self, n_images: int, per_channel: bool) -> AliasingReport:
        ops = [
            OpAliasing(
                name,
                s.layout.kind,
                s.layout.factor,
                s.layout.full_size,
                s.layout.channels,
                {
                    m: r.summary(per_channel, None if s.layout.sample is None else s.layout.channels)
                    for m, r in s.moments.items()
                },
                s.layout.sample,
            )
            for name, s in self.ops.items()
        ]
        sampling = self.sampling
        per_image = self.gathered
        if per_image is None and self.per_image is not None:
            per_image = self.per_image.lists(self.ops)
        return AliasingReport(
            ops,
            n_images,
            self.nyquist.value,
            self.metrics,
            sample_channels=None if sampling is None else sampling.value,
            sample_seed=None if sampling is None else sampling.seed,
            per_image=per_image,
        )


def _check_finite_weights(model: nn.Module) -> None:
    """:func:`~cnn_aliasing.runtime.check_finite_weights`, after a fast pass that usually settles it: one
    sum per floating-point tensor (a NaN or Inf anywhere makes its sum NaN or Inf), one host sync. Only
    when some sum is not finite (a NaN or Inf, or a sum that overflowed) does the per-tensor check run,
    naming the tensors or passing. Ten times faster on PreAct ResNet-18 (3 ms against 33 on one core)."""
    tensors = [*model.parameters(), *model.buffers()]
    floats = [t.detach() for t in tensors if t.is_floating_point()]
    if floats and not any(t.is_complex() for t in tensors):
        device = floats[0].device
        sums = torch.stack([t.sum().to(device, torch.float64) for t in floats])
        if sums.isfinite().all().item():
            return
    check_finite_weights(model)


def _images_of(batch: Any) -> torch.Tensor:
    images = batch[0] if isinstance(batch, (tuple, list)) else batch
    if not isinstance(images, torch.Tensor):
        raise CnnAliasingError(
            f"each batch must be an image tensor or an (images, labels) pair, got {type(batch).__name__}"
        )
    if not images.is_floating_point():
        raise CnnAliasingError(
            f"images must be floating point in [0, 1], got dtype {images.dtype} "
            "(convert uint8 images with cnn_aliasing.data.to_float)"
        )
    return images


def measure(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    device: str | torch.device | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    nyquist: str = "zero",
    metrics: Sequence[str] = (AM,),
    per_channel: bool = False,
    progress: bool = True,
    total_images: int | None = None,
    sample_channels: int | float | None = None,
    seed: int = 0,
    across_ranks: bool = False,
    per_image: bool = False,
) -> AliasingReport:
    """Aliasing (AM, std, count and optional scale-free variants) of every down-sampling op of ``model``.

    ``batches`` yields image tensors (N, C, H, W) in [0, 1] or (images, labels) pairs. Runs in eval mode
    without gradients and leaves the model as it found it (mode, forwards, device). ``include``/``exclude``
    are shell-style name patterns; ``metrics`` adds variants from
    :data:`cnn_aliasing.spectral.PER_MAP_METRICS` to AM; ``per_channel`` keeps per-channel means.
    ``total_images`` sizes the progress bar when ``batches`` has no length.

    ``sample_channels`` estimates instead of measuring every map: an int k >= 1 forms the full-resolution
    output of k output channels of each op (all of them where it has no more), a float f in (0, 1] of
    ceil(f x its channels), at least one. The channels are drawn once per call, for each op from a
    generator seeded by (``seed``, the op's name), and are the same on every image; the op's real output
    is still computed by the op itself, so the model runs as it does unprobed. Each op's ``aliasing`` is
    then the mean over the sampled maps, an unbiased estimate of AM, with ``std`` and ``count`` over the
    sampled maps, ``sampled`` the channels drawn, and per metric ``sampling_sem`` (over the channel draw,
    with the finite-population correction; 0 when every channel is sampled) and ``ci95``, the Student t
    interval with k - 1 degrees of freedom. None (the default) measures every map exactly.

    ``across_ranks``: under ``torchrun`` (a process group started by
    :func:`cnn_aliasing.distributed.init_from_env`), ``batches`` are this rank's share of the images (e.g.
    :func:`cnn_aliasing.distributed.shard_range`), every rank calls ``measure`` alike, and the statistics
    are summed over the ranks in float64, so each returns the report of all ranks' images (equal to one
    process up to rounding); ``meta`` records ``world_size`` and ``backend``. Nothing changes in a single
    process. A rank may have no images.

    ``per_image`` keeps, for each op, every image's AM: the mean of sum |Y - Z| over that image's maps (its
    channels, or its sampled channels; over all of them when the op runs several times in one forward),
    in ``report.per_image[op]``, one value per image in the order the images came (under ``across_ranks``
    in rank order, the ranks' shards being contiguous). Its mean over the images is the op's AM. An op not
    called on some batch has NaN for those images. It needs ops whose output has the batch as first
    dimension.

    Every batch is checked to lie in [0, 1]; images, weights or activations holding NaN or Inf raise a
    :class:`CnnAliasingError` naming the batch, parameter or op. Ops the engine cannot measure run
    unchanged with an :class:`~cnn_aliasing.probe.UnmeasurableOpWarning` each.
    """
    names = spectral.check_metric_names([AM, *(m for m in metrics if m != AM)])
    sampling = _check_sampling(sample_channels, seed)
    target = torch.device(device) if device is not None else model_device(model)
    accumulator = _Accumulator(names, spectral.as_nyquist(nyquist), sampling, target, per_image)
    context = distributed.current() if across_ranks else distributed.SINGLE
    n_images = 0
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(
            distributed.image_progress(total_images, "measuring aliasing", progress, context)
        )
        stack.enter_context(torch.no_grad())
        stack.enter_context(on_device(model, target))
        stack.enter_context(evaluation_mode(model))
        _check_finite_weights(model)
        stack.enter_context(probing(model, accumulator, OpSelector(include, exclude)))
        dtype = model_dtype(model)
        for index, batch in enumerate(batches):
            images = _images_of(batch).to(target, dtype=dtype, non_blocking=True)
            check_unit_range(images, batch=index)
            accumulator.begin_batch(images.shape[0])
            run_model(model, images)
            accumulator.end_batch()
            n_images += images.shape[0]
            bar.update(images.shape[0])
    if context.world_size > 1:
        n_images = accumulator.combine_ranks(n_images)
    if n_images == 0:
        raise CnnAliasingError("measure() got no images: the batches iterable was empty")
    accumulator.check_finite()
    report = accumulator.report(n_images, per_channel)
    report.meta.update(context.meta())
    return report
