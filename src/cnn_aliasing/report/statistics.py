"""Statistics of the study per down-sampling op, made for few models (docs/report.md, "The statistics").

Across models: Spearman's rho between each metric (AM, then every scale-free variant) and robust accuracy,
and between the metric and clean accuracy, each with an exact permutation p-value (all n! orderings up to
n = 8, else a seeded Monte Carlo) and a Holm step-down adjustment over the study's ops; the collinearity of
clean and robust accuracy; the partial rank correlation only where it exists. Measurement noise: a paired
bootstrap of the images (the same drawn images for every model). Dose-response: the OLS slope of log AM
against the training eps. Within models: per image, rho between AM and the logit margin.

A bootstrap interval is given only where its statistic is defined in at least :data:`MIN_DEFINED` of the
resamples; it is descriptive, and "clear" means a Holm-adjusted p-value below :data:`ALPHA`, nothing else.
"""

from __future__ import annotations

import itertools
import math
import zlib
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import numpy as np

from cnn_aliasing.report.families import family_warning
from cnn_aliasing.report.matched import MatchedPairs, matched_pairs
from cnn_aliasing.report.multiplicity import holm
from cnn_aliasing.report.results import AM, ModelResult, OpResult, StudyResults
from cnn_aliasing.report_settings import DEFAULT_RESAMPLES, DEFAULT_SEED

DEFAULT_LEVEL = 0.95
#: A Holm-adjusted p-value below this is "clear".
ALPHA = 0.05
#: A bootstrap interval needs its statistic defined in at least this share of the resamples.
MIN_DEFINED = 0.95
#: Up to this many models every ordering is enumerated; above it, a Monte Carlo of MC_ORDERINGS.
EXACT_UP_TO = 8
MC_ORDERINGS = 100_000
#: |rho| of an ordering within this of the observed |rho| counts as a tie (float rounding).
TIE_TOLERANCE = 1e-12
#: Above this |rho(clean, robust accuracy)| across the models, no verdict can separate the two.
COLLINEAR_LIMIT = 0.5
#: A correlation within this of +-1 makes the partial correlation meaningless.
ONE_TOLERANCE = 1e-9
_MC_CHUNK = 2000
# streams of numpy's SeedSequence, so that each bootstrap's draw does not depend on the order of the others
_MODELS_STREAM, _IMAGES_STREAM, _WITHIN_STREAM, _COLLINEAR_STREAM = 0, 1, 2, 3


# ------------------------------------------------------------------------------------- rank statistics
def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n along the last axis, ties given their average rank (a sort, then each run of equal
    values gets the mean of its positions)."""
    a = np.asarray(values, dtype=np.float64)
    n = a.shape[-1]
    if n == 0:
        return a.copy()
    order = np.argsort(a, axis=-1, kind="stable")
    s = np.take_along_axis(a, order, axis=-1)
    position = np.broadcast_to(np.arange(n), a.shape)
    starts = np.ones(a.shape, dtype=bool)
    starts[..., 1:] = s[..., 1:] != s[..., :-1]
    ends = np.ones(a.shape, dtype=bool)
    ends[..., :-1] = starts[..., 1:]
    first = np.maximum.accumulate(np.where(starts, position, 0), axis=-1)
    last = np.flip(np.minimum.accumulate(np.flip(np.where(ends, position, n - 1), -1), axis=-1), -1)
    ranks = np.empty(a.shape, dtype=np.float64)
    np.put_along_axis(ranks, order, (first + last) / 2.0 + 1.0, axis=-1)
    return ranks


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
        return np.full(np.broadcast_shapes(x.shape[:-1], y.shape[:-1]), np.nan)
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


# ------------------------------------------------------------------------------------ permutation test
@dataclass(frozen=True)
class PermutationTest:
    """Spearman's rho and its two-sided permutation p-value: the share of the orderings of y whose |rho|
    is at least the observed one. ``exact``: all ``n_orderings`` = n! orderings; else a Monte Carlo of
    ``n_orderings`` random ones, p = (1 + hits) / (1 + n_orderings), with standard error ``mc_se``."""

    rho: float
    p: float
    exact: bool
    n_orderings: int
    mc_se: float

    def p_text(self) -> str:
        """``exact p = 0.017`` or ``Monte Carlo p = 0.012 \u00b1 0.001``."""
        if not math.isfinite(self.p):
            return "p undefined"
        if self.exact:
            return f"exact p = {self.p:.2g}"
        return f"Monte Carlo p = {self.p:.2g} \u00b1 {self.mc_se:.1g}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, NaN as None."""
        return {
            "rho": _finite(self.rho),
            "p": _finite(self.p),
            "exact": self.exact,
            "n_orderings": self.n_orderings,
            "mc_se": _finite(self.mc_se),
        }


@lru_cache(maxsize=EXACT_UP_TO + 1)
def _all_orderings(n: int) -> np.ndarray:
    """Every permutation of 0..n-1, one per row (n! rows)."""
    return np.array(list(itertools.permutations(range(n))), dtype=np.intp).reshape(-1, n)


