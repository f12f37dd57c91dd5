"""Whether a measured result is plausible for the model it claims to be: a zoo checkpoint whose measured
clean accuracy falls far below the figure RobustBench reports for it is probably the wrong file (random
weights, another model's weights, a truncated download). Pure arithmetic: the study flags it while it
runs, and the report from the result files alone."""

from __future__ import annotations

import math

#: How many standard errors of the measured accuracy a shortfall must exceed to be flagged.
STANDARD_ERRORS = 4.0
#: The smallest shortfall flagged, whatever the sampling error: this workplace's JPEG re-encoded CIFAR-10
#: costs correct checkpoints about 10 points of clean accuracy, which must not be mistaken for a wrong one.
MIN_SHORTFALL = 0.15


def checkpoint_doubt(name: str, measured: float, n_images: int, reported: float) -> str | None:
    """A warning when ``measured`` clean accuracy (a fraction, on ``n_images`` images) lies below the
    ``reported`` one by more than :data:`STANDARD_ERRORS` binomial standard errors and more than
    :data:`MIN_SHORTFALL`; None when it is plausible."""
    if n_images < 1:
        return None
    se = math.sqrt(max(reported * (1.0 - reported), 1e-12) / n_images)
    shortfall = reported - measured
    if shortfall <= max(STANDARD_ERRORS * se, MIN_SHORTFALL):
        return None
    return (
        f"{name}: measured clean accuracy {100 * measured:.1f}% on {n_images} images is "
        f"{100 * shortfall:.1f} points below the {100 * reported:.1f}% RobustBench reports, far more than "
        f"sampling ({STANDARD_ERRORS:g} standard errors: {100 * STANDARD_ERRORS * se:.1f} points) or "
        f"re-encoded images ({100 * MIN_SHORTFALL:.0f} points) explain: probably a wrong checkpoint"
    )
