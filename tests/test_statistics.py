"""The report's statistics against plain-loop float64 references written here, and known answers."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest

from cnn_aliasing.report import load_results
from cnn_aliasing.report import statistics as st
from cnn_aliasing.report.results import ModelResult, OpResult, PerImageResult, StudyResults
from cnn_aliasing.report.statistics import (
    average_ranks,
    compute_statistics,
    dose_slope,
    holm,
    image_bootstrap_spearman,
    partial_spearman,
    percentile_interval,
    permutation_test,
    resample_indices,
    shared_run_caution,
    spearman,
    spearman_permutation_test,
    t_quantile,
    within_model_spearman,
)
from test_report_fixtures import MODELS, OPS, make_results

T = TypeVar("T")


# ---------------------------------------------------------------------------------- slow references
def ranks_reference(values: list[float]) -> list[float]:
    """Average ranks by explicit loops: sort positions, then give each run of ties its mean position."""
    n = len(values)
    order = sorted(range(n), key=lambda i: values[i])
    ranks = [0.0] * n
    start = 0
    while start < n:
        end = start
        while end + 1 < n and values[order[end + 1]] == values[order[start]]:
            end += 1
        mean_position = (start + 1 + end + 1) / 2.0
        for k in range(start, end + 1):
            ranks[order[k]] = mean_position
        start = end + 1
    return ranks


def pearson_reference(x: list[float], y: list[float]) -> float:
    n = len(x)
    mx = sum(x) / n
    my = sum(y) / n
    sxy = sxx = syy = 0.0
    for a, b in zip(x, y, strict=True):
        sxy += (a - mx) * (b - my)
        sxx += (a - mx) ** 2
        syy += (b - my) ** 2
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else math.nan


def spearman_reference(x: list[float], y: list[float]) -> float:
    return pearson_reference(ranks_reference(x), ranks_reference(y)) if len(x) >= 3 else math.nan


# ------------------------------------------------------------------------------------------- ranks
def test_average_ranks_match_the_loop_reference_with_ties() -> None:
    rng = np.random.default_rng(1)
    for n in (1, 2, 5, 17):
        values = rng.integers(0, 4, size=n).astype(float)  # many ties
        np.testing.assert_array_equal(average_ranks(values), ranks_reference(list(values)))
    np.testing.assert_array_equal(average_ranks(np.array([3.0, 1.0, 3.0, 2.0])), [3.5, 1.0, 3.5, 2.0])


def test_average_ranks_work_row_by_row() -> None:
    rows = np.array([[1.0, 1.0, 2.0], [5.0, 4.0, 3.0]])
    np.testing.assert_array_equal(average_ranks(rows), [[1.5, 1.5, 3.0], [3.0, 2.0, 1.0]])


# ----------------------------------------------------------------------------------------- spearman
def test_spearman_known_answers() -> None:
    x = np.array([0.1, 0.5, 2.0, 7.0, 9.0])
    assert spearman(x, x**3) == pytest.approx(1.0, abs=1e-15)
    assert spearman(x, -np.exp(x)) == pytest.approx(-1.0, abs=1e-15)
    # by hand: ranks x = (1, 2.5, 2.5, 4), y = (1, 3, 2, 4): sum dx dy = 4.5, sum dx^2 = 4.5, sum dy^2 = 5
    assert spearman(np.array([1.0, 2, 2, 3]), np.array([1.0, 3, 2, 4])) == pytest.approx(
        4.5 / math.sqrt(4.5 * 5.0), abs=1e-15
    )


def test_spearman_matches_the_loop_reference() -> None:
    rng = np.random.default_rng(2)
    for n in (3, 4, 9, 30):
        x = rng.integers(0, 5, size=n).astype(float)
        y = x + rng.normal(size=n).round(0)
        expected = spearman_reference(list(x), list(y))
        got = float(spearman(x, y))
        if math.isnan(expected):
            assert math.isnan(got)
        else:
            assert got == pytest.approx(expected, abs=1e-12)


def test_spearman_is_nan_when_undefined() -> None:
    assert math.isnan(spearman(np.array([1.0, 2.0]), np.array([2.0, 1.0])))  # n < 3
    assert math.isnan(spearman(np.array([1.0, 1.0, 1.0]), np.array([1.0, 2.0, 3.0])))  # constant x
    assert math.isnan(spearman(np.array([1.0, 2.0, 3.0]), np.array([4.0, 4.0, 4.0])))  # constant y


# ----------------------------------------------------------------------------------- permutation test
def permutation_p_reference(x: list[float], y: list[float]) -> float:
    """Every ordering of y's values (itertools.permutations, ties kept as they are), each ordering's rho by
    the loop reference, and the share whose |rho| is at least the observed one (float tolerance)."""
    observed = abs(spearman_reference(x, y))
    orderings = list(itertools.permutations(y))
    hits = sum(1 for o in orderings if abs(spearman_reference(x, list(o))) >= observed - 1e-12)
    return hits / len(orderings)


def test_permutation_p_matches_the_loop_reference_with_ties() -> None:
    rng = np.random.default_rng(7)
    for n in (3, 4, 5, 6, 7):
        for _ in range(3):
            x = rng.integers(0, 3, size=n).astype(float)  # ties on both sides
            y = rng.integers(0, 4, size=n).astype(float)
            expected = spearman_reference(list(x), list(y))
            rho, p = spearman_permutation_test(x, y)
            if math.isnan(expected):
                assert math.isnan(rho) and math.isnan(p)
                continue
            assert rho == pytest.approx(expected, abs=1e-12)
            assert p == pytest.approx(permutation_p_reference(list(x), list(y)), abs=1e-12)


def test_permutation_p_known_answers() -> None:
    x = np.arange(6.0)
    rho, p = spearman_permutation_test(x, -(x**2))
    assert rho == pytest.approx(-1.0) and p == pytest.approx(2 / 720)  # the ordering and its reverse
    # ties: x = (1, 2, 2, 3), y = (1, 2, 3, 4); rho = 4.5 / sqrt(4.5 * 5) = 0.9487; of the 24 orderings of
    # y the 4 that keep the ends in place or swap both (y_1 < all, y_4 > all, or reversed) reach it
    rho, p = spearman_permutation_test(np.array([1.0, 2, 2, 3]), np.array([1.0, 2, 3, 4]))
    assert rho == pytest.approx(4.5 / math.sqrt(22.5)) and p == pytest.approx(4 / 24)
    test = permutation_test(x, -x)
    assert test.exact and test.n_orderings == 720 and test.mc_se == 0.0


def test_permutation_test_is_nan_when_rho_is_undefined() -> None:
    for x, y in (([1.0, 2.0], [2.0, 1.0]), ([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0])):
        rho, p = spearman_permutation_test(np.array(x), np.array(y))
        assert math.isnan(rho) and math.isnan(p)


def test_monte_carlo_counts_the_observed_ordering_and_reports_its_error() -> None:
    rng = np.random.default_rng(8)
    x = rng.normal(size=8)
    y = -x + rng.normal(size=8)
    exact = permutation_test(x, y)
    mc = permutation_test(x, y, n_resamples=20_000, seed=3)
    assert exact.exact and not mc.exact and mc.n_orderings == 20_000
    assert mc.rho == exact.rho and abs(mc.p - exact.p) < 4 * mc.mc_se + 1e-4
    assert mc.mc_se == pytest.approx(math.sqrt(mc.p * (1 - mc.p) / 20_000))
    assert permutation_test(x, y, n_resamples=20_000, seed=3) == mc  # seeded
    hits = round(mc.p * 20_001) - 1  # p = (1 + hits) / (1 + B)
    assert mc.p == pytest.approx((1 + hits) / 20_001, abs=1e-15)
    n9 = permutation_test(np.arange(9.0), -np.arange(9.0))  # above 8 models: Monte Carlo by default
    assert not n9.exact and n9.n_orderings == st.MC_ORDERINGS and 1 / (1 + st.MC_ORDERINGS) <= n9.p < 1e-3
    with pytest.raises(ValueError, match="n_resamples"):
        permutation_test(x, y, n_resamples=0)


# ---------------------------------------------------------------------------------------------- holm
def holm_reference(pvalues: list[float]) -> list[float]:
    """Holm by a plain loop over the finite p-values sorted ascending: (m - i) p, running maximum, cap 1."""
    finite = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    m = len(finite)
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(finite):
        running = max(running, (m - rank) * p)
        out[i] = min(running, 1.0)
    return out


def test_holm_matches_the_loop_reference() -> None:
    rng = np.random.default_rng(9)
    for m in (1, 2, 5, 12):
        p = rng.uniform(0, 0.3, size=m)
        p[rng.integers(0, m)] = p[0]  # a tie
        np.testing.assert_allclose(holm(p), holm_reference(list(p)), atol=1e-15)
    with_nan = [0.01, math.nan, 0.04, 0.03]
    np.testing.assert_allclose(holm(with_nan), holm_reference(with_nan), atol=1e-15)
    assert holm(with_nan)[0] == pytest.approx(0.03)  # m = 3: the NaN is not counted


def test_holm_known_answer_of_the_issue() -> None:
    p = [0.003, 0.033, 0.017, 0.017, 0.42, 0.10]
    adjusted = holm(p)
    np.testing.assert_allclose(adjusted, [0.018, 0.099, 0.085, 0.085, 0.42, 0.2], atol=1e-12)
    assert int(np.sum(adjusted < 0.05)) == 1
    assert holm([0.5, 0.9])[0] == pytest.approx(1.0) and holm([])[:].size == 0  # capped at 1


# ------------------------------------------------------------------------------------ intervals
def test_an_interval_needs_its_statistic_in_95_percent_of_the_resamples() -> None:
    rng = np.random.default_rng(10)
    values = rng.normal(size=1000)
    mostly_undefined = values.copy()
    mostly_undefined[:900] = np.nan
    ci = percentile_interval(mostly_undefined, 0.95)
    assert not ci.defined and (ci.undefined, ci.n_resamples) == (900, 1000)
    assert ci.text() == "(interval undefined in 900 of 1000 resamples)"
    assert ci.to_dict() == {
        "low": None,
        "high": None,
        "level": 0.95,
        "defined": False,
        "undefined": 900,
        "n_resamples": 1000,
    }
    six = values.copy()
    six[:60] = np.nan
    assert not percentile_interval(six, 0.95).defined  # 94 % defined
    five = values.copy()
    five[:50] = np.nan
    ci = percentile_interval(five, 0.95)  # exactly 95 % defined
    assert ci.defined and ci.undefined == 50
    assert (ci.low, ci.high) == pytest.approx(tuple(np.quantile(values[50:], [0.025, 0.975])), abs=1e-14)


def test_bootstrap_by_hand_with_a_fixed_index_matrix() -> None:
    x = np.array([1.0, 2.0, 3.0, 4.0])
    y = np.array([2.0, 1.0, 4.0, 3.0])
    indices = np.array([[0, 1, 2, 3], [0, 0, 2, 3]])
    # resample 1: ranks (1,2,3,4) and (2,1,4,3): 3 / sqrt(5 * 5) = 0.6
    # resample 2: x (1,1,3,4) -> (1.5,1.5,3,4), y (2,2,4,3) -> (1.5,1.5,4,3): 3.5 / sqrt(4.5 * 4.5)
    stats = spearman(x[indices], y[indices])
    np.testing.assert_allclose(stats, [0.6, 3.5 / 4.5], atol=1e-15)
    ci = percentile_interval(stats, 0.5)  # quantiles 0.25 and 0.75, interpolated linearly
    assert ci.low == pytest.approx(0.6 + 0.25 * (3.5 / 4.5 - 0.6))
    assert ci.high == pytest.approx(0.6 + 0.75 * (3.5 / 4.5 - 0.6))


def test_resample_indices_are_seeded_and_in_range() -> None:
    a = resample_indices(np.random.default_rng(5), 7, 100)
    np.testing.assert_array_equal(a, resample_indices(np.random.default_rng(5), 7, 100))
    assert a.shape == (100, 7) and a.min() >= 0 and a.max() <= 6 and len(np.unique(a)) == 7
    assert resample_indices(np.random.default_rng(5), 0, 3).shape == (3, 0)


# ---------------------------------------------------------------------------- paired image bootstrap
def image_bootstrap_reference(aliasing: np.ndarray, robust: np.ndarray, indices: np.ndarray) -> list[float]:
    """Per resample, per model by plain loops over the drawn images (the same for every model): AM the
    mean of per-image AM, robust accuracy the mean of the flags of drawn images below n_attacked."""
    n_models, n_attacked = robust.shape
    out = []
    for row in indices:
        ams, accs = [], []
        for m in range(n_models):
            ams.append(sum(float(aliasing[m, j]) for j in row) / len(row))
            attacked = [float(robust[m, j]) for j in row if j < n_attacked]
            accs.append(sum(attacked) / len(attacked) if attacked else math.nan)
        out.append(spearman_reference(ams, accs) if not any(map(math.isnan, accs)) else math.nan)
    return out


def test_image_bootstrap_matches_the_loop_reference() -> None:
    rng = np.random.default_rng(11)
    n_models, n_measured, n_attacked = 5, 12, 7
    aliasing = rng.gamma(2.0, size=(n_models, n_measured))
    robust = rng.random((n_models, n_attacked)) < 0.5
    indices = resample_indices(rng, n_measured, 200)
    got = image_bootstrap_spearman(aliasing, robust, indices)
    expected = image_bootstrap_reference(aliasing, robust, indices)
    np.testing.assert_allclose(got, expected, atol=1e-12)
    assert np.isfinite(got).sum() > 150  # numbers are compared, not NaNs


# -------------------------------------------------------------------------------- within models
def test_within_model_rho_matches_the_loop_reference() -> None:
    rng = np.random.default_rng(12)
    n_measured, n_attacked = 40, 25
    aliasing = rng.gamma(2.0, size=n_measured)
    margin = -aliasing[:n_attacked] + rng.normal(size=n_attacked)
    clean = rng.random(n_attacked) < 0.7
    kept = [i for i in range(n_attacked) if clean[i]]
    indices = resample_indices(rng, len(kept), 300)
    rho, ci = within_model_spearman(aliasing, margin, clean, indices, 0.9)
    a = [float(aliasing[i]) for i in kept]  # only attacked images, only the clean-correct ones
    m = [float(margin[i]) for i in kept]
    assert rho == pytest.approx(spearman_reference(a, m), abs=1e-12) and rho < 0
    stats = [spearman_reference([a[j] for j in row], [m[j] for j in row]) for row in indices]
    assert (ci.low, ci.high) == pytest.approx(tuple(np.quantile(stats, [0.05, 0.95])), abs=1e-12)


# ---------------------------------------------------------------------------------- dose-response
def test_t_quantiles_match_the_table() -> None:
    for df, q975 in ((1, 12.7062), (2, 4.3027), (4, 2.7764), (10, 2.2281), (30, 2.0423)):
        assert t_quantile(0.975, df) == pytest.approx(q975, abs=1e-4)
    assert t_quantile(0.95, 3) == pytest.approx(2.3534, abs=1e-4)


def test_dose_slope_matches_hand_computed_ols() -> None:
    dose = [0.0, 0.0, 2 / 255, 4 / 255, 8 / 255, 8 / 255]
    am = [2.5, 2.7, 1.9, 1.7, 1.5, 1.6]
    n = len(dose)
    y = [math.log(v) for v in am]
    mx, my = sum(dose) / n, sum(y) / n
    sxx = sum((d - mx) ** 2 for d in dose)
    slope = sum((d - mx) * (v - my) for d, v in zip(dose, y, strict=True)) / sxx
    rss = sum((v - my - slope * (d - mx)) ** 2 for d, v in zip(dose, y, strict=True))
    se = math.sqrt(rss / (n - 2) / sxx)
    got = dose_slope(np.array(dose), np.array(am))
    assert got.reason is None and (got.n, got.n_doses) == (6, 4)
    assert got.slope == pytest.approx(slope, rel=1e-12) and got.se == pytest.approx(se, rel=1e-12)
    assert got.low == pytest.approx(slope - 2.776445 * se, rel=1e-5)  # t(0.975, df=4)
    assert got.high == pytest.approx(slope + 2.776445 * se, rel=1e-5) and got.high < 0


def test_dose_slope_is_absent_without_a_dose_design() -> None:
    assert "no dose" in (dose_slope(np.array([0.0, 0.0, 1.0, 1.0]), np.ones(4)).reason or "")  # 2 doses
    assert "no dose" in (dose_slope(np.array([0.0, 1.0, 2.0]), np.ones(3)).reason or "")  # 3 models
    assert "no logarithm" in (
        dose_slope(np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.0, 0, 1, 1])).reason or ""
    )


# ------------------------------------------------------------------------ partial rank correlation
def partial_reference(x: list[float], y: list[float], z: list[float]) -> float:
    """Partial rank correlation by regression: the ranks of x and of y, each with its least-squares line
    on the ranks of z taken away (plain loops, float64), then the Pearson correlation of the residuals."""
    rx, ry, rz = ranks_reference(x), ranks_reference(y), ranks_reference(z)
    n = len(rz)
    mean_z = sum(rz) / n
    var_z = sum((v - mean_z) ** 2 for v in rz)

    def residuals(r: list[float]) -> list[float]:
        mean_r = sum(r) / n
        slope = sum((rz[i] - mean_z) * (r[i] - mean_r) for i in range(n)) / var_z
        return [r[i] - mean_r - slope * (rz[i] - mean_z) for i in range(n)]

    return pearson_reference(residuals(rx), residuals(ry))


def test_partial_spearman_matches_the_regression_reference() -> None:
    rng = np.random.default_rng(5)
    finite = 0
    for n in (4, 6, 11):
        for _ in range(20):
            x, y, z = rng.normal(size=n), rng.normal(size=n), rng.normal(size=n)
            x[1] = x[0]  # a tie
            expected = partial_reference(list(x), list(y), list(z))
            assert partial_spearman(x, y, z) == pytest.approx(expected, abs=1e-12, nan_ok=True)
            finite += math.isfinite(expected)
    assert finite >= 55  # the comparison is of numbers, not of NaNs


def test_partial_spearman_known_answers() -> None:
    z = np.arange(8.0)
    y = -z + np.array([0.1, -0.1, 0.2, -0.2, 0.1, -0.1, 0.2, -0.2])  # almost all of y's rank order is z's
    x = z**2  # x is monotone in z: once z is controlled for, nothing is left to correlate
    assert spearman(x, y) < -0.9
    assert math.isnan(partial_spearman(x, y, z))  # x's ranks are z's: undefined, not a spurious number
    assert math.isnan(partial_spearman(x[:3], y[:3], z[:3]))  # fewer than 4 values
    independent = np.array([3.0, 1.0, 4.0, 1.5, 5.0, 9.0, 2.0, 6.0])
    assert partial_spearman(independent, independent, z) == pytest.approx(1.0)


def test_partial_bootstrap_by_hand_with_a_fixed_index_matrix() -> None:
    x = np.array([1.0, 3.0, 2.0, 5.0, 4.0, 6.0])
    y = np.array([0.9, 0.2, 0.5, 0.1, 0.4, 0.0])
    z = np.array([0.5, 0.1, 0.7, 0.3, 0.2, 0.6])
    idx = np.array([[0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0], [0, 0, 1, 2, 3, 4]])
    by_row = partial_spearman(x[idx], y[idx], z[idx])
    for row, value in zip(idx, by_row, strict=True):
        assert value == pytest.approx(partial_reference(list(x[row]), list(y[row]), list(z[row])), abs=1e-12)


# -------------------------------------------------------------------------------------- on a study
def _model(
    name: str, robust: bool, clean: float, acc: float, ams: dict[str, float], **extra: object
) -> ModelResult:
    ops = [
        OpResult(op, "conv", (2, 2), am, am / 2, 100, {"relative_aliasing": am / 10})
        for op, am in ams.items()
    ]
    return ModelResult(
        name=name,
        file=f"models/{name}.json",
        status="done",
        error=None,
        robust=robust,
        arch="a",
        tags=[],
        source={},
        clean_accuracy=clean,
        robust_accuracy=acc,
        ops=ops,
        **extra,  # type: ignore[arg-type]
    )


def present(values: Iterable[T | None]) -> list[T]:
    """The values, failing the test where one is missing (every model of the fixture has them all)."""
    found = list(values)
    assert all(v is not None for v in found)
    return [v for v in found if v is not None]


def _study(models: list[ModelResult], tmp_path: Path) -> StudyResults:
    return StudyResults(tmp_path, "s", {}, None, {}, None, models, [])


def _per_image(rng: np.random.Generator, ops: list[str], n_measured: int, n_attacked: int) -> PerImageResult:
    aliasing = {op: rng.gamma(2.0, size=n_measured) for op in ops}
    margin = -aliasing[ops[0]][:n_attacked] + rng.normal(size=n_attacked)
    return PerImageResult(aliasing, rng.random(n_attacked) < 0.8, rng.random(n_attacked) < 0.4, margin)


@pytest.fixture()
def dosed_study(tmp_path: Path) -> StudyResults:
    """Six models with doses and per-image results; clean accuracy is not robust accuracy's mirror."""
    rng = np.random.default_rng(13)
    spec = [  # robust, clean, robust accuracy, dose, AM scale
        (False, 0.43, 0.036, 0.0, 2.5),
        (False, 0.40, 0.028, 0.0, 2.7),
        (True, 0.41, 0.148, 2 / 255, 1.9),
        (True, 0.36, 0.156, 4 / 255, 1.7),
        (True, 0.38, 0.188, 8 / 255, 1.6),
        (True, 0.33, 0.176, 8 / 255, 1.5),
    ]
    models = [
        _model(
            f"m{i}",
            r,
            c,
            a,
            {op: s * (1 + j) for j, op in enumerate(OPS)},
            dose=d,
            per_image=_per_image(rng, OPS, 30, 20),
        )
        for i, (r, c, a, d, s) in enumerate(spec)
    ]
    return _study(models, tmp_path)