def permutation_test(
    x: np.ndarray, y: np.ndarray, *, n_resamples: int | None = None, seed: int = DEFAULT_SEED
) -> PermutationTest:
    """Spearman's rho of x and y and its permutation p-value (see :class:`PermutationTest`): exact when
    ``n_resamples`` is None and n <= :data:`EXACT_UP_TO`, else a Monte Carlo of ``n_resamples`` (default
    :data:`MC_ORDERINGS`) orderings from ``numpy.random.default_rng(seed)``. NaN rho gives NaN p."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"x and y must be 1-d of one length, got shapes {x.shape} and {y.shape}")
    if n_resamples is not None and n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1 or None, got {n_resamples}")
    n = x.size
    exact = n_resamples is None and n <= EXACT_UP_TO
    rho = float(spearman(x, y))
    if not math.isfinite(rho):
        return PermutationTest(rho, math.nan, exact, 0, math.nan)
    rx = average_ranks(x) - (n + 1) / 2.0
    ry = average_ranks(y) - (n + 1) / 2.0
    scale = math.sqrt(float(rx @ rx) * float(ry @ ry))
    threshold = abs(rho) - TIE_TOLERANCE
    if exact:
        rhos = ry[_all_orderings(n)] @ rx / scale
        return PermutationTest(rho, float(np.mean(np.abs(rhos) >= threshold)), True, rhos.size, 0.0)
    total = MC_ORDERINGS if n_resamples is None else n_resamples
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, total, _MC_CHUNK):
        shuffled = rng.permuted(np.tile(ry, (min(_MC_CHUNK, total - start), 1)), axis=1)
        hits += int(np.count_nonzero(np.abs(shuffled @ rx / scale) >= threshold))
    p = (1 + hits) / (1 + total)
    return PermutationTest(rho, p, False, total, math.sqrt(p * (1 - p) / total))


def spearman_permutation_test(
    x: np.ndarray, y: np.ndarray, *, n_resamples: int | None = None, seed: int = 0
) -> tuple[float, float]:
    """Spearman's rho (average ranks for ties) and its two-sided permutation p-value: the share of the
    orderings of y whose |rho| >= the observed |rho|; all n! orderings up to n = 8 (with ``n_resamples``
    None), else a seeded Monte Carlo (see :func:`permutation_test`)."""
    test = permutation_test(x, y, n_resamples=n_resamples, seed=seed)
    return test.rho, test.p


# ---------------------------------------------------------------------------------------- the bootstrap
def resample_indices(rng: np.random.Generator, n: int, n_resamples: int) -> np.ndarray:
    """An (n_resamples, n) matrix of indices drawn uniformly with replacement from 0..n-1."""
    return rng.integers(0, n, size=(n_resamples, n)) if n > 0 else np.zeros((n_resamples, 0), dtype=int)


@dataclass(frozen=True)
class Interval:
    """A percentile bootstrap interval. ``undefined`` (K) of the ``n_resamples`` (N) resamples had no
    defined statistic; when K exceeds 1 - :data:`MIN_DEFINED` of N the ends are NaN (not ``defined``)."""

    low: float
    high: float
    level: float
    n_resamples: int
    undefined: int

    @property
    def defined(self) -> bool:
        """Whether both ends are numbers."""
        return math.isfinite(self.low) and math.isfinite(self.high)

    def text(self, spec: str = "+.2f") -> str:
        """``[low, high]``, or why there is no interval."""
        if self.defined:
            return f"[{format(self.low, spec)}, {format(self.high, spec)}]"
        return f"(interval undefined in {self.undefined} of {self.n_resamples} resamples)"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, NaN as None; ``undefined`` is K, ``n_resamples`` N."""
        return {
            "low": _finite(self.low),
            "high": _finite(self.high),
            "level": self.level,
            "defined": self.defined,
            "undefined": self.undefined,
            "n_resamples": self.n_resamples,
        }


def percentile_interval(stats: np.ndarray, level: float, min_defined: float = MIN_DEFINED) -> Interval:
    """The central ``level`` interval of the finite bootstrap statistics (numpy's linear interpolation),
    or NaN ends when fewer than ``min_defined`` of the resamples gave a finite statistic."""
    stats = np.asarray(stats, dtype=np.float64).ravel()
    finite = stats[np.isfinite(stats)]
    undefined = int(stats.size - finite.size)
    if finite.size == 0 or finite.size < min_defined * stats.size - 1e-9:
        return Interval(math.nan, math.nan, level, int(stats.size), undefined)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(finite, [tail, 1.0 - tail])
    return Interval(float(low), float(high), level, int(stats.size), undefined)


