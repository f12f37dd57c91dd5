"""Quantiles of Student's t distribution (and the normal quantile of its limit), in pure Python: the 95%
intervals of channel-sampled estimates (see docs/metric.md)."""

from __future__ import annotations

import functools
import math


def _t_coverage(t: float, df: int) -> float:
    """P(|T| <= t) for Student's T with an integer number ``df`` >= 1 of degrees of freedom (closed forms
    of Abramowitz and Stegun 26.7.3 and 26.7.4)."""
    theta = math.atan(t / math.sqrt(df))
    cos2 = math.cos(theta) ** 2
    if df % 2:
        term = total = math.cos(theta) if df > 1 else 0.0
        for j in range(1, (df - 3) // 2 + 1):
            term *= cos2 * (2 * j) / (2 * j + 1)
            total += term
        return 2 / math.pi * (theta + math.sin(theta) * total)
    term = total = 1.0
    for j in range(1, (df - 2) // 2 + 1):
        term *= cos2 * (2 * j - 1) / (2 * j)
        total += term
    return math.sin(theta) * total


@functools.lru_cache(maxsize=512)
def t_critical(df: int, level: float = 0.95) -> float:
    """The two-sided critical value t of Student's distribution: P(|T| <= t) = ``level`` for ``df``
    degrees of freedom (12.706 for 1, 2.2281 for 10, 1.96 as df grows). Beyond 1000 degrees of freedom,
    the Cornish-Fisher expansion about the normal quantile (error below 1e-8 there)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df > 1000:
        z = _normal_quantile((1 + level) / 2)
        return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
    low, high = 0.0, 1.0
    while _t_coverage(high, df) < level:
        low, high = high, 2 * high
    for _ in range(200):
        mid = (low + high) / 2
        if _t_coverage(mid, df) < level:
            low = mid
        else:
            high = mid
        if high - low <= 1e-13 * high:
            break
    return (low + high) / 2


def _normal_quantile(p: float) -> float:
    """The standard normal quantile by bisection on erf (only used far into the t's normal limit)."""
    low, high = -40.0, 40.0
    for _ in range(200):
        mid = (low + high) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < p:
            low = mid
        else:
            high = mid
    return (low + high) / 2
