"""Statistics of the study per down-sampling op: the Spearman rank correlation between AM and robust
accuracy, and the ratio of the mean AM of robust to standard models, each with a percentile bootstrap
interval, and a plain-language verdict that says when the evidence is weak.

The bootstrap resamples models (with replacement, from a seeded numpy Generator); the index draw is
separate from the statistic, so a resample can be checked by hand. A resample on which the statistic is
undefined (constant ranks, a zero denominator) is degenerate: it is counted and left out of the interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cnn_aliasing.report.results import ModelResult, StudyResults

DEFAULT_RESAMPLES = 2000
DEFAULT_LEVEL = 0.95
DEFAULT_SEED = 0
#: Fewer models than this (with robust accuracy) make the correlation weak evidence whatever its interval.
MIN_MODELS = 5
#: Fewer models than this in either group make the ratio weak evidence whatever its interval.
MIN_PER_GROUP = 2


# ------------------------------------------------------------------------------------- the statistics
def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n along the last axis, ties given their average rank (``#smaller + (#equal + 1) / 2``)."""
    a = np.asarray(values, dtype=np.float64)
    smaller = (a[..., None, :] < a[..., :, None]).sum(axis=-1)
    equal = (a[..., None, :] == a[..., :, None]).sum(axis=-1)
    return smaller + (equal + 1) / 2.0


def pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation along the last axis; NaN where x or y is constant."""
    xc = x - x.mean(axis=-1, keepdims=True)
    yc = y - y.mean(axis=-1, keepdims=True)
    den = np.sqrt((xc * xc).sum(axis=-1) * (yc * yc).sum(axis=-1))
    num = (xc * yc).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rank correlation along the last axis (Pearson of average ranks); NaN when fewer than 3
    values or when either side is constant."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape[-1] < 3:
        return np.full(x.shape[:-1], np.nan)
    return pearson(average_ranks(x), average_ranks(y))


def mean_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Mean of ``numerator`` over mean of ``denominator`` along the last axis; NaN when either is empty
    or the denominator's mean is not positive."""
    if numerator.shape[-1] == 0 or denominator.shape[-1] == 0:
        return np.full(np.broadcast_shapes(numerator.shape[:-1], denominator.shape[:-1]), np.nan)
    num = numerator.mean(axis=-1)
    den = denominator.mean(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


# ---------------------------------------------------------------------------------------- the bootstrap
def resample_indices(rng: np.random.Generator, n: int, n_resamples: int) -> np.ndarray:
    """An (n_resamples, n) matrix of indices drawn uniformly with replacement from 0..n-1."""
    return rng.integers(0, n, size=(n_resamples, n)) if n > 0 else np.zeros((n_resamples, 0), dtype=int)


@dataclass(frozen=True)
class Interval:
    """A percentile bootstrap interval; ``degenerate`` resamples had no defined statistic."""

    low: float
    high: float
    level: float
    n_resamples: int
    degenerate: int

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies in [low, high]; False when the interval is undefined (NaN)."""
        return bool(self.low <= value <= self.high)

    @property
    def defined(self) -> bool:
        """Whether both ends are numbers."""
        return math.isfinite(self.low) and math.isfinite(self.high)


def percentile_interval(stats: np.ndarray, level: float) -> Interval:
    """The central ``level`` interval of the finite bootstrap statistics (linear interpolation between
    order statistics, numpy's default); NaN ends when no resample gave a finite statistic."""
    finite = stats[np.isfinite(stats)]
    degenerate = int(stats.size - finite.size)
    if finite.size == 0:
        return Interval(math.nan, math.nan, level, int(stats.size), degenerate)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(finite, [tail, 1.0 - tail])
    return Interval(float(low), float(high), level, int(stats.size), degenerate)


def bootstrap_spearman(x: np.ndarray, y: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Spearman's correlation of each resample ``(x[i], y[i])`` for the rows ``i`` of ``indices``."""
    return spearman(np.asarray(x, dtype=np.float64)[indices], np.asarray(y, dtype=np.float64)[indices])


def bootstrap_ratio(
    numerator: np.ndarray, denominator: np.ndarray, idx_num: np.ndarray, idx_den: np.ndarray
) -> np.ndarray:
    """The mean ratio of each resample, drawn within each group (rows of ``idx_num`` and ``idx_den``)."""
    return mean_ratio(
        np.asarray(numerator, dtype=np.float64)[idx_num], np.asarray(denominator, dtype=np.float64)[idx_den]
    )


# ----------------------------------------------------------------------------------- per-op results
@dataclass(frozen=True)
class Correlation:
    """Spearman's rho between AM of one op and robust accuracy over ``n`` models, with its interval."""

    n: int
    rho: float
    interval: Interval

    @property
    def weak(self) -> bool:
        """Few models, an undefined estimate, or an interval that includes 0."""
        return (
            self.n < MIN_MODELS
            or not math.isfinite(self.rho)
            or not self.interval.defined
            or (self.interval.contains(0.0))
        )


@dataclass(frozen=True)
class Ratio:
    """Mean AM of robust models over mean AM of standard models for one op, with its interval."""

    n_robust: int
    n_standard: int
    mean_robust: float
    mean_standard: float
    ratio: float
    interval: Interval

    @property
    def weak(self) -> bool:
        """Few models in a group, an undefined estimate, or an interval that includes 1."""
        return (
            min(self.n_robust, self.n_standard) < MIN_PER_GROUP
            or not math.isfinite(self.ratio)
            or not self.interval.defined
            or self.interval.contains(1.0)
        )


@dataclass(frozen=True)
class OpStatistics:
    """The statistics of one op and their plain-language verdicts."""

    op: str
    layer_group: str
    correlation: Correlation
    ratio: Ratio

    @property
    def correlation_verdict(self) -> str:
        """What the correlation says, in words, including when it says little."""
        return correlation_verdict(self.correlation)

    @property
    def ratio_verdict(self) -> str:
        """What the ratio says, in words, including when it says little."""
        return ratio_verdict(self.ratio)


@dataclass(frozen=True)
class StudyStatistics:
    """Per-op statistics in forward order and the settings of the bootstrap."""

    ops: list[OpStatistics]
    n_resamples: int
    level: float
    seed: int

    @property
    def verdict(self) -> str:
        """One paragraph over all ops."""
        return overall_verdict(self.ops)


def _pct(level: float) -> str:
    return f"{100 * level:g}%"


def correlation_verdict(c: Correlation) -> str:
    """Direction, interval and strength of a correlation, stated plainly."""
    if c.n < 3:
        return f"not enough models: {c.n} with robust accuracy, a rank correlation needs at least 3."
    if not math.isfinite(c.rho):
        return f"undefined: AM or robust accuracy is the same for all {c.n} models."
    ci = f"{_pct(c.interval.level)} interval [{c.interval.low:+.2f}, {c.interval.high:+.2f}]"
    if not c.interval.defined:
        ci = "no bootstrap interval (every resample was degenerate)"
    if c.rho < 0:
        direction = f"negative (rho = {c.rho:+.2f}): models that alias more in this op are less robust"
    elif c.rho > 0:
        direction = (
            f"positive (rho = {c.rho:+.2f}): models that alias more in this op are more robust, "
            "against the hypothesis"
        )
    else:
        direction = "zero (rho = +0.00): no monotone relation"
    if not c.weak:
        return f"{direction}; {ci} excludes 0 over {c.n} models."
    reasons = []
    if c.n < MIN_MODELS:
        reasons.append(f"only {c.n} models")
    if c.interval.defined and c.interval.contains(0.0):
        reasons.append("the interval includes 0")
    if not c.interval.defined:
        reasons.append("no interval")
    return f"weak evidence ({', '.join(reasons)}): {direction}; {ci}."


def ratio_verdict(r: Ratio) -> str:
    """Direction, interval and strength of a robust/standard ratio, stated plainly."""
    if r.n_robust == 0 or r.n_standard == 0:
        return (
            f"no comparison: needs robust and standard models, has {r.n_robust} robust and "
            f"{r.n_standard} standard."
        )
    if not math.isfinite(r.ratio):
        return "undefined: the standard models' mean AM is 0."
    ci = f"{_pct(r.interval.level)} interval [{r.interval.low:.2f}, {r.interval.high:.2f}]"
    if not r.interval.defined:
        ci = (
            "no bootstrap interval (a group of one model)"
            if min(r.n_robust, r.n_standard) < MIN_PER_GROUP
            else "no bootstrap interval (every resample was degenerate)"
        )
    if r.ratio < 1:
        direction = f"robust models alias less (ratio {r.ratio:.2f}, {100 * (1 - r.ratio):.0f}% less AM)"
    elif r.ratio > 1:
        direction = (
            f"robust models alias more (ratio {r.ratio:.2f}, {100 * (r.ratio - 1):.0f}% more AM), "
            "against the hypothesis"
        )
    else:
        direction = "robust and standard models alias the same (ratio 1.00)"
    counts = f"{r.n_robust} robust vs {r.n_standard} standard models"
    if not r.weak:
        return f"{direction}; {ci} excludes 1 ({counts})."
    reasons = []
    if min(r.n_robust, r.n_standard) < MIN_PER_GROUP:
        reasons.append(f"only {counts}")
    if r.interval.defined and r.interval.contains(1.0):
        reasons.append("the interval includes 1")
    if not r.interval.defined:
        reasons.append("no interval")
    return f"weak evidence ({', '.join(reasons)}): {direction}; {ci}."


def overall_verdict(ops: list[OpStatistics]) -> str:
    """How many ops support, contradict or leave open the hypothesis, by each statistic."""
    if not ops:
        return "No down-sampling op was measured on a finished model: there is nothing to test."
    m = len(ops)
    less = sum(1 for o in ops if not o.ratio.weak and o.ratio.ratio < 1)
    more = sum(1 for o in ops if not o.ratio.weak and o.ratio.ratio > 1)
    neg = sum(1 for o in ops if not o.correlation.weak and o.correlation.rho < 0)
    pos = sum(1 for o in ops if not o.correlation.weak and o.correlation.rho > 0)
    text = (
        f"Of {m} down-sampling ops, robust models alias clearly less than standard ones in {less} and "
        f"clearly more in {more} (ratio interval excluding 1); in the other {m - less - more} the "
        f"evidence is weak or missing. AM is clearly negatively rank-correlated with robust accuracy in "
        f"{neg} ops and clearly positively in {pos}; in the other {m - neg - pos} it is weak or missing."
    )
    if less + neg == 0 and more + pos == 0:
        text += " Overall, these results neither support nor contradict the hypothesis."
    elif more + pos == 0:
        text += " Where the evidence is clear, it agrees with the hypothesis that robust models alias less."
    elif less + neg == 0:
        text += " Where the evidence is clear, it contradicts the hypothesis that robust models alias less."
    else:
        text += " The clear results point in both directions, depending on the op."
    return text


def _op_statistics(
    op: str, models: list[ModelResult], rng: np.random.Generator, n_resamples: int, level: float
) -> OpStatistics:
    with_op = [(m, m.op(op)) for m in models]
    present = [(m, o) for m, o in with_op if o is not None]
    attacked = [(m, o) for m, o in present if m.robust_accuracy is not None]
    am = np.array([o.aliasing for _, o in attacked])
    acc = np.array([m.robust_accuracy for m, _ in attacked], dtype=np.float64)
    rho = float(spearman(am, acc))
    rho_stats = bootstrap_spearman(am, acc, resample_indices(rng, len(attacked), n_resamples))
    robust = np.array([o.aliasing for m, o in present if m.robust])
    standard = np.array([o.aliasing for m, o in present if not m.robust])
    if min(robust.size, standard.size) < MIN_PER_GROUP:
        # resampling a group of one model has no spread: its interval would be a point, not an interval
        ratio_stats = np.full(n_resamples, np.nan)
    else:
        ratio_stats = bootstrap_ratio(
            robust,
            standard,
            resample_indices(rng, robust.size, n_resamples),
            resample_indices(rng, standard.size, n_resamples),
        )
    return OpStatistics(
        op=op,
        layer_group=op.split(".", 1)[0],
        correlation=Correlation(len(attacked), rho, percentile_interval(rho_stats, level)),
        ratio=Ratio(
            n_robust=int(robust.size),
            n_standard=int(standard.size),
            mean_robust=float(robust.mean()) if robust.size else math.nan,
            mean_standard=float(standard.mean()) if standard.size else math.nan,
            ratio=float(mean_ratio(robust, standard)),
            interval=percentile_interval(ratio_stats, level),
        ),
    )


def compute_statistics(
    results: StudyResults,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = DEFAULT_SEED,
) -> StudyStatistics:
    """Per-op statistics over the finished models (failed ones are left out), in forward order."""
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    models = results.done_models
    ops = [_op_statistics(op, models, rng, n_resamples, level) for op in results.op_names]
    return StudyStatistics(ops=ops, n_resamples=n_resamples, level=level, seed=seed)
