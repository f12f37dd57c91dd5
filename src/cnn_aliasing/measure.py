"""Measuring the aliasing of every down-sampling op of a model over a stream of images.

:func:`measure` runs the model once per batch with the probe active; each op's full-resolution output is
reduced on the device to per-map metrics and merged into per-channel running means and sums of squared
deviations (float64, Chan et al.'s parallel update), so memory does not grow with the number of images.
Per batch, only the [0, 1] check of the images meets the host; per-op counts of non-finite per-map values
stay on the device until the end, where ops whose full-resolution output held NaN or Inf are an error.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from cnn_aliasing import spectral
from cnn_aliasing.downsamplers import StridedCall
from cnn_aliasing.errors import CnnAliasingError
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
    """Mean, standard deviation and count of one per-map metric over all maps of one op."""

    mean: float
    std: float
    count: int
    per_channel: list[float] | None = None

    @property
    def sem(self) -> float:
        """Standard error of the mean, treating maps as independent (they are not quite: see docs)."""
        return self.std / math.sqrt(self.count) if self.count > 0 else float("nan")


@dataclass
class OpAliasing:
    """The aliasing of one down-sampling op: AM (``aliasing``) with its std and count, plus variants."""

    name: str
    kind: str
    factor: tuple[int, int]
    full_size: tuple[int, int]
    channels: int
    metrics: dict[str, MetricSummary]

    @property
    def aliasing(self) -> float:
        """AM: the mean over all maps of sum |Y - Z|."""
        return self.metrics[AM].mean

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

    def op(self, name: str) -> OpAliasing:
        """The op with this name; the error lists the names measured."""
        for op in self.ops:
            if op.name == name:
                return op
        raise KeyError(f"no op named {name!r}; measured: {', '.join(o.name for o in self.ops)}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the ops keep forward order)."""
        return {
            "n_images": self.n_images,
            "nyquist": self.nyquist,
            "metrics": list(self.metrics),
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
                    "metrics": {k: asdict(v) for k, v in op.metrics.items()},
                }
                for op in self.ops
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AliasingReport:
        """Rebuild a report from :meth:`to_dict` output (as read back from JSON)."""
        ops = [
            OpAliasing(
                name=o["name"],
                kind=o["kind"],
                factor=tuple(o["factor"]),  # type: ignore[arg-type]
                full_size=tuple(o["full_size"]),  # type: ignore[arg-type]
                channels=o["channels"],
                metrics={k: _summary_from_json(v) for k, v in o["metrics"].items()},
            )
            for o in data["ops"]
        ]
        return cls(ops, data["n_images"], data["nyquist"], tuple(data["metrics"]), data.get("meta", {}))

    def rows(self) -> list[dict[str, Any]]:
        """One flat dict per op (for CSV and tables): name, kind, factor, AM, std, count, variants."""
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
        return f"{head} (nyquist={self.nyquist})\n{self.format_table()}"


def _summary_from_json(data: dict[str, Any]) -> MetricSummary:
    """A MetricSummary as written to JSON, where NaN is stored as null."""

    def number(value: float | None) -> float:
        return float("nan") if value is None else value

    per_channel = data.get("per_channel")
    return MetricSummary(
        number(data["mean"]),
        number(data["std"]),
        data["count"],
        None if per_channel is None else [number(v) for v in per_channel],
    )


def _format_cell(value: Any) -> str:
    return f"{value:.5g}" if isinstance(value, float) else str(value)


class _RunningMoments:
    """Per-channel running mean and sum of squared deviations of per-map values, on the device."""

    def __init__(self, channels: int, device: torch.device):
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

    def summary(self, per_channel: bool) -> MetricSummary:
        """Mean, sample std and count over all maps of all channels (one host transfer)."""
        channels = self.mean.numel()
        count = self.n * channels
        if count == 0:
            return MetricSummary(float("nan"), float("nan"), 0, [] if per_channel else None)
        mean = self.mean.mean()
        m2 = self.m2.sum() + (self.mean - mean).square().sum() * self.n
        std = torch.sqrt(m2 / (count - 1)) if count > 1 else torch.zeros_like(mean)
        values = torch.stack([mean, std]).tolist()
        return MetricSummary(values[0], values[1], count, self.mean.tolist() if per_channel else None)


@dataclass
class _OpState:
    kind: str
    factor: tuple[int, int]
    full_size: tuple[int, int]
    channels: int
    moments: dict[str, _RunningMoments]
    nonfinite: torch.Tensor  # maps whose aliasing is NaN or Inf (a count on the device)


