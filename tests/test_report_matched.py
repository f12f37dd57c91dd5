"""Matched pairs of standard and robust models and the sign test over them (report.matched)."""

from __future__ import annotations

import itertools
import math

import pytest

from cnn_aliasing.report.matched import match_pairs, matched_pairs, sign_test
from cnn_aliasing.report.results import ModelResult, OpResult


def model(
    name: str,
    robust: bool,
    clean: float,
    am: dict[str, float],
    status: str = "done",
    dose: float | None = None,
    source: dict[str, str] | None = None,
) -> ModelResult:
    ops = [OpResult(op, "conv", (2, 2), value, 0.0, 1) for op, value in am.items()]
    return ModelResult(
        name,
        f"models/{name}.json",
        status,
        None,
        robust,
        "a",
        [],
        source or {},
        clean_accuracy=clean,
        ops=ops,
        dose=dose,
    )


def reference_sign_test(less: int, more: int) -> float:
    """Two-sided exact sign test by enumerating every sign pattern: the share of patterns at least as
    unbalanced as the observed one."""
    k = less + more
    observed = abs(less - more)
    extreme = sum(1 for signs in itertools.product((0, 1), repeat=k) if abs(2 * sum(signs) - k) >= observed)
    return extreme / 2**k


@pytest.mark.parametrize(("less", "more"), [(3, 0), (0, 3), (2, 1), (5, 1), (6, 0), (4, 4), (1, 0), (7, 2)])
def test_sign_test_matches_the_enumeration(less: int, more: int) -> None:
    assert sign_test(less, more) == pytest.approx(reference_sign_test(less, more), abs=1e-15)


def test_sign_test_known_answers() -> None:
    assert sign_test(3, 0) == 0.25 and sign_test(6, 0) == pytest.approx(2 / 64)
    assert sign_test(2, 2) == 1.0 and math.isnan(sign_test(0, 0))


def test_pairs_are_closest_first_within_the_tolerance_each_model_once() -> None:
    models = [
        model("s1", False, 0.265, {}),
        model("s2", False, 0.274, {}),
        model("s3", False, 0.358, {}),
        model("r3", True, 0.246, {}),
        model("r5", True, 0.301, {}),
        model("r6", True, 0.339, {}),
        model("r4", True, 0.336, {}),
        model("gone", True, 0.36, {}, status="failed"),
    ]
    pairs = match_pairs(models, 0.03)
    assert [(p.standard, p.robust) for p in pairs] == [("s1", "r3"), ("s3", "r6"), ("s2", "r5")]
    assert pairs[1].gap == pytest.approx(0.339 - 0.358)
    assert match_pairs(models, 0.01) == ()


def test_matched_ops_count_which_model_aliases_less() -> None:
    models = [
        model("s1", False, 0.30, {"a": 2.0, "b": 1.0}),
        model("r1", True, 0.31, {"a": 1.0, "b": 1.0}),
        model("s2", False, 0.40, {"a": 2.0, "b": 1.0}),
        model("r2", True, 0.41, {"a": 3.0}),
    ]
    result = matched_pairs(models, ["a", "b"])
    assert [(o.op, o.less, o.more) for o in result.ops] == [("a", 1, 1), ("b", 0, 0)]  # a tie, a missing op
    assert result.ops[0].p == 1.0 and math.isnan(result.ops[1].p)
    line = result.answer_line()
    assert line is not None and "s1 / r1, s2 / r2" in line and "a: 1 of 2; b: 0 of 0" in line
    assert "2 pairs and 1 ops the smallest Holm-adjusted sign-test p is 0.5" in line and "cannot tell" in line
    assert matched_pairs(models[:1], ["a"]).answer_line() is None


def test_a_study_trained_control_is_in_no_pair() -> None:
    recipe = {"type": "recipe"}
    models = [
        model("noise", False, 0.30, {}, dose=None, source=recipe),  # gaussian-noise: no dose
        model("std", False, 0.35, {}, dose=0.0, source=recipe),
        model("zoo-standard", False, 0.40, {}, source={"type": "zoo"}),
        model("r1", True, 0.31, {}, dose=8 / 255, source=recipe),
        model("r2", True, 0.41, {}, source={"type": "zoo"}),
    ]
    assert [(p.standard, p.robust) for p in match_pairs(models, 0.03)] == [("zoo-standard", "r2")]
    assert [(p.standard, p.robust) for p in match_pairs(models, 0.05)] == [
        ("zoo-standard", "r2"),
        ("std", "r1"),
    ]


def test_enough_pairs_are_clear_after_holm_over_the_ops() -> None:
    # eight pairs, robust aliasing less in all of them in op a, in half of them in op b
    models = []
    for k in range(8):
        models.append(model(f"s{k}", False, 0.2 + 0.05 * k, {"a": 2.0, "b": 1.0 + (k % 2)}, dose=0.0))
        models.append(model(f"r{k}", True, 0.2 + 0.05 * k + 0.001, {"a": 1.0, "b": 1.5}))
    result = matched_pairs(models, ["a", "b"])
    a, b = result.ops
    assert (a.less, a.more, b.less, b.more) == (8, 0, 4, 4)
    assert a.p == pytest.approx(2 / 256) and a.p_holm == pytest.approx(4 / 256)  # Holm over 2 ops
    assert b.p == 1.0 and b.p_holm == 1.0
    line = result.answer_line()
    assert line is not None and line.endswith("clear (Holm-adjusted sign-test p below 0.05) in a.")