def test_compute_statistics_on_a_dosed_study_with_per_image_results(dosed_study: StudyResults) -> None:
    stats = compute_statistics(dosed_study, n_resamples=400, seed=2)
    models = dosed_study.done_models
    first = stats.ops[0]
    robust = present(m.robust_accuracy for m in models)
    clean = present(m.clean_accuracy for m in models)
    am = [op.aliasing for op in present(m.op(OPS[0]) for m in models)]
    per_image = present(m.per_image for m in models)
    assert first.correlation.rho == pytest.approx(spearman_reference(am, robust), abs=1e-12)
    assert first.correlation.p == pytest.approx(permutation_p_reference(am, robust), abs=1e-12)
    assert first.am.clean.p == pytest.approx(permutation_p_reference(am, clean), abs=1e-12)
    assert first.am.partial.rho == pytest.approx(partial_reference(am, robust, clean), abs=1e-12)
    ps = [o.correlation.p for o in stats.ops]
    assert [o.correlation.p_holm for o in stats.ops] == pytest.approx(holm_reference(ps), abs=1e-15)
    assert all(o.correlation.clear == (o.correlation.p_holm < 0.05) for o in stats.ops)
    assert first.am.dose.slope == pytest.approx(
        dose_slope(np.array([m.dose for m in models]), np.array(am)).slope
    )
    # the paired image bootstrap: the same drawn images for every model, checked by the loop reference
    indices = st._image_indices(models, 400, 2)[30]
    aliasing = np.stack([p.aliasing[OPS[0]] for p in per_image])
    flags = np.stack([p.robust for p in per_image])
    expected = percentile_interval(np.array(image_bootstrap_reference(aliasing, flags, indices)), 0.95)
    got = first.images.interval
    assert got is not None
    assert expected.defined and (got.low, got.high) == pytest.approx((expected.low, expected.high), abs=1e-12)
    assert got.undefined == expected.undefined
    assert (first.images.n_models, first.images.n_measured, first.images.n_attacked) == (6, 30, 20)
    assert [c.model for c in first.within] == [m.name for m in models]
    assert first.within[0].n_images == int(per_image[0].clean.sum())
    data = json.loads(json.dumps(stats.to_dict(), allow_nan=False))  # JSON-ready: NaN is None
    op0 = data["ops"][0]
    assert op0["metrics"][0]["robust"]["p_holm"] == pytest.approx(first.correlation.p_holm)
    assert set(op0["image_bootstrap"]["interval"]) == {
        "low",
        "high",
        "level",
        "defined",
        "undefined",
        "n_resamples",
    }
    assert len(op0["per_image"]) == 6 and op0["metrics"][0]["dose"]["reason"] is None
    answer = "\n".join(stats.answer)
    assert "paired image bootstrap" in answer and "Dose-response" in answer
    assert f"Within models, images with more aliasing in {OPS[0]} have smaller margins in" in answer


