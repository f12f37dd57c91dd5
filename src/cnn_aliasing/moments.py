"""Per-channel running moments of per-map values on the device (float64, Chan et al.'s parallel update),
their merge across ranks, and the standard error of a channel-sampled mean."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cnn_aliasing import distributed
from cnn_aliasing.aliasing_report import MetricSummary
from cnn_aliasing.quantiles import t_critical


class RunningMoments:
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
        its 95% interval (see :func:`sampling_sem`).
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
            stats.append(sampling_sem(self.mean, population))
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


def merge_moments(moments: Sequence[RunningMoments], extra: torch.Tensor) -> torch.Tensor:
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


def sampling_sem(channel_means: torch.Tensor, population: int) -> torch.Tensor:
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
