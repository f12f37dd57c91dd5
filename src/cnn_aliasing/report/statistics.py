"""Statistics of the study per down-sampling op: the Spearman rank correlation between AM and robust
accuracy, the same correlation controlling for clean accuracy (partial rank correlation), and the ratio of
the mean AM of robust to standard models, each with a percentile bootstrap interval, for AM and for every
scale-free variant measured; plain-language verdicts that say when the evidence is weak and whether the
effect could be explained by clean accuracy or by activation scale; and one answer sentence per op group.

The bootstrap resamples models (with replacement, from a seeded numpy Generator); the index draw is
separate from the statistic, so a resample can be checked by hand. A resample on which the statistic is
undefined (constant ranks, a zero denominator) is degenerate: it is counted and left out of the interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cnn_aliasing.report.results import AM, ModelResult, OpResult, StudyResults

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


def partial_spearman(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Spearman's correlation of x and y controlling for z, along the last axis: the partial correlation
    of their average ranks, ``(r_xy - r_xz r_yz) / sqrt((1 - r_xz^2) (1 - r_yz^2))``. NaN with fewer than
    4 values, when a side is constant, or when z's ranks determine x's or y's."""
    x, y, z = (np.asarray(v, dtype=np.float64) for v in (x, y, z))
    if x.shape[-1] < 4:
        return np.full(x.shape[:-1], np.nan)
    rx, ry, rz = average_ranks(x), average_ranks(y), average_ranks(z)
    r_xy, r_xz, r_yz = pearson(rx, ry), pearson(rx, rz), pearson(ry, rz)
    den = (1.0 - r_xz**2) * (1.0 - r_yz**2)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 1e-12, (r_xy - r_xz * r_yz) / np.sqrt(np.where(den > 1e-12, den, 1.0)), np.nan)


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
class MetricEffect:
    """The statistics of one metric (AM or a scale-free variant) in one op: its rank correlation with
    robust accuracy, the same controlling for clean accuracy, and its robust/standard ratio."""

    metric: str
    correlation: Correlation
    partial: Correlation
    ratio: Ratio

    @property
    def supports(self) -> bool:
        """Clear evidence for the hypothesis: a negative correlation or a ratio below 1 that is not weak."""
        return (not self.correlation.weak and self.correlation.rho < 0) or (
            not self.ratio.weak and self.ratio.ratio < 1
        )


@dataclass(frozen=True)
class OpStatistics:
    """The statistics of one op and their plain-language verdicts; ``correlation`` and ``ratio`` are AM's,
    ``effects`` has AM first, then each scale-free variant measured."""

    op: str
    layer_group: str
    correlation: Correlation
    ratio: Ratio
    effects: tuple[MetricEffect, ...] = ()

    @property
    def partial(self) -> Correlation | None:
        """AM's rank correlation with robust accuracy controlling for clean accuracy."""
        return self.effects[0].partial if self.effects else None

    @property
    def confound_verdict(self) -> str:
        """Whether AM's effect here could be explained by clean accuracy or by activation scale."""
        return confound_verdict(self.effects)

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

    @property
    def answer(self) -> list[str]:
        """One sentence per op group: the answer with its numbers (see :func:`answer_sentences`)."""
        return answer_sentences(self.ops)


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


def _estimate(c: Correlation) -> str:
    if not math.isfinite(c.rho):
        return "undefined"
    if not c.interval.defined:
        return f"{c.rho:+.2f} (no interval)"
    return f"{c.rho:+.2f} [{c.interval.low:+.2f}, {c.interval.high:+.2f}]"


def confound_verdict(effects: tuple[MetricEffect, ...]) -> str:
    """Whether AM's effect in an op survives controlling for clean accuracy, and whether the scale-free
    variants show it too (else activation scale could explain it), stated plainly."""
    if not effects:
        return "no statistics."
    am, variants = effects[0], effects[1:]
    if not am.supports:
        return "AM shows no clear effect in this op, so there is nothing for a confound to explain."
    parts = []
    c, p = am.correlation, am.partial
    if not c.weak and c.rho < 0:
        if not p.weak and p.rho < 0:
            parts.append(f"the correlation holds controlling for clean accuracy (partial rho {_estimate(p)})")
        else:
            parts.append(
                "the correlation could be explained by clean accuracy: controlling for it, the partial "
                f"rho is {_estimate(p)}"
            )
    else:
        parts.append(
            "only the robust/standard ratio shows it, and the ratio does not control for clean accuracy, "
            "so clean accuracy could explain it"
        )
    if not variants:
        parts.append("no scale-free variant was measured, so activation scale could explain it")
    else:
        carried = [e.metric for e in variants if e.supports]
        if carried:
            parts.append(
                f"{' and '.join(carried)} show{'s' if len(carried) == 1 else ''} it too, so it is "
                "not only activation scale"
            )
        else:
            names = " and ".join(e.metric for e in variants)
            parts.append(
                f"{names} do{'es' if len(variants) == 1 else ''} not show it clearly, so it could be "
                "explained by activation scale"
            )
    return "; ".join(parts) + "."


