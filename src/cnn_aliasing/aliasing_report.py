"""What :func:`cnn_aliasing.measure` returns: the aliasing of every op (:class:`AliasingReport`,
:class:`OpAliasing`, :class:`MetricSummary`, :class:`ChannelSample`), its JSON form and its text table.

Plain data, no torch: the report reads these back from result files without loading a model's library.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from cnn_aliasing.errors import ReportFormatError
from cnn_aliasing.files import required_key

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
    """``obj[key]`` of a report read back from JSON (``where``: the parent's path, ending in a dot)."""
    return required_key(obj, key, where, error=ReportFormatError)


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
