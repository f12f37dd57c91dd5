"""Correcting p-values for testing many ops at once."""

from __future__ import annotations

import numpy as np


def holm(pvalues: np.ndarray | list[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values: sorted ascending, the i-th (from 0) times (m - i), made
    monotone by a running maximum and capped at 1. NaN entries stay NaN and are not counted in m."""
    p = np.asarray(pvalues, dtype=np.float64)
    adjusted = np.full(p.shape, np.nan)
    valid = np.flatnonzero(np.isfinite(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    m = order.size
    steps = (m - np.arange(m)) * p[order]
    adjusted[order] = np.minimum(np.maximum.accumulate(steps), 1.0)
    return adjusted