def answer_sentences(ops: list[OpStatistics]) -> list[str]:
    """One sentence per op group (``layer2``, ...) in forward order: AM's rank correlation with robust
    accuracy per op, with its interval and the same controlling for clean accuracy."""
    groups: dict[str, list[OpStatistics]] = {}
    for o in ops:
        groups.setdefault(o.layer_group, []).append(o)
    sentences = []
    for group, members in groups.items():
        clear = [o for o in members if not o.correlation.weak]
        falls = [o for o in clear if o.correlation.rho < 0]
        rises = [o for o in clear if o.correlation.rho > 0]
        if falls and not rises:
            head = f"In {group}, AM falls as robust accuracy rises"
        elif rises and not falls:
            head = f"In {group}, AM rises with robust accuracy, against the hypothesis"
        elif falls and rises:
            head = f"In {group}, the ops disagree"
        else:
            head = f"In {group}, the evidence is weak"
        numbers = "; ".join(
            f"{o.op}: rho = {_estimate(o.correlation)}"
            + (f", controlling for clean accuracy {_estimate(o.partial)}" if o.partial is not None else "")
            for o in members
        )
        sentences.append(f"{head} ({len(clear)} of {len(members)} ops clear): {numbers}.")
    return sentences


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


def _metric_value(o: OpResult, metric: str) -> float | None:
    return o.aliasing if metric == AM else o.variants.get(metric)


def _metric_effect(
    metric: str,
    present: list[tuple[ModelResult, OpResult]],
    idx: np.ndarray,
    idx_groups: tuple[np.ndarray, np.ndarray] | None,
    level: float,
) -> MetricEffect:
    """One metric's statistics over ``present`` (models with this op), on the given resample indices."""
    valued = [(m, v) for m, o in present if (v := _metric_value(o, metric)) is not None]
    attacked = [(m, v) for m, v in valued if m.robust_accuracy is not None and m.clean_accuracy is not None]
    values = np.array([v for _, v in attacked], dtype=np.float64)
    acc = np.array([m.robust_accuracy for m, _ in attacked], dtype=np.float64)
    clean = np.array([m.clean_accuracy for m, _ in attacked], dtype=np.float64)
    if len(attacked) == idx.shape[1]:
        rho_stats = bootstrap_spearman(values, acc, idx)
        partial_stats = partial_spearman(values[idx], acc[idx], clean[idx])
    else:  # a variant missing on some models: nothing to pair with the shared resamples
        rho_stats = partial_stats = np.full(idx.shape[0], np.nan)
    robust = np.array([v for m, v in valued if m.robust], dtype=np.float64)
    standard = np.array([v for m, v in valued if not m.robust], dtype=np.float64)
    if idx_groups is None or (robust.size, standard.size) != (idx_groups[0].shape[1], idx_groups[1].shape[1]):
        ratio_stats = np.full(idx.shape[0], np.nan)  # a group of one model: no spread, no interval
    else:
        ratio_stats = bootstrap_ratio(robust, standard, *idx_groups)
    return MetricEffect(
        metric=metric,
        correlation=Correlation(
            len(attacked), float(spearman(values, acc)), percentile_interval(rho_stats, level)
        ),
        partial=Correlation(
            len(attacked),
            float(partial_spearman(values, acc, clean)),
            percentile_interval(partial_stats, level),
        ),
        ratio=Ratio(
            n_robust=int(robust.size),
            n_standard=int(standard.size),
            mean_robust=float(robust.mean()) if robust.size else math.nan,
            mean_standard=float(standard.mean()) if standard.size else math.nan,
            ratio=float(mean_ratio(robust, standard)),
            interval=percentile_interval(ratio_stats, level),
        ),
    )


def _op_statistics(
    op: str,
    models: list[ModelResult],
    metrics: list[str],
    rng: np.random.Generator,
    n_resamples: int,
    level: float,
) -> OpStatistics:
    """AM and every variant of one op, all on the same resamples of the models (paired)."""
    present = [(m, o) for m in models if (o := m.op(op)) is not None]
    n_attacked = sum(1 for m, _ in present if m.robust_accuracy is not None and m.clean_accuracy is not None)
    idx = resample_indices(rng, n_attacked, n_resamples)
    n_robust = sum(1 for m, _ in present if m.robust)
    n_standard = len(present) - n_robust
    idx_groups = None
    if min(n_robust, n_standard) >= MIN_PER_GROUP:
        idx_groups = (
            resample_indices(rng, n_robust, n_resamples),
            resample_indices(rng, n_standard, n_resamples),
        )
    effects = tuple(_metric_effect(metric, present, idx, idx_groups, level) for metric in metrics)
    return OpStatistics(
        op=op,
        layer_group=op.split(".", 1)[0],
        correlation=effects[0].correlation,
        ratio=effects[0].ratio,
        effects=effects,
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
    metrics = [AM, *results.variant_names]
    ops = [_op_statistics(op, models, metrics, rng, n_resamples, level) for op in results.op_names]
    return StudyStatistics(ops=ops, n_resamples=n_resamples, level=level, seed=seed)
