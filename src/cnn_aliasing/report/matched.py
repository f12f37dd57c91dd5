"""Standard and robust models at matched clean accuracy: pairs, and per op a sign test of which aliases less.

A study whose models differ in clean accuracy cannot say from correlations alone whether AM goes with
robustness or with accuracy. Pairs of a standard and a robust model whose clean accuracies lie within
``tolerance`` of each other compare the two at (nearly) the same accuracy. Pairs are formed greedily,
closest first, each model in one pair at most; a control trained the study's way with neither standard
nor adversarial training (a recipe model without a dose, e.g. Gaussian noise) is in no pair. Per op, the
exact two-sided sign test asks whether the robust model of a pair aliases less more often than chance, and
its p-values are Holm-adjusted over the ops, as the correlations are; with k pairs and m ops the smallest
adjusted p is m * 2 / 2^k, and where that is not below 0.05 the answer says that we cannot tell.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from cnn_aliasing.report.multiplicity import holm
from cnn_aliasing.report.results import ModelResult

#: Clean accuracies within this (a fraction: 3 points) count as matched.
MATCH_TOLERANCE = 0.03


@dataclass(frozen=True)
class Pair:
    """A standard and a robust model with clean accuracies within the tolerance."""

    standard: str
    robust: str
    gap: float  # robust clean accuracy minus standard clean accuracy


@dataclass(frozen=True)
class PairedOp:
    """One op over the matched pairs: in how many the robust model aliases less or more, the sign test's
    exact two-sided p and its Holm-adjusted p over the ops (ties, and pairs in which a model lacks the op,
    are left out)."""

    op: str
    less: int
    more: int
    p: float
    p_holm: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, NaN as None."""
        p, p_holm = (None if math.isnan(v) else v for v in (self.p, self.p_holm))
        return {"op": self.op, "less": self.less, "more": self.more, "p": p, "p_holm": p_holm}


@dataclass(frozen=True)
class MatchedPairs:
    """The matched pairs of a study and, per op, the sign test over them."""

    tolerance: float
    pairs: tuple[Pair, ...]
    ops: tuple[PairedOp, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "tolerance": self.tolerance,
            "pairs": [{"standard": p.standard, "robust": p.robust, "gap": p.gap} for p in self.pairs],
            "ops": [o.to_dict() for o in self.ops],
        }

    def answer_line(self) -> str | None:
        """The answer's line on matched pairs (None without pairs)."""
        if not self.pairs:
            return None
        k = len(self.pairs)
        names = ", ".join(f"{p.standard} / {p.robust}" for p in self.pairs)
        counts = "; ".join(f"{o.op}: {o.less} of {o.less + o.more}" for o in self.ops)
        m = sum(1 for o in self.ops if not math.isnan(o.p))
        least = min(1.0, m * 2.0 / 2**k)
        limit = (
            f"with {k} pair{'s' if k > 1 else ''} and {m} ops the smallest Holm-adjusted sign-test p is "
            f"{least:.2g}, so these pairs cannot show a clear difference: we cannot tell"
            if least >= 0.05
            else "clear (Holm-adjusted sign-test p below 0.05) in "
            + (", ".join(o.op for o in self.ops if o.p_holm < 0.05) or "no op")
        )
        return (
            f"At matched clean accuracy (within {100 * self.tolerance:g} points: {names}), the robust model "
            f"aliases less in this many pairs: {counts}; {limit}."
        )


def sign_test(less: int, more: int) -> float:
    """The exact two-sided sign test's p-value of ``less`` against ``more`` (NaN when both are 0)."""
    k = less + more
    if k == 0:
        return math.nan
    tail = sum(math.comb(k, i) for i in range(min(less, more) + 1)) / 2**k
    return min(1.0, 2.0 * tail)


def is_standard(model: ModelResult) -> bool:
    """A normally trained model: not robust, and not a study-trained control (a recipe model whose
    objective gave it no dose, e.g. Gaussian-noise training)."""
    return not model.robust and (model.dose == 0.0 or model.source.get("type") != "recipe")


def match_pairs(models: list[ModelResult], tolerance: float = MATCH_TOLERANCE) -> tuple[Pair, ...]:
    """Pairs of a standard and a robust finished model with clean accuracies within ``tolerance``,
    closest first (gaps equal to 1e-9 tie and go to the earlier models of the study), each model used
    once."""
    done = [m for m in models if m.done and m.clean_accuracy is not None]
    candidates = [
        (abs(r.clean_accuracy - s.clean_accuracy), i, j, s, r)  # type: ignore[operator]  # filtered above
        for i, s in enumerate(done)
        for j, r in enumerate(done)
        if r.robust and is_standard(s)
    ]
    pairs: list[Pair] = []
    used: set[str] = set()
    for gap, _, _, s, r in sorted(candidates, key=lambda c: (round(c[0], 9), c[1], c[2])):
        if gap <= tolerance + 1e-12 and s.name not in used and r.name not in used:
            used.update((s.name, r.name))
            pairs.append(Pair(s.name, r.name, float(r.clean_accuracy - s.clean_accuracy)))  # type: ignore[operator]
    return tuple(pairs)


def matched_pairs(
    models: list[ModelResult], op_names: list[str], tolerance: float = MATCH_TOLERANCE
) -> MatchedPairs:
    """The matched pairs of ``models`` and, for each op, the sign test of robust against standard AM."""
    pairs = match_pairs(models, tolerance)
    by_name = {m.name: m for m in models}
    ops = []
    for name in op_names:
        less = more = 0
        for pair in pairs:
            s, r = by_name[pair.standard].op(name), by_name[pair.robust].op(name)
            if s is None or r is None or s.aliasing == r.aliasing:
                continue
            less, more = less + (r.aliasing < s.aliasing), more + (r.aliasing > s.aliasing)
        ops.append(PairedOp(name, less, more, sign_test(less, more)))
    adjusted = holm([o.p for o in ops])
    ops = [PairedOp(o.op, o.less, o.more, o.p, float(a)) for o, a in zip(ops, adjusted, strict=True)]
    return MatchedPairs(tolerance, pairs, tuple(ops))
