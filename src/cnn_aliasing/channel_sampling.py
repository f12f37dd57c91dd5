"""Channel sampling of :func:`cnn_aliasing.measure`: the ``sample_channels`` and ``seed`` arguments checked,
and each op's draw of output channels (the same on every image)."""

from __future__ import annotations

import hashlib
import math
import numbers
from dataclasses import dataclass
from typing import Any

import torch

from cnn_aliasing.aliasing_report import ChannelSample
from cnn_aliasing.errors import CnnAliasingError


@dataclass(frozen=True)
class ChannelSampling:
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


def check_sampling(sample_channels: Any, seed: Any) -> ChannelSampling | None:
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
        return ChannelSampling(int(sample_channels), int(seed))
    value = float(sample_channels)
    if not 0 < value <= 1:  # NaN fails too
        raise bad
    return ChannelSampling(value, int(seed))
