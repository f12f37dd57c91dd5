"""The report's statistics against plain-loop float64 references written here, and known answers."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cnn_aliasing.report import load_results
from cnn_aliasing.report.statistics import (
    Correlation,
    Interval,
    MetricEffect,
    Ratio,
    average_ranks,
    bootstrap_ratio,
    bootstrap_spearman,
    compute_statistics,
    confound_verdict,
    correlation_verdict,
    mean_ratio,
    overall_verdict,
    partial_spearman,
    percentile_interval,
    ratio_verdict,
    resample_indices,
    spearman,
)
from test_report_fixtures import MODELS, OPS, make_results, model_file, write


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


def test_mean_ratio_and_its_undefined_cases() -> None:
    assert mean_ratio(np.array([1.0, 3.0]), np.array([2.0, 6.0])) == pytest.approx(0.5)
    assert math.isnan(mean_ratio(np.array([1.0]), np.array([0.0, 0.0])))
    assert math.isnan(mean_ratio(np.array([]), np.array([1.0])))
    assert math.isnan(mean_ratio(np.array([1.0]), np.array([])))


# ---------------------------------------------------------------------------------------- bootstrap
def test_bootstrap_by_hand_with_a_fixed_index_matrix() -> None:
    x = np.array([1.0, 2.0, 3.0, 4.0])
    y = np.array([2.0, 1.0, 4.0, 3.0])
    indices = np.array([[0, 1, 2, 3], [0, 0, 2, 3]])
    # resample 1: ranks (1,2,3,4) and (2,1,4,3): 3 / sqrt(5 * 5) = 0.6
    # resample 2: x (1,1,3,4) -> (1.5,1.5,3,4), y (2,2,4,3) -> (1.5,1.5,4,3): 3.5 / sqrt(4.5 * 4.5)
    stats = bootstrap_spearman(x, y, indices)
    np.testing.assert_allclose(stats, [0.6, 3.5 / 4.5], atol=1e-15)
    ci = percentile_interval(stats, 0.5)  # quantiles 0.25 and 0.75, interpolated linearly
    assert ci.low == pytest.approx(0.6 + 0.25 * (3.5 / 4.5 - 0.6))
    assert ci.high == pytest.approx(0.6 + 0.75 * (3.5 / 4.5 - 0.6))
    assert (ci.n_resamples, ci.degenerate) == (2, 0)

    ratios = bootstrap_ratio(
        np.array([1.0, 3.0]), np.array([2.0, 6.0]), np.array([[0, 1], [1, 1]]), np.array([[0, 0], [0, 1]])
    )
    np.testing.assert_allclose(ratios, [2.0 / 2.0, 3.0 / 4.0])


def test_degenerate_resamples_are_counted_and_left_out() -> None:
    x = np.array([1.0, 2.0, 3.0])
    indices = np.array([[0, 0, 0], [0, 1, 2], [2, 2, 2]])  # two constant resamples
    stats = bootstrap_spearman(x, -x, indices)
    assert np.isnan(stats[[0, 2]]).all() and stats[1] == pytest.approx(-1.0)
    ci = percentile_interval(stats, 0.95)
    assert (ci.low, ci.high, ci.degenerate) == (pytest.approx(-1.0), pytest.approx(-1.0), 2)
    empty = percentile_interval(np.array([np.nan, np.nan]), 0.95)
    assert not empty.defined and empty.degenerate == 2 and not empty.contains(0.0)


def test_resample_indices_are_seeded_and_in_range() -> None:
    a = resample_indices(np.random.default_rng(5), 7, 100)
    b = resample_indices(np.random.default_rng(5), 7, 100)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (100, 7) and a.min() >= 0 and a.max() <= 6 and len(np.unique(a)) == 7
    assert resample_indices(np.random.default_rng(5), 0, 3).shape == (3, 0)


def test_interval_contains_the_estimate_for_typical_data() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=25)
    y = -x + 0.7 * rng.normal(size=25)
    rho = float(spearman(x, y))
    ci = percentile_interval(bootstrap_spearman(x, y, resample_indices(rng, 25, 2000)), 0.95)
    assert ci.low < rho < ci.high < 0
    assert ci.high - ci.low < 0.6


# ---------------------------------------------------------------------------------------- verdicts
def _interval(low: float, high: float) -> Interval:
    return Interval(low, high, 0.95, 1000, 0)


def test_correlation_verdicts_state_direction_and_weakness() -> None:
    strong = Correlation(8, -0.8, _interval(-0.95, -0.4))
    assert not strong.weak
    assert correlation_verdict(strong).startswith("negative (rho = -0.80)")
    assert "excludes 0" in correlation_verdict(strong)
    few = Correlation(4, -0.8, _interval(-1.0, -0.2))
    assert few.weak and "weak evidence (only 4 models)" in correlation_verdict(few)
    wide = Correlation(9, 0.3, _interval(-0.4, 0.8))
    text = correlation_verdict(wide)
    assert wide.weak and "the interval includes 0" in text and "against the hypothesis" in text
    assert "not enough models" in correlation_verdict(Correlation(2, math.nan, _interval(math.nan, math.nan)))
    assert "the same for all 4" in correlation_verdict(
        Correlation(4, math.nan, _interval(math.nan, math.nan))
    )


def test_ratio_verdicts_state_direction_and_weakness() -> None:
    strong = Ratio(3, 3, 0.4, 1.0, 0.4, _interval(0.3, 0.55))
    assert not strong.weak and ratio_verdict(strong).startswith(
        "robust models alias less (ratio 0.40, 60% less"
    )
    one = Ratio(1, 3, 0.4, 1.0, 0.4, _interval(0.3, 0.55))
    assert one.weak and "only 1 robust vs 3 standard" in ratio_verdict(one)
    more = Ratio(4, 4, 1.3, 1.0, 1.3, _interval(0.9, 1.8))
    text = ratio_verdict(more)
    assert more.weak and "alias more" in text and "includes 1" in text and "against the hypothesis" in text
    assert ratio_verdict(Ratio(0, 2, math.nan, 1.0, math.nan, _interval(math.nan, math.nan))).startswith(
        "no comparison"
    )


# -------------------------------------------------------------------------------------- on a study
@pytest.fixture(scope="module")
def results_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_results(tmp_path_factory.mktemp("study"))


def test_compute_statistics_on_a_study(results_dir: Path) -> None:
    results = load_results(results_dir)
    stats = compute_statistics(results, n_resamples=300, seed=1)
    assert [o.op for o in stats.ops][:3] == OPS
    first = stats.ops[0]
    attacked = [(acc, scale) for robust, acc, scale in MODELS.values()]
    expected = spearman_reference([s for _, s in attacked], [a for a, _ in attacked])
    assert first.correlation.n == len(MODELS)  # the failed model and the unattacked one are left out
    assert first.correlation.rho == pytest.approx(expected, abs=1e-12)
    robust = [s for r, _, s in MODELS.values() if r]
    standard = [s for r, _, s in MODELS.values() if not r]
    assert (first.ratio.n_robust, first.ratio.n_standard) == (3, 3)  # not the failed robust model
    assert first.ratio.ratio == pytest.approx((sum(robust) / 3) / (sum(standard) / 3))
    assert first.ratio.interval.high < 1 and first.correlation.interval.high < 0
    again = compute_statistics(results, n_resamples=300, seed=1)
    assert again.ops[0].correlation.interval == first.correlation.interval
    other = compute_statistics(results, n_resamples=300, seed=2)
    assert other.ops[0].ratio.interval != first.ratio.interval
    wrn = stats.ops[3]
    assert wrn.correlation.n == 0 and math.isnan(wrn.correlation.rho) and wrn.ratio.n_standard == 1
    assert "agrees with the hypothesis" in stats.verdict
    assert "Of 5 down-sampling ops" in stats.verdict


def test_one_model_per_group_gives_the_ratio_but_no_interval(tmp_path: Path) -> None:
    entries = []
    for name, robust, am in (("r", True, 1.0), ("s", False, 4.0)):
        content = model_file(name, robust, 0.5, {OPS[0]: am}, "preact_resnet18")
        write(tmp_path / f"models/{name}.json", content)
        entries.append({"name": name, "file": f"models/{name}.json", "status": "done"})
    write(tmp_path / "study.json", {"schema": 1, "name": "pair", "config": {}, "run": {}, "models": entries})
    ratio = compute_statistics(load_results(tmp_path), n_resamples=50).ops[0].ratio
    assert ratio.ratio == pytest.approx(0.25)
    assert not ratio.interval.defined  # resampling a single model has no spread: a point is no interval
    text = ratio_verdict(ratio)
    assert text.startswith("weak evidence (only 1 robust vs 1 standard models, no interval)")
    assert "no bootstrap interval (a group of one model)" in text


def test_overall_verdict_when_nothing_is_clear() -> None:
    assert "nothing to test" in overall_verdict([])


def test_compute_statistics_rejects_bad_settings(results_dir: Path) -> None:
    results = load_results(results_dir)
    with pytest.raises(ValueError, match="n_resamples"):
        compute_statistics(results, n_resamples=0)
    with pytest.raises(ValueError, match="level"):
        compute_statistics(results, level=1.0)


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


def _effect(rho: float, ci: tuple[float, float], partial: float, pci: tuple[float, float], ratio: float):
    n = 8
    return MetricEffect(
        "aliasing",
        Correlation(n, rho, _interval(*ci)),
        Correlation(n, partial, _interval(*pci)),
        Ratio(4, 4, ratio, 1.0, ratio, _interval(ratio - 0.1, ratio + 0.1)),
    )


def test_confound_verdicts_name_what_could_explain_the_effect() -> None:
    held = _effect(-0.8, (-0.95, -0.5), -0.7, (-0.9, -0.3), 0.5)
    explained = _effect(-0.8, (-0.95, -0.5), -0.1, (-0.6, 0.5), 0.5)
    scale_free = replace(held, metric="relative_aliasing")
    flat = replace(_effect(0.1, (-0.5, 0.6), 0.0, (-0.5, 0.5), 1.0), metric="alias_energy_fraction")
    assert "holds controlling for clean accuracy (partial rho -0.70 [-0.90, -0.30])" in confound_verdict(
        (held, scale_free)
    )
    assert "relative_aliasing shows it too, so it is not only activation scale" in confound_verdict(
        (held, scale_free, flat)
    )
    text = confound_verdict((explained, flat))
    assert "could be explained by clean accuracy: controlling for it, the partial rho is -0.10" in text
    assert (
        "alias_energy_fraction does not show it clearly, so it could be explained by activation scale" in text
    )
    assert "no scale-free variant was measured" in confound_verdict((held,))
    reversed_partial = _effect(-0.8, (-0.95, -0.5), 0.6, (0.2, 0.9), 0.5)  # clear, but the other way
    assert "could be explained by clean accuracy" in confound_verdict((reversed_partial,))
    assert "nothing for a confound to explain" in confound_verdict((replace(flat, metric="aliasing"),))


def test_answer_sentences_give_each_group_its_numbers(results_dir: Path) -> None:
    stats = compute_statistics(load_results(results_dir), n_resamples=300, seed=1)
    answer = stats.answer
    groups = list(dict.fromkeys(o.layer_group for o in stats.ops))
    assert len(answer) == len(groups) and all(
        a.startswith(f"In {g},") for a, g in zip(answer, groups, strict=True)
    )
    first = stats.ops[0]
    c = first.correlation
    assert answer[0].startswith(f"In {first.layer_group}, AM falls as robust accuracy rises")
    assert f"{first.op}: rho = {c.rho:+.2f} [{c.interval.low:+.2f}, {c.interval.high:+.2f}]" in answer[0]
    assert "controlling for clean accuracy" in answer[0]


def test_statistics_cover_every_variant_on_the_same_resamples(results_dir: Path) -> None:
    results = load_results(results_dir)
    stats = compute_statistics(results, n_resamples=300, seed=1)
    first = stats.ops[0]
    assert [e.metric for e in first.effects] == ["aliasing", *results.variant_names]
    assert first.effects[0].correlation == first.correlation and first.effects[0].ratio == first.ratio
    attacked = [m for m in results.done_models if m.robust_accuracy is not None and m.op(first.op)]
    for effect in first.effects:
        values = [
            m.op(first.op).aliasing if effect.metric == "aliasing" else m.op(first.op).variants[effect.metric]
            for m in attacked
        ]
        expected = partial_reference(
            values, [m.robust_accuracy for m in attacked], [m.clean_accuracy for m in attacked]
        )
        assert effect.partial.rho == pytest.approx(expected, abs=1e-12) or (
            math.isnan(effect.partial.rho) and math.isnan(expected)
        )