def test_without_per_image_data_or_doses_those_statistics_are_absent(dosed_study: StudyResults) -> None:
    models = dosed_study.done_models
    models[0].per_image = None
    models[1].dose = None
    models[2].dose = None
    models[3].dose = None
    stats = compute_statistics(dosed_study, n_resamples=50)
    first = stats.ops[0]
    assert first.images.interval is None
    assert "no per-image data for 1 of 6 models" in (first.images.reason or "")
    assert "the design has no dose" in (first.am.dose.reason or "")
    assert len(first.within) == 5
    answer = "\n".join(stats.answer)
    assert "image bootstrap" not in answer and "Dose-response" not in answer
    models[0].per_image = _per_image(np.random.default_rng(0), OPS, 31, 20)
    assert "different numbers of images" in (
        compute_statistics(dosed_study, n_resamples=50).ops[0].images.reason or ""
    )


def test_no_partial_correlation_where_a_correlation_is_one(tmp_path: Path) -> None:
    accs = [0.1, 0.2, 0.3, 0.4, 0.5]
    models = [
        _model(f"m{i}", i > 1, 0.9 - a, a, {"op": 5.0 - 2 * a + (i % 2) * 0.3}) for i, a in enumerate(accs)
    ]
    stats = compute_statistics(_study(models, tmp_path), n_resamples=50)
    partial = stats.ops[0].am.partial
    assert math.isnan(partial.rho) and partial.interval is None
    assert partial.reason == "rho(clean, robust accuracy) = -1"
    assert "no partial correlation (rho(clean, robust accuracy) = -1)" in stats.ops[0].confound_verdict
    assert stats.collinearity.rho == pytest.approx(-1.0) and stats.collinearity.p == pytest.approx(2 / 120)


