"""Reading a model file's per-image results and training dose (docs/results-format.md) into
``ModelResult.per_image`` / ``ModelResult.dose``: known values come back as numpy arrays, files written
before them read as None, and per-image data whose lengths disagree is an error naming the file and key."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cnn_aliasing.report.results import ResultsError, load_model_result
from test_report_fixtures import model_file

OPS = {"layer2.0.conv1": 0.5, "layer3.0.conv1": 0.25}
N_MEASURED = 4  # model_file's aliasing.n_images is 10: set to 4 here


def content(**changes: Any) -> dict[str, Any]:
    """A finished model's file with per-image results of 4 measured images, 3 of them attacked."""
    record = model_file("m", True, 0.5, OPS, "preact_resnet18")
    record["aliasing"]["n_images"] = N_MEASURED
    record["aliasing"]["per_image"] = {
        "layer2.0.conv1": [0.25, 0.75, 0.5, 0.5],
        "layer3.0.conv1": [0.125, None, 0.25, 0.375],  # null: NaN
    }
    record["per_image"] = {
        "n_measured": N_MEASURED,
        "n_attacked": 3,
        "clean": "110",
        "robust": "100",
        "margin": [1.5, -0.25, -2.0],
    }
    record["dose"] = 8 / 255
    record.update(changes)
    return record


def load(tmp_path: Path, record: dict[str, Any]) -> Any:
    path = tmp_path / "m.json"
    path.write_text(json.dumps(record))
    return load_model_result(path, "models/m.json")


def test_per_image_results_and_dose_are_read_as_arrays(tmp_path: Path) -> None:
    model = load(tmp_path, content())
    assert model.dose == 8 / 255
    data = model.per_image
    assert data is not None and data.n_attacked == 3 and list(data.aliasing) == list(OPS)
    assert data.aliasing["layer2.0.conv1"].dtype == np.float64
    assert data.aliasing["layer2.0.conv1"].tolist() == [0.25, 0.75, 0.5, 0.5]
    third = data.aliasing["layer3.0.conv1"].tolist()
    assert math.isnan(third[1]) and third[::2] == [0.125, 0.25]
    assert data.clean.dtype == bool and data.clean.tolist() == [True, True, False]
    assert data.robust.dtype == bool and data.robust.tolist() == [True, False, False]
    assert data.margin.dtype == np.float64 and data.margin.tolist() == [1.5, -0.25, -2.0]


def test_files_written_before_per_image_results_read_as_none(tmp_path: Path) -> None:
    old = model_file("m", True, 0.5, OPS, "preact_resnet18")  # no "per_image", "dose", aliasing.per_image
    model = load(tmp_path, old)
    assert model.done and model.per_image is None and model.dose is None and len(model.ops) == 2
    failed = {**old, "status": "failed", "error": "boom", "aliasing": None, "dose": 0.0}
    assert load(tmp_path, failed).dose == 0.0 and load(tmp_path, failed).per_image is None


def test_without_a_measured_attack_the_verdicts_are_empty(tmp_path: Path) -> None:
    data = load(tmp_path, content(per_image=None, dose=None)).per_image
    assert data is not None and data.n_attacked == 0 and data.clean.shape == data.margin.shape == (0,)
    assert data.aliasing["layer2.0.conv1"].shape == (N_MEASURED,)


def _with(**per_image: Any) -> dict[str, Any]:
    record = content()
    record["per_image"] = {**record["per_image"], **per_image}
    return record


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (_with(margin=[1.0, 2.0]), r"per_image\.margin must list n_attacked = 3 values; got 2 values"),
        (_with(clean="1101"), r"per_image\.clean must be a string of n_attacked = 3 characters"),
        (_with(robust="1x0"), r"per_image\.robust must be a string of n_attacked = 3 characters"),
        (_with(n_measured=5), r"per_image\.n_measured = 5 differs from aliasing\.n_images = 4"),
        (_with(n_attacked=7), r"per_image\.n_attacked must be an integer from 0 to n_measured = 4"),
        (_with(margin=[1.0, "a", 2.0]), r"per_image\.margin must hold numbers"),
        (
            {**content(), "aliasing": {**content()["aliasing"], "per_image": None}},
            r"per_image is given but aliasing\.per_image is missing",
        ),
        (
            {**content(), "aliasing": {**content()["aliasing"], "n_images": 5}},
            r"'aliasing\.per_image\.layer2\.0\.conv1' must list 5 values \(n_images\); got 4 values",
        ),
    ],
)
def test_malformed_per_image_data_names_the_file_and_key(
    tmp_path: Path, record: dict[str, Any], message: str
) -> None:
    with pytest.raises(ResultsError, match=message) as error:
        load(tmp_path, record)
    assert str(error.value).startswith(str(tmp_path / "m.json"))
