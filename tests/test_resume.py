"""cnn_aliasing.resume: the one identity check of every resumable state, and the JSON state file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cnn_aliasing.errors import CnnAliasingError
from cnn_aliasing.resume import JsonStateFile, StateMismatchError, check_identity, identity_differences


def test_identity_differences_name_every_entry_that_differs_and_only_those() -> None:
    stored = {"model": {"class": "A", "weights_sha256": "1"}, "eps": 0.5, "seed": 0}
    wanted = {"model": {"class": "A", "weights_sha256": "2"}, "eps": 0.25, "seed": 0, "n": 4}
    assert identity_differences(stored, wanted) == [
        "eps=0.5, this run has eps=0.25",
        'model.weights_sha256="1", this run has model.weights_sha256="2"',
        "n=null, this run has n=4",
    ]
    assert identity_differences(stored, dict(stored)) == []


def test_check_identity_raises_the_one_error_naming_the_state_and_the_remedy() -> None:
    check_identity("state file s.json", {"seed": 0}, {"seed": 0}, "delete it")
    with pytest.raises(StateMismatchError) as caught:
        check_identity("state file s.json", {"seed": 0}, {"seed": 1}, "delete it")
    assert str(caught.value) == "state file s.json was written for seed=0, this run has seed=1; delete it"
    assert isinstance(caught.value, CnnAliasingError)


def test_a_json_state_file_reads_back_only_its_own_format_and_version(tmp_path: Path) -> None:
    file = JsonStateFile(tmp_path / "state.json", "test state", 2, "states before 2 lack x")
    file.write({"x": [1, 2]})
    assert json.loads(file.path.read_text()) == {"format": "test state", "version": 2, "x": [1, 2]}
    assert file.read(lambda raw: raw["x"]) == [1, 2]
    with pytest.raises(StateMismatchError, match=r"state.json: KeyError\('y'\)"):
        file.read(lambda raw: raw["y"])
    older = JsonStateFile(file.path, "test state", 3, "states before 3 lack y")
    with pytest.raises(
        StateMismatchError, match=r"version 2 \(this version reads 3: states before 3 lack y\)"
    ):
        older.read(lambda raw: raw)
    other = JsonStateFile(file.path, "unit test state", 2, "")
    with pytest.raises(StateMismatchError, match="not a unit test state file"):
        other.read(lambda raw: raw)