def test_am_that_follows_clean_accuracy_as_closely_cannot_be_separated(tmp_path: Path) -> None:
    # clean accuracy ranks the models exactly as AM does; robust accuracy nearly the opposite
    rows = [(0.30, 0.20, 1.0), (0.35, 0.12, 2.0), (0.40, 0.15, 3.0), (0.45, 0.05, 4.0), (0.50, 0.02, 5.0)]
    models = [_model(f"m{i}", i < 2, c, a, {"op": am}) for i, (c, a, am) in enumerate(rows)]
    stats = compute_statistics(_study(models, tmp_path), n_resamples=50)
    o = stats.ops[0]
    assert o.am.follows_clean and abs(o.am.clean.rho) >= abs(o.am.robust.rho)
    assert "AM follows clean accuracy at least as closely as robustness" in o.confound_verdict
    assert any(
        line.startswith("These models cannot separate AM's link to robustness") for line in stats.answer
    )


def test_clear_means_a_holm_p_below_005(tmp_path: Path) -> None:
    n = 8
    accs = [0.05 * i for i in range(n)]
    ops = {"a.0": 1.0, "b.0": 1.0}
    models = [
        _model(f"m{i}", i > 3, 0.5 + 0.01 * ((i * 3) % n), a, {op: (n - i) * s for op, s in ops.items()})
        for i, a in enumerate(accs)
    ]
    stats = compute_statistics(_study(models, tmp_path), n_resamples=50)
    c = stats.ops[0].correlation
    assert (
        c.rho == pytest.approx(-1.0)
        and c.p == pytest.approx(2 / 40320)
        and c.p_holm == pytest.approx(4 / 40320)
    )
    assert c.clear and c.n_tests == 2
    assert stats.separable and abs(stats.collinearity.rho) <= 0.5
    assert stats.answer[0].startswith("AM is clearly rank-correlated with robust accuracy")
    assert (
        "in 2 of 2 ops: negatively in 2, positively in 0; in 2 of them it can be told apart"
        in stats.answer[0]
    )
    assert stats.answer[1].endswith("clear after correcting for 2 ops.")


