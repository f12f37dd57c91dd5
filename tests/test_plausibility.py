"""A zoo checkpoint whose measured clean accuracy is far below RobustBench's figure is flagged."""

from __future__ import annotations

import math

import pytest

from cnn_aliasing.plausibility import MIN_SHORTFALL, STANDARD_ERRORS, checkpoint_doubt


@pytest.mark.parametrize(
    ("measured", "n", "reported", "flagged"),
    [
        (0.078, 1000, 0.832, True),  # random weights under a zoo name (the case)
        (0.73, 1000, 0.832, False),  # 10 points lower: the workplace's JPEG copy of CIFAR-10
        (0.68, 1000, 0.832, True),  # 15.2 points lower, far beyond 4 standard errors (4.7 points)
        (0.40, 10, 0.832, False),  # 43 points lower on 10 images: within 4 standard errors (47 points)
        (0.10, 10, 0.832, True),
        (0.95, 1000, 0.832, False),  # above the reported figure: never a doubt
    ],
)
def test_a_shortfall_is_flagged_beyond_sampling_and_re_encoding(measured, n, reported, flagged) -> None:
    se = math.sqrt(reported * (1 - reported) / n)
    assert flagged == (reported - measured > max(STANDARD_ERRORS * se, MIN_SHORTFALL))  # the rule, by hand
    assert (checkpoint_doubt("M", measured, n, reported) is not None) == flagged


def test_the_warning_names_the_model_and_the_numbers() -> None:
    text = checkpoint_doubt("Carmon2019Unlabeled", 0.078, 1000, 0.8975)
    assert text == (
        "Carmon2019Unlabeled: measured clean accuracy 7.8% on 1000 images is 82.0 points below the 89.8% "
        "RobustBench reports, far more than sampling (4 standard errors: 3.8 points) or re-encoded images "
        "(15 points) explain: probably a wrong checkpoint"
    )
    assert checkpoint_doubt("M", 0.0, 0, 0.9) is None  # no images: nothing measured