def _resample_counts(indices: np.ndarray, n: int) -> np.ndarray:
    """How often each of 0..n-1 is drawn in each row of ``indices``: an (n_resamples, n) float matrix."""
    rows = indices.shape[0]
    flat = (indices + n * np.arange(rows)[:, None]).ravel()
    return np.bincount(flat, minlength=rows * n).reshape(rows, n).astype(np.float64)


def image_bootstrap_spearman(aliasing: np.ndarray, robust: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """The paired image bootstrap of rho(AM, robust accuracy) across models: for each row of ``indices``
    (measured images drawn with replacement, the same for every model), each model's AM is the mean of its
    per-image AM (``aliasing``, models x n_measured) over the drawn images and its robust accuracy the mean
    of its robust flags (``robust``, models x n_attacked) over the drawn images that were attacked (the
    first n_attacked), with multiplicity; returns rho across models per resample."""
    n_measured, n_attacked = aliasing.shape[1], robust.shape[1]
    counts = _resample_counts(indices, n_measured)
    am = counts @ np.asarray(aliasing, dtype=np.float64).T / n_measured
    attacked = counts[:, :n_attacked]
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = attacked @ np.asarray(robust, dtype=np.float64).T / attacked.sum(axis=1, keepdims=True)
    return spearman(am, accuracy)


# ------------------------------------------------------------------------------------- dose-response
def t_quantile(q: float, df: int) -> float:
    """The q-quantile (q in (0.5, 1)) of Student's t with ``df`` degrees of freedom: bisection on its
    CDF, integrated by Simpson's rule (numpy only; accurate to about 1e-8)."""
    if not 0.5 < q < 1 or df < 1:
        raise ValueError(f"need 0.5 < q < 1 and df >= 1, got q={q}, df={df}")
    norm = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def cdf(t: float) -> float:
        xs = np.linspace(0.0, t, 4001)
        f = norm * (1.0 + xs * xs / df) ** (-(df + 1) / 2)
        return 0.5 + (t / 4000) / 3.0 * float(f[0] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum() + f[-1])

    low, high = 0.0, 1.0
    while cdf(high) < q:
        low, high = high, 2 * high
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if cdf(mid) < q else (low, mid)
    return (low + high) / 2


@dataclass(frozen=True)
class DoseResponse:
    """The OLS slope of log(metric) against the training eps (``dose``; 0 for standard training), models
    as replicates, with a ``level`` t interval (df = n - 2); NaN numbers and a ``reason`` when absent."""

    n: int
    n_doses: int
    slope: float
    se: float
    low: float
    high: float
    level: float
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, NaN as None; ``slope`` is per unit of eps (multiply by 1/255 for per 1/255)."""
        return {
            "n": self.n,
            "n_doses": self.n_doses,
            "slope": _finite(self.slope),
            "se": _finite(self.se),
            "low": _finite(self.low),
            "high": _finite(self.high),
            "level": self.level,
            "reason": self.reason,
        }


def dose_slope(dose: np.ndarray, value: np.ndarray, level: float = DEFAULT_LEVEL) -> DoseResponse:
    """OLS of log(value) on dose with its t interval; absent (with a reason) with fewer than 3 distinct
    doses or 4 models, or a non-positive value."""
    x = np.asarray(dose, dtype=np.float64)
    y = np.asarray(value, dtype=np.float64)
    n, n_doses = int(x.size), int(np.unique(x).size)

    def absent(reason: str) -> DoseResponse:
        return DoseResponse(n, n_doses, math.nan, math.nan, math.nan, math.nan, level, reason)

    if n_doses < 3 or n < 4:
        return absent(f"the design has no dose ({n} models with a training eps, {n_doses} distinct)")
    if np.any(y <= 0):
        return absent("the metric is 0 in some model: no logarithm")
    xc = x - x.mean()
    log_y = np.log(y)
    slope = float(xc @ (log_y - log_y.mean()) / (xc @ xc))
    residuals = log_y - log_y.mean() - slope * xc
    se = math.sqrt(float(residuals @ residuals) / (n - 2) / float(xc @ xc))
    half = t_quantile(1 - (1 - level) / 2, n - 2) * se
    return DoseResponse(n, n_doses, slope, se, slope - half, slope + half, level)


# ----------------------------------------------------------------------------------- per-op results
@dataclass(frozen=True)
class Correlation:
    """Spearman's rho of two quantities across ``n`` models: its permutation test, its descriptive
    bootstrap interval (models resampled) and its Holm-adjusted p over ``n_tests`` ops."""

    n: int
    test: PermutationTest
    interval: Interval
    p_holm: float = math.nan
    n_tests: int = 0

    @property
    def rho(self) -> float:
        """Spearman's rho."""
        return self.test.rho

    @property
    def p(self) -> float:
        """The permutation p-value, not adjusted."""
        return self.test.p

    @property
    def clear(self) -> bool:
        """Holm-adjusted p below :data:`ALPHA`: the only meaning of "clear"."""
        return bool(self.p_holm < ALPHA)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, NaN as None."""
        return {
            "n": self.n,
            **self.test.to_dict(),
            "p_holm": _finite(self.p_holm),
            "n_tests": self.n_tests,
            "clear": self.clear,
            "interval": self.interval.to_dict(),
        }


@dataclass(frozen=True)
class Partial:
    """The partial rank correlation controlling for clean accuracy, or the ``reason`` it is not given."""

    rho: float
    interval: Interval | None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, NaN as None."""
        return {
            "rho": _finite(self.rho),
            "interval": self.interval.to_dict() if self.interval else None,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class MetricEffect:
    """One metric (AM or a scale-free variant) in one op: rho with robust and with clean accuracy, the
    partial correlation and the dose-response."""

    metric: str
    robust: Correlation
    clean: Correlation
    partial: Partial
    dose: DoseResponse

    @property
    def follows_clean(self) -> bool:
        """Whether |rho(metric, clean)| >= |rho(metric, robust)| (both defined)."""
        return (
            math.isfinite(self.robust.rho)
            and math.isfinite(self.clean.rho)
            and abs(self.clean.rho) >= abs(self.robust.rho)
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, NaN as None."""
        return {
            "metric": self.metric,
            "robust": self.robust.to_dict(),
            "clean": self.clean.to_dict(),
            "follows_clean": self.follows_clean,
            "partial": self.partial.to_dict(),
            "dose": self.dose.to_dict(),
        }


@dataclass(frozen=True)
class ImageBootstrap:
    """The paired image bootstrap of rho(AM, robust accuracy) in one op, or the ``reason`` it is absent."""

    n_models: int
    n_measured: int
    n_attacked: int
    interval: Interval | None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "n_models": self.n_models,
            "n_measured": self.n_measured,
            "n_attacked": self.n_attacked,
            "interval": self.interval.to_dict() if self.interval else None,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class ImageCorrelation:
    """Within one model and op: rho between an attacked image's AM and its logit margin over the
    ``n_images`` attacked images classified correctly when clean, with a bootstrap interval over them."""

    model: str
    robust: bool
    n_images: int
    rho: float
    interval: Interval

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, NaN as None."""
        return {
            "model": self.model,
            "robust": self.robust,
            "n_images": self.n_images,
            "rho": _finite(self.rho),
            "interval": self.interval.to_dict(),
        }


@dataclass(frozen=True)
class OpStatistics:
    """Every statistic of one op: ``effects`` has AM first, then each scale-free variant; ``accuracies``
    is rho(clean, robust accuracy) over this op's models."""

    op: str
    layer_group: str
    effects: tuple[MetricEffect, ...]
    accuracies: Correlation
    images: ImageBootstrap
    within: tuple[ImageCorrelation, ...] = ()

    @property
    def am(self) -> MetricEffect:
        """AM's statistics."""
        return self.effects[0]

    @property
    def correlation(self) -> Correlation:
        """rho(AM, robust accuracy)."""
        return self.am.robust

    @property
    def confound_verdict(self) -> str:
        """Whether these models can separate AM's link to robustness from its link to clean accuracy."""
        return confound_verdict(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, NaN as None."""
        return {
            "op": self.op,
            "layer_group": self.layer_group,
            "metrics": [e.to_dict() for e in self.effects],
            "clean_vs_robust": self.accuracies.to_dict(),
            "confound": self.confound_verdict,
            "image_bootstrap": self.images.to_dict(),
            "per_image": [c.to_dict() for c in self.within],
        }


@dataclass(frozen=True)
class StudyStatistics:
    """Per-op statistics in forward order, the study-wide rho(clean, robust accuracy) and the settings."""

    ops: list[OpStatistics]
    collinearity: Correlation
    n_resamples: int
    level: float
    seed: int
    cautions: tuple[str, ...] = ()  # what limits comparisons among these models (e.g. padded families)
    matched: MatchedPairs | None = None  # standard and robust models at matched clean accuracy

    @property
    def answer(self) -> list[str]:
        """The answer in plain words, first lines of the page and the CLI (see :func:`answer_lines`)."""
        return answer_lines(self)

    @property
    def separable(self) -> bool:
        """Whether robustness and clean accuracy are apart enough across the models to tell AM's link to
        the one from its link to the other: |rho(clean, robust accuracy)| <= :data:`COLLINEAR_LIMIT`."""
        return math.isfinite(self.collinearity.rho) and abs(self.collinearity.rho) <= COLLINEAR_LIMIT

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-ready (NaN as None): ``statistics.json``."""
        return {
            "settings": {
                "n_resamples": self.n_resamples,
                "level": self.level,
                "seed": self.seed,
                "alpha": ALPHA,
                "min_defined": MIN_DEFINED,
                "exact_up_to": EXACT_UP_TO,
                "mc_orderings": MC_ORDERINGS,
            },
            "answer": self.answer,
            "clean_vs_robust": self.collinearity.to_dict(),
            "matched_pairs": None if self.matched is None else self.matched.to_dict(),
            "ops": [o.to_dict() for o in self.ops],
        }


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


# ------------------------------------------------------------------------------------------ wording
def _rho(value: float) -> str:
    return f"{value:+.2f}" if math.isfinite(value) else "undefined"


def correlation_line(o: OpStatistics, separable: bool) -> str:
    """One op's rho(AM, robust accuracy) in plain words, "clear" only on a Holm-adjusted p < ALPHA, and
    qualified where the models cannot separate robustness from clean accuracy (``separable`` false: they
    are collinear across the study) or AM follows clean accuracy at least as closely in this op."""
    op, c = o.op, o.correlation
    if c.n < 3 or not math.isfinite(c.rho):
        why = f"only {c.n} models" if c.n < 3 else "AM or robust accuracy is the same for all models"
        return f"{op}: cannot tell ({why}; a rank correlation needs 3 models that differ)."
    if c.rho < 0:
        direction = "AM falls as robust accuracy rises"
    elif c.rho > 0:
        direction = "AM rises with robust accuracy, against the hypothesis"
    else:
        direction = "AM and robust accuracy show no monotone relation"
    numbers = f"rho = {c.rho:+.2f}, {c.test.p_text()}, Holm p = {c.p_holm:.2g}"
    verdict = f"{'clear' if c.clear else 'not clear'} after correcting for {c.n_tests} ops"
    if c.clear and not separable:
        verdict += ", but these models cannot separate robust from clean accuracy"
    elif c.clear and o.am.follows_clean:
        verdict += (
            f", but AM follows clean accuracy at least as closely (rho = {o.am.clean.rho:+.2f}), so it "
            "cannot be told apart from clean accuracy"
        )
    return f"{op}: {direction} ({numbers}, {c.n} models): {verdict}."


def confound_verdict(o: OpStatistics) -> str:
    """Whether AM follows clean accuracy at least as closely as robust accuracy in this op, and the partial
    correlation where it exists."""
    am = o.am
    if not (math.isfinite(am.robust.rho) and math.isfinite(am.clean.rho)):
        return "cannot tell: rho(AM, robust accuracy) or rho(AM, clean accuracy) is undefined."
    pair = f"rho(AM, clean) = {am.clean.rho:+.2f}, rho(AM, robust) = {am.robust.rho:+.2f}"
    if am.follows_clean:
        head = (
            f"AM follows clean accuracy at least as closely as robustness ({pair}), so these models cannot "
            "separate the two"
        )
    else:
        head = f"AM follows robust accuracy more closely than clean accuracy ({pair})"
    if am.partial.reason is not None:
        return f"{head}; no partial correlation ({am.partial.reason})."
    ci = am.partial.interval.text() if am.partial.interval else ""
    return f"{head}; controlling for clean accuracy, partial rho = {am.partial.rho:+.2f} {ci}."


def _collinearity_line(stats: StudyStatistics) -> str:
    c = stats.collinearity
    across = f"across the {c.n} models clean and robust accuracy have rho = {_rho(c.rho)} ({c.test.p_text()})"
    follows = [o for o in stats.ops if o.am.follows_clean]
    defined = [o for o in stats.ops if math.isfinite(o.am.robust.rho) and math.isfinite(o.am.clean.rho)]
    if not stats.separable or follows:
        collinear = "" if stats.separable else f" (|rho| above {COLLINEAR_LIMIT:g})"
        return (
            "These models cannot separate AM's link to robustness from its link to clean accuracy: "
            f"{across}{collinear}; AM follows clean accuracy at least as closely in {len(follows)} of "
            f"{len(defined)} ops."
        )
    if not defined:
        return f"Clean accuracy as a confound: cannot tell; {across}."
    return f"In all {len(defined)} ops AM follows robust accuracy more closely than clean accuracy; {across}."


def _variant_line(stats: StudyStatistics) -> str | None:
    names = [e.metric for e in stats.ops[0].effects[1:]] if stats.ops else []
    parts = []
    for i, name in enumerate(names, start=1):
        tested = [o.effects[i].robust for o in stats.ops if math.isfinite(o.effects[i].robust.p)]
        clear = [c for c in tested if c.clear]
        negative = sum(1 for c in clear if c.rho < 0)
        parts.append(f"{name} in {len(clear)} of {len(tested)} ops ({negative} negative)")
    if not parts:
        return None
    return "Scale-free variants, rho with robust accuracy clear after Holm: " + "; ".join(parts) + "."


def _image_line(stats: StudyStatistics) -> str | None:
    done = [o for o in stats.ops if o.images.interval is not None]
    if not done:
        return None
    excluding = [o for o in done if o.images.interval and o.images.interval.defined]
    negative = [o.op for o in excluding if o.images.interval and o.images.interval.high < 0]
    positive = [o.op for o in excluding if o.images.interval and o.images.interval.low > 0]
    shown = ", ".join(negative) if negative else "none"
    return (
        "With attack and measurement noise (paired image bootstrap), the interval of rho(AM, robust "
        f"accuracy) lies below 0 in {len(negative)} of {len(done)} ops ({shown}) and above 0 in "
        f"{len(positive)}; it is descriptive, not a test."
    )


def _dose_line(stats: StudyStatistics) -> str | None:
    doses = [o for o in stats.ops if o.am.dose.reason is None]
    if not doses:
        return None
    falls = [o.op for o in doses if o.am.dose.high < 0]
    rises = [o.op for o in doses if o.am.dose.low > 0]
    return (
        f"Dose-response (log AM against the training eps, {doses[0].am.dose.n} models): AM falls with eps, "
        f"its slope's {100 * stats.level:g}% interval below 0, in {len(falls)} of {len(doses)} ops"
        f"{' (' + ', '.join(falls) + ')' if falls else ''}; rises in {len(rises)}."
    )


def _within_line(o: OpStatistics) -> str:
    smaller = sum(1 for c in o.within if c.interval.defined and c.interval.high < 0)
    larger = sum(1 for c in o.within if c.interval.defined and c.interval.low > 0)
    return (
        f"Within models, images with more aliasing in {o.op} have smaller margins in {smaller} of "
        f"{len(o.within)} models (interval excludes 0), larger margins in {larger}."
    )


def answer_lines(stats: StudyStatistics) -> list[str]:
    """The answer in plain words: how many ops are clear after Holm, one line per op, the confound with
    clean accuracy, the scale-free variants, and, where the data allow, the image bootstrap, the dose
    response and the per-image evidence within models."""
    if not stats.ops:
        return ["No down-sampling op was measured on a finished model: there is nothing to test."]
    clear = [o for o in stats.ops if o.correlation.clear]
    negative = sum(1 for o in clear if o.correlation.rho < 0)
    apart = [o for o in clear if stats.separable and not o.am.follows_clean]
    head = (
        f"AM is clearly rank-correlated with robust accuracy (Holm-adjusted permutation p < {ALPHA:g}) in "
        f"{len(clear)} of {len(stats.ops)} ops: negatively in {negative}, positively in "
        f"{len(clear) - negative}"
    )
    if clear:
        head += f"; in {len(apart)} of them it can be told apart from clean accuracy"
    head += "." + (" Elsewhere we cannot tell." if len(clear) < len(stats.ops) else "")
    confound = _collinearity_line(stats)
    lines = [head] if stats.separable else [confound, head]  # a collinear design says so first
    lines += [correlation_line(o, stats.separable) for o in stats.ops]
    if stats.separable:
        lines.append(confound)
    matched = stats.matched.answer_line() if stats.matched is not None else None
    extra = [matched, _variant_line(stats), _image_line(stats), _dose_line(stats)]
    lines += [line for line in extra if line is not None]
    lines += [_within_line(o) for o in stats.ops if o.within]
    return lines + list(stats.cautions)


# ------------------------------------------------------------------------------------- computation
def _metric_value(o: OpResult, metric: str) -> float | None:
    return o.aliasing if metric == AM else o.variants.get(metric)


def _correlation(x: np.ndarray, y: np.ndarray, idx: np.ndarray, level: float, seed: int) -> Correlation:
    """rho(x, y) with its permutation test and its interval over the model resamples ``idx``."""
    stats = spearman(x[idx], y[idx])
    return Correlation(int(x.size), permutation_test(x, y, seed=seed), percentile_interval(stats, level))


def _partial(
    x: np.ndarray,
    robust: np.ndarray,
    clean: np.ndarray,
    rhos: dict[str, float],
    idx: np.ndarray,
    level: float,
) -> Partial:
    """The partial rho of x and robust accuracy controlling for clean accuracy, unless a correlation it is
    made of is undefined or +-1 (then clean accuracy's ranks fix one side and it means nothing)."""
    if x.size < 4:
        return Partial(math.nan, None, f"only {x.size} models, a partial correlation needs 4")
    for name, rho in rhos.items():
        if not math.isfinite(rho):
            return Partial(math.nan, None, f"{name} is undefined")
        if abs(abs(rho) - 1.0) <= ONE_TOLERANCE:
            return Partial(math.nan, None, f"{name} = {rho:+.0f}")
    stats = partial_spearman(x[idx], robust[idx], clean[idx])
    # the same rule in every resample: one of its correlations at +-1 makes the partial meaningless there
    parts = np.stack(
        [spearman(x[idx], robust[idx]), spearman(x[idx], clean[idx]), spearman(clean[idx], robust[idx])]
    )
    meaningless = ~np.isfinite(parts).all(axis=0) | (np.abs(np.abs(parts) - 1.0) <= ONE_TOLERANCE).any(axis=0)
    stats = np.where(meaningless, np.nan, stats)
    return Partial(float(partial_spearman(x, robust, clean)), percentile_interval(stats, level))


def _metric_effect(
    metric: str, present: list[tuple[ModelResult, OpResult]], idx: np.ndarray, level: float, seed: int
) -> MetricEffect:
    """One metric's statistics over ``present`` (the op's models), on the shared model resamples."""
    valued = [(m, v) for m, o in present if (v := _metric_value(o, metric)) is not None]
    attacked = [(m, v) for m, v in valued if m.robust_accuracy is not None and m.clean_accuracy is not None]
    values = np.array([v for _, v in attacked], dtype=np.float64)
    robust = np.array([m.robust_accuracy for m, _ in attacked], dtype=np.float64)
    clean = np.array([m.clean_accuracy for m, _ in attacked], dtype=np.float64)
    if idx.shape[1] != values.size:  # a variant some models lack: its own resamples, not paired with AM's
        rng = np.random.default_rng([seed, _MODELS_STREAM, zlib.crc32(metric.encode()), values.size])
        idx = resample_indices(rng, values.size, idx.shape[0])
    with_robust = _correlation(values, robust, idx, level, seed)
    with_clean = _correlation(values, clean, idx, level, seed)
    accuracies = float(spearman(clean, robust))
    label = "AM" if metric == AM else metric
    rhos = {
        f"rho({label}, robust accuracy)": with_robust.rho,
        f"rho({label}, clean accuracy)": with_clean.rho,
        "rho(clean, robust accuracy)": accuracies,
    }
    dosed = [(m.dose, v) for m, v in valued if m.dose is not None]
    return MetricEffect(
        metric=metric,
        robust=with_robust,
        clean=with_clean,
        partial=_partial(values, robust, clean, rhos, idx, level),
        dose=dose_slope(np.array([d for d, _ in dosed]), np.array([v for _, v in dosed]), level),
    )


def _image_bootstrap(
    op: str, attacked: list[ModelResult], indices: dict[int, np.ndarray], level: float
) -> ImageBootstrap:
    """The paired image bootstrap over ``attacked`` (the op's models with both accuracies)."""
    missing = [m.name for m in attacked if m.per_image is None or op not in m.per_image.aliasing]
    if not attacked or missing:
        return ImageBootstrap(
            len(attacked), 0, 0, None, f"no per-image data for {len(missing)} of {len(attacked)} models"
        )
    data = [m.per_image for m in attacked if m.per_image is not None]
    shapes = {(d.aliasing[op].shape[0], d.n_attacked) for d in data}
    if len(shapes) != 1:
        return ImageBootstrap(
            len(attacked), 0, 0, None, "the models were measured or attacked on different numbers of images"
        )
    ((n_measured, n_attacked),) = shapes
    if n_attacked == 0:
        return ImageBootstrap(len(attacked), n_measured, 0, None, "no image was attacked by the study")
    if len(attacked) < 3:
        return ImageBootstrap(len(attacked), n_measured, n_attacked, None, "fewer than 3 models")
    aliasing = np.stack([d.aliasing[op] for d in data])
    robust = np.stack([np.asarray(d.robust, dtype=np.float64) for d in data])
    rhos = image_bootstrap_spearman(aliasing, robust, indices[n_measured])
    return ImageBootstrap(len(attacked), n_measured, n_attacked, percentile_interval(rhos, level))


def within_model_spearman(
    aliasing: np.ndarray, margin: np.ndarray, clean: np.ndarray, indices: np.ndarray, level: float
) -> tuple[float, Interval]:
    """rho between per-image AM and margin over the attacked images classified correctly when clean
    (``clean`` flags; a NaN margin is left out), with the percentile interval over the resamples
    ``indices`` of those images."""
    m = np.asarray(margin, dtype=np.float64)
    keep = np.asarray(clean, dtype=bool) & np.isfinite(m)
    a = np.asarray(aliasing, dtype=np.float64)[: keep.size][keep]
    m = m[keep]
    stats = spearman(a[indices], m[indices]) if a.size else np.full(indices.shape[0], np.nan)
    return float(spearman(a, m)), percentile_interval(stats, level)


def within_model_correlations(
    results: StudyResults,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = DEFAULT_SEED,
) -> dict[str, tuple[ImageCorrelation, ...]]:
    """Per op, per finished model with per-image data for it: rho(AM, margin) over the model's attacked
    images classified correctly when clean. A model's image resamples are drawn once (seeded by the
    model's name, so other models do not change them) and shared by every op (paired across ops)."""
    out: dict[str, list[ImageCorrelation]] = {op: [] for op in results.op_names}
    for model in results.done_models:
        data = model.per_image
        if data is None or data.n_attacked == 0:
            continue
        k = int(np.count_nonzero(data.clean & np.isfinite(data.margin)))
        rng = np.random.default_rng([seed, _WITHIN_STREAM, zlib.crc32(model.name.encode())])
        indices = resample_indices(rng, k, n_resamples)
        for op in out:
            if op in data.aliasing:
                rho, ci = within_model_spearman(data.aliasing[op], data.margin, data.clean, indices, level)
                out[op].append(ImageCorrelation(model.name, model.robust, k, rho, ci))
    return {op: tuple(found) for op, found in out.items()}


def _op_statistics(
    i: int,
    op: str,
    models: list[ModelResult],
    metrics: list[str],
    images: dict[int, np.ndarray],
    within: tuple[ImageCorrelation, ...],
    n_resamples: int,
    level: float,
    seed: int,
) -> OpStatistics:
    """Every metric of one op, all on the same resamples of the models (paired)."""
    present = [(m, o) for m in models if (o := m.op(op)) is not None]
    attacked = [m for m, _ in present if m.robust_accuracy is not None and m.clean_accuracy is not None]
    idx = resample_indices(np.random.default_rng([seed, _MODELS_STREAM, i]), len(attacked), n_resamples)
    clean = np.array([m.clean_accuracy for m in attacked], dtype=np.float64)
    robust = np.array([m.robust_accuracy for m in attacked], dtype=np.float64)
    return OpStatistics(
        op=op,
        layer_group=op.split(".", 1)[0],
        effects=tuple(_metric_effect(metric, present, idx, level, seed) for metric in metrics),
        accuracies=_correlation(clean, robust, idx, level, seed),
        images=_image_bootstrap(op, attacked, images, level),
        within=within,
    )


def _with_holm(ops: list[OpStatistics]) -> list[OpStatistics]:
    """Each metric's p-values (with robust, with clean accuracy) Holm-adjusted over the ops."""
    n_metrics = len(ops[0].effects) if ops else 0
    adjusted = {
        (j, side): holm([getattr(o.effects[j], side).p for o in ops])
        for j in range(n_metrics)
        for side in ("robust", "clean")
    }
    out = []
    for k, o in enumerate(ops):
        effects = []
        for j, e in enumerate(o.effects):
            changes = {}
            for side in ("robust", "clean"):
                column = adjusted[(j, side)]
                c = getattr(e, side)
                changes[side] = replace(c, p_holm=float(column[k]), n_tests=int(np.isfinite(column).sum()))
            effects.append(replace(e, **changes))
        out.append(replace(o, effects=tuple(effects)))
    return out


def _image_indices(models: list[ModelResult], n_resamples: int, seed: int) -> dict[int, np.ndarray]:
    """One draw of measured-image indices per number of measured images, shared by every model and op."""
    sizes = sorted({d.aliasing[op].shape[0] for m in models if (d := m.per_image) for op in d.aliasing})
    return {
        n: resample_indices(np.random.default_rng([seed, _IMAGES_STREAM, n]), n, n_resamples) for n in sizes
    }


def shared_run_caution(models: list[ModelResult]) -> str | None:
    """A caution for a study whose models include several snapshots of one training run (None when no run
    gives more than one model): the tests treat them as independent models, which they are not quite."""
    runs: dict[str, int] = {}
    for m in models:
        if m.done and "run" in m.source:
            runs[str(m.source["run"])] = runs.get(str(m.source["run"]), 0) + 1
    if not any(count > 1 for count in runs.values()):
        return None
    n = sum(runs.values())
    listed = ", ".join(f"{run}: {count}" for run, count in runs.items())
    return (
        f"{n} of the {sum(1 for m in models if m.done)} models are snapshots of {len(runs)} training runs "
        f"({listed}): the permutation tests and the matched pairs treat every model as independent, which "
        "snapshots of one run are not, so their p-values are optimistic; more runs (seeds) of each kind of "
        "training would make them honest."
    )


def compute_statistics(
    results: StudyResults,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = DEFAULT_SEED,
) -> StudyStatistics:
    """Every statistic over the finished models (failed ones are left out), ops in forward order."""
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    models = results.done_models
    metrics = [AM, *results.variant_names]
    images = _image_indices(models, n_resamples, seed)
    within = within_model_correlations(results, n_resamples=n_resamples, level=level, seed=seed)
    ops = [
        _op_statistics(i, op, models, metrics, images, within[op], n_resamples, level, seed)
        for i, op in enumerate(results.op_names)
    ]
    attacked = [m for m in models if m.robust_accuracy is not None and m.clean_accuracy is not None]
    clean = np.array([m.clean_accuracy for m in attacked], dtype=np.float64)
    robust = np.array([m.robust_accuracy for m in attacked], dtype=np.float64)
    idx = resample_indices(np.random.default_rng([seed, _COLLINEAR_STREAM]), len(attacked), n_resamples)
    return StudyStatistics(
        ops=_with_holm(ops),
        collinearity=_correlation(clean, robust, idx, level, seed),
        n_resamples=n_resamples,
        level=level,
        seed=seed,
        cautions=(
            *(w for m in models for w in m.warnings),
            *(w for w in [family_warning(models), shared_run_caution(models)] if w is not None),
        ),
        matched=matched_pairs(models, results.op_names),
    )
