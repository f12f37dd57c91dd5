"""A study's ``[report]`` settings: which models the figures name, and the bootstrap's resamples and seed,
with their defaults. Shared by the study's config (which fills the defaults in when it reads a TOML file)
and the report (which reads the settings back from ``study.json``, a key absent there taking the same
default); no torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cnn_aliasing.validation import is_int

DEFAULT_RESAMPLES = 2000
"""The bootstrap's resamples when ``[report] n_resamples`` is not given."""

DEFAULT_SEED = 0
"""The bootstrap's seed when ``[report] seed`` is not given."""


@dataclass(frozen=True)
class ReportSettings:
    """The ``[report]`` table as the report uses it; ``highlight`` None: not given."""

    highlight: tuple[str, ...] | None = None
    n_resamples: int = DEFAULT_RESAMPLES
    seed: int = DEFAULT_SEED

    @classmethod
    def from_table(cls, table: dict[str, Any], where: str) -> ReportSettings:
        """The settings in ``table`` (a config's ``report`` table as written to JSON); a bad resample count
        or seed is an error naming ``where`` and the key."""
        highlight = table.get("highlight")
        return cls(
            None if highlight is None else tuple(str(name) for name in highlight),
            is_int(1)(table.get("n_resamples", DEFAULT_RESAMPLES), f"{where}.n_resamples"),
            is_int(0)(table.get("seed", DEFAULT_SEED), f"{where}.seed"),
        )