class _Accumulator:
    """The probe's observer: reduces each full-resolution output to per-map metrics and accumulates."""

    def __init__(self, metrics: Sequence[str], nyquist: spectral.Nyquist):
        self.metrics = tuple(metrics)
        self.nyquist = nyquist
        self.ops: dict[str, _OpState] = {}

    def __call__(self, op: OpCall, call: StridedCall) -> None:
        values = self._per_map(op, call)
        shape = call.full_shape()
        channels = shape[-3] if len(shape) >= 3 else 1
        state = self.ops.get(op.name)
        if state is None:
            device = values[AM].device
            moments = {m: _RunningMoments(channels, device) for m in self.metrics}
            nonfinite = torch.zeros((), dtype=torch.int64, device=device)
            state = _OpState(op.kind, op.factor, (shape[-2], shape[-1]), channels, moments, nonfinite)
            self.ops[op.name] = state
        elif state.channels != channels:
            raise CnnAliasingError(
                f"op {op.name!r} produced {channels} channels after {state.channels} in an earlier call"
            )
        state.nonfinite += values[AM].isfinite().logical_not().sum()
        for name, v in values.items():
            state.moments[name].add(v.reshape(-1, channels))

    def check_finite(self) -> None:
        """Raise naming the ops whose full-resolution output held NaN or Inf (one host sync)."""
        if not self.ops:
            return
        device = next(iter(self.ops.values())).nonfinite.device
        counts = torch.stack([s.nonfinite.to(device) for s in self.ops.values()]).tolist()
        bad = [
            f"{name!r} ({n} of {s.moments[AM].n * s.channels} maps)"
            for (name, s), n in zip(self.ops.items(), counts, strict=True)
            if n
        ]
        if bad:
            raise CnnAliasingError(
                f"NaN or Inf in the full-resolution output of {', '.join(bad)}: the model's activations "
                "are not finite on these images (its weights and the images are), so their aliasing is "
                "undefined"
            )

    def _per_map(self, op: OpCall, call: StridedCall) -> dict[str, torch.Tensor]:
        """Per-map metrics: from the input's spectra for a 1x1 convolution, else from the stride-1 output."""
        linear = call.pointwise
        if linear is not None and all(m in spectral.POINTWISE_METRICS for m in self.metrics):
            return spectral.pointwise_per_map_metrics(
                linear.input.detach(),
                linear.weight.detach(),
                None if linear.bias is None else linear.bias.detach(),
                op.factor,
                self.metrics,
                groups=linear.groups,
                nyquist=self.nyquist,
            )
        return spectral.per_map_metrics(
            call.measured().detach(), op.factor, self.metrics, nyquist=self.nyquist
        )

    def report(self, n_images: int, per_channel: bool) -> AliasingReport:
        ops = [
            OpAliasing(
                name,
                s.kind,
                s.factor,
                s.full_size,
                s.channels,
                {m: r.summary(per_channel) for m, r in s.moments.items()},
            )
            for name, s in self.ops.items()
        ]
        return AliasingReport(ops, n_images, self.nyquist.value, self.metrics)


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
) -> AliasingReport:
    """Aliasing (AM, std, count and optional scale-free variants) of every down-sampling op of ``model``.

    ``batches`` yields image tensors (N, C, H, W) in [0, 1] or (images, labels) pairs. Runs in eval mode
    without gradients and leaves the model as it found it (mode, forwards, device). ``include``/``exclude``
    are shell-style name patterns; ``metrics`` adds variants from
    :data:`cnn_aliasing.spectral.PER_MAP_METRICS` to AM; ``per_channel`` keeps per-channel means.
    ``total_images`` sizes the progress bar when ``batches`` has no length.

    Every batch is checked to lie in [0, 1]; images, weights or activations holding NaN or Inf raise a
    :class:`CnnAliasingError` naming the batch, parameter or op. Ops the engine cannot measure run
    unchanged with an :class:`~cnn_aliasing.probe.UnmeasurableOpWarning` each.
    """
    names = spectral.check_metric_names([AM, *(m for m in metrics if m != AM)])
    accumulator = _Accumulator(names, spectral.as_nyquist(nyquist))
    target = torch.device(device) if device is not None else model_device(model)
    n_images = 0
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(
            tqdm(total=total_images, disable=not progress, unit="img", desc="measuring aliasing", leave=False)
        )
        stack.enter_context(torch.no_grad())
        stack.enter_context(on_device(model, target))
        stack.enter_context(evaluation_mode(model))
        check_finite_weights(model)
        stack.enter_context(probing(model, accumulator, OpSelector(include, exclude)))
        dtype = model_dtype(model)
        for index, batch in enumerate(batches):
            images = _images_of(batch).to(target, dtype=dtype, non_blocking=True)
            check_unit_range(images, batch=index)
            run_model(model, images)
            n_images += images.shape[0]
            bar.update(images.shape[0])
    if n_images == 0:
        raise CnnAliasingError("measure() got no images: the batches iterable was empty")
    accumulator.check_finite()
    return accumulator.report(n_images, per_channel)