def test_a_clear_correlation_in_a_collinear_design_is_not_called_separable(tmp_path: Path) -> None:
    # robust accuracy falls as clean accuracy rises (rho = -1): every clear verdict is qualified
    n = 8
    models = [
        _model(f"m{i}", i > 3, 0.9 - 0.05 * i, 0.05 * i, {"a.0": float(n - i), "b.0": float(n - i)})
        for i in range(n)
    ]
    stats = compute_statistics(_study(models, tmp_path), n_resamples=50)
    assert not stats.separable and stats.collinearity.rho == pytest.approx(-1.0)
    assert stats.ops[0].correlation.clear
    assert stats.answer[0].startswith("These models cannot separate AM's link to robustness")
    assert (
        "in 2 of 2 ops: negatively in 2, positively in 0; in 0 of them it can be told apart"
        in stats.answer[1]
    )
    assert stats.answer[2].endswith(
        "clear after correcting for 2 ops, but these models cannot separate robust from clean accuracy."
    )


def test_statistics_on_the_fixture_study(tmp_path: Path) -> None:
    results = load_results(make_results(tmp_path))
    stats = compute_statistics(results, n_resamples=300, seed=1)
    assert [o.op for o in stats.ops][:3] == OPS
    first = stats.ops[0]
    scale = [s for _, _, s in MODELS.values()]
    accs = [a for _, a, _ in MODELS.values()]
    assert first.correlation.n == len(MODELS)  # the failed model and the unattacked one are left out
    assert first.correlation.rho == pytest.approx(spearman_reference(scale, accs), abs=1e-12)
    assert first.correlation.p == pytest.approx(permutation_p_reference(scale, accs), abs=1e-12)
    assert first.correlation.n_tests == 3  # the wrn ops have no attacked model: not counted
    assert [e.metric for e in first.effects] == ["aliasing", *results.variant_names]
    assert first.images.interval is not None and len(first.within) == 6  # the fixture has per-image data
    assert first.am.dose.reason is None and first.am.dose.n == 6  # and doses 0, 2/255, 4/255, 8/255
    assert compute_statistics(results, n_resamples=300, seed=1).to_dict() == stats.to_dict()  # seeded
    assert not stats.separable  # rho(clean, robust) = -0.88: the answer says so first
    assert stats.answer[0].startswith("These models cannot separate AM's link to robustness")
    assert "(|rho| above 0.5)" in stats.answer[0]
    assert stats.answer[1].startswith("AM is clearly rank-correlated with robust accuracy")
    line = stats.answer[2]
    assert line.startswith(
        f"{OPS[0]}: AM falls as robust accuracy rises (rho = -0.94, exact p = 0.017, Holm p = 0.05"
    )
    assert line.endswith("not clear after correcting for 3 ops.")
    wrn = stats.ops[3]
    assert wrn.correlation.n == 0 and math.isnan(wrn.correlation.p_holm) and "cannot tell" in stats.answer[5]
    with pytest.raises(ValueError, match="n_resamples"):
        compute_statistics(results, n_resamples=0)
    with pytest.raises(ValueError, match="level"):
        compute_statistics(results, level=1.0)


def test_snapshots_of_one_run_are_named_as_a_caution(tmp_path: Path) -> None:
    models = [_model(f"m{i}", i > 2, 0.3 + 0.01 * i, 0.1 * (i % 3), {"op": float(i)}) for i in range(6)]
    assert shared_run_caution(models) is None  # no snapshots
    for i, m in enumerate(models):
        m.source = {"type": "recipe", "run": "a" if i < 4 else "b"}
    text = shared_run_caution(models)
    assert text is not None and text.startswith(
        "6 of the 6 models are snapshots of 2 training runs (a: 4, b: 2)"
    )
    assert compute_statistics(_study(models, tmp_path), n_resamples=20).answer[-1] == text
    for i, m in enumerate(models):
        m.source = {"type": "recipe", "run": f"run{i}"}
    assert shared_run_caution(models) is None  # one model per run
