"""Checks of values given by the user (attack options, config keys), shared by every place that reads them.

A :data:`Check` takes the value and a description of where it stands (e.g. ``"attack 'square' option
n_queries"`` or ``"quick.toml: [data]: n_images"``) and returns the value (converted where the check
says so) or raises :class:`CnnAliasingError` naming that place, what is valid and the value given.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

from cnn_aliasing.errors import CnnAliasingError

Check = Callable[[Any, str], Any]


def invalid(where: str, wanted: str, value: Any) -> CnnAliasingError:
    """The error for ``value`` at ``where``, which should have been ``wanted`` (e.g. "an integer >= 1")."""
    return CnnAliasingError(f"{where} must be {wanted}, got {type(value).__name__} {value!r}")


def is_str(value: Any, where: str) -> str:
    """A non-empty string."""
    if not isinstance(value, str) or not value:
        raise invalid(where, "a non-empty string", value)
    return value


def is_bool(value: Any, where: str) -> bool:
    """true or false."""
    if not isinstance(value, bool):
        raise invalid(where, "true or false", value)
    return value


def is_whole(value: Any) -> bool:
    """Whether ``value`` is an integer (booleans are not integers here)."""
    return not isinstance(value, bool) and isinstance(value, numbers.Integral)


def optional(check: Check, none_means: str) -> Check:
    """None (which means ``none_means``), or a value passing ``check``; the error says both."""

    def check_optional(value: Any, where: str) -> Any:
        if value is None:
            return None
        try:
            return check(value, where)
        except CnnAliasingError as error:
            raise CnnAliasingError(f"{error} (or None: {none_means})") from None

    return check_optional


def is_int(minimum: int) -> Check:
    """An integer >= ``minimum`` (booleans are not integers here)."""

    def check(value: Any, where: str) -> int:
        if not is_whole(value) or value < minimum:
            raise invalid(where, f"an integer >= {minimum}", value)
        return int(value)

    return check


def is_int_pair(minimum: int, maximum: int | None = None) -> Callable[[Any, str], tuple[int, int]]:
    """An integer or a pair of integers (booleans are not integers here), each >= ``minimum`` and, given a
    ``maximum``, <= it; returned as a pair (``2`` gives ``(2, 2)``): a factor, stride or size on two axes."""
    wanted = f"an int or a pair of ints {f'>= {minimum}' if maximum is None else f'in {minimum}..{maximum}'}"

    def check(value: Any, where: str) -> tuple[int, int]:
        pair = (value, value) if is_whole(value) else tuple(value) if isinstance(value, Sequence) else ()
        high = math.inf if maximum is None else maximum
        if len(pair) != 2 or not all(is_whole(v) and minimum <= v <= high for v in pair):
            raise invalid(where, wanted, value)
        return int(pair[0]), int(pair[1])

    return check


def is_number(low: float, high: float = math.inf, *, open_low: bool = False) -> Check:
    """A finite real number (not a boolean) in [low, high], or in (low, high] with ``open_low``."""
    if math.isinf(high):
        wanted = f"a number {'>' if open_low else '>='} {low:g}"
    else:
        wanted = f"a number in {'(' if open_low else '['}{low:g}, {high:g}]"

    def check(value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise invalid(where, wanted, value)
        number = float(value)
        if number > high or number < low or (open_low and number == low):
            raise invalid(where, wanted, value)
        return number

    return check


def is_choice(*valid: str) -> Check:
    """One of ``valid``."""

    def check(value: Any, where: str) -> str:
        if value not in valid:
            raise invalid(where, f"one of {', '.join(map(repr, valid))}", value)
        return value

    return check
