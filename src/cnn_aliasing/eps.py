"""Radii as users write them: a number, or a fraction such as ``"8/255"`` (the usual form of a Linf eps for
images in [0, 1]). The one parser of the command line's ``--eps``, the recipes' eps-like fields and the
study configs' ``[attack] eps``; whether a radius makes sense for a threat model is
:func:`cnn_aliasing.attacks.check_radius`'s question.
"""

from __future__ import annotations

import math
import numbers
from fractions import Fraction
from typing import Any

from cnn_aliasing.validation import Check, invalid


def _as_number(value: Any) -> float | None:
    """``value`` as a float: a real number (not a boolean), or a string holding a number or a fraction
    (spaces allowed); None for anything else."""
    if isinstance(value, str):
        try:
            return float(Fraction(value.replace(" ", "")))
        except (ValueError, ZeroDivisionError):
            return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value)


def is_eps(*, positive: bool = False) -> Check:
    """A radius: a finite number >= 0 (> 0 with ``positive``) or a fraction such as ``"8/255"``, as a float;
    the error says both forms."""
    wanted = f'a number {">" if positive else ">="} 0 or a fraction such as "8/255"'

    def check(value: Any, where: str) -> float:
        number = _as_number(value)
        if number is None or not math.isfinite(number) or number < 0 or (positive and number == 0):
            raise invalid(where, wanted, value)
        return number

    return check


def parse_eps(text: str | float) -> float:
    """An eps given as a number or a fraction such as ``"8/255"``; must be finite and >= 0."""
    return is_eps()(text, "eps")
