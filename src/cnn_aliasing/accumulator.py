"""The probe's observer during :func:`cnn_aliasing.measure`: each op's full-resolution output reduced on the
device to per-map metrics and merged into per-channel running moments (and, if asked, each image's AM),
the ranks' statistics combined, non-finite outputs found, and the :class:`AliasingReport` built."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from cnn_aliasing import distributed, spectral
from cnn_aliasing.aliasing_report import AM, AliasingReport, ChannelSample, OpAliasing
from cnn_aliasing.channel_sampling import ChannelSampling
from cnn_aliasing.conv_spectra import ConvSpectra, spectral_route_pays
from cnn_aliasing.downsamplers import StridedCall
from cnn_aliasing.errors import CnnAliasingError
from cnn_aliasing.moments import RunningMoments, merge_moments
from cnn_aliasing.probe import OpCall


@dataclass(frozen=True)
class OpLayout:
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
class OpState:
    """An op's statistics so far: per metric the running moments, the non-finite count, the sample."""

    layout: OpLayout
    moments: dict[str, RunningMoments]
    nonfinite: torch.Tensor  # maps whose aliasing is NaN or Inf (a count on the device)
    index: torch.Tensor | None  # the sample's indices on the device, None when it covers every channel

    @classmethod
    def empty(cls, layout: OpLayout, metrics: Sequence[str], device: torch.device | None) -> OpState:
        """No maps seen yet."""
        moments = {m: RunningMoments(layout.measured, device) for m in metrics}
        nonfinite = torch.zeros((), dtype=torch.int64, device=device)
        sample = layout.sample
        index = None
        if sample is not None and sample.channels < layout.channels:
            index = torch.tensor(sample.indices, dtype=torch.int64, device=device)
        return cls(layout, moments, nonfinite, index)


class PerImage:
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


class Accumulator:
    """The probe's observer: reduces each full-resolution output to per-map metrics and accumulates."""

    def __init__(
        self,
        metrics: Sequence[str],
        nyquist: spectral.Nyquist,
        sampling: ChannelSampling | None = None,
        device: torch.device | None = None,
        per_image: bool = False,
    ):
        self.metrics = tuple(metrics)
        self.nyquist = nyquist
        self.sampling = sampling
        self.device = device
        self.ops: dict[str, OpState] = {}
        self.per_image = PerImage(device) if per_image else None
        self.gathered: dict[str, list[float]] | None = None  # all ranks' per-image AM (combine_ranks)
        self.conv_plans: dict[str, ConvSpectra] = {}  # per convolution measured from its input's spectra

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
            layout = OpLayout(op.kind, op.factor, call.full_size(), channels, sample)
            state = self.ops[op.name] = OpState.empty(layout, self.metrics, self.device)
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
        summed = merge_moments(moments, torch.cat([*counts, images]))
        for state, count in zip(self.ops.values(), summed[:-1], strict=True):
            state.nonfinite = count.to(torch.int64)
        return int(summed[-1].item())

    def _adopt_ops(self, layouts: Sequence[dict[str, OpLayout]]) -> None:
        """Take on the ops every rank saw (``layouts``, in rank order), refusing ops that differ."""
        agreed: dict[str, OpLayout] = {}
        for rank, ops in enumerate(layouts):
            for name, layout in ops.items():
                if agreed.setdefault(name, layout) != layout:
                    raise CnnAliasingError(
                        f"op {name!r} differs between ranks: {agreed[name]} on a lower rank, {layout} on "
                        f"rank {rank}; every rank must measure the same model"
                    )
        self.ops = {
            name: self.ops.get(name) or OpState.empty(layout, self.metrics, self.device)
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
        """Per-map metrics (images, channels) of the channels ``index`` (None: all): for a convolution from
        its input's spectra and its real output where that is the cheaper route, else from the stride-1
        output (of those channels alone where the kind can form it so)."""
        plan = self._conv_plan(op.name, call, index)
        if plan is not None and call.conv is not None:
            output = call.real_output()
            output = output if index is None else output.index_select(1, index)
            return plan.per_map_metrics(call.conv, output, self.metrics)
        maps = call.measured() if index is None else call.measured_channels(index)
        return spectral.per_map_metrics(maps.detach(), op.factor, self.metrics, nyquist=self.nyquist)

    def _conv_plan(self, name: str, call: StridedCall, index: torch.Tensor | None) -> ConvSpectra | None:
        """The op's :class:`ConvSpectra` (kept across batches while its weights are unchanged), or None
        where the stride-1 route is taken: not a convolution, a metric that needs the maps themselves, or
        the cheaper route."""
        conv = call.conv
        if conv is None or not set(self.metrics) <= set(spectral.SMALL_GRID_METRICS):
            return None
        plan = self.conv_plans.get(name)
        if plan is None or not plan.fits(conv):
            channels = conv.weight.shape[0] if index is None else index.numel()
            if not spectral_route_pays(conv, channels):
                return None
            plan = ConvSpectra(conv.weight, conv.bias, conv.geometry, conv.groups, self.nyquist)
            plan = plan if index is None else plan.select(index)
            if plan is None:
                return None
            self.conv_plans[name] = plan
        return plan

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
