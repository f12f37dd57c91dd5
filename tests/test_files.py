"""Tests of cnn_aliasing.files: atomic writes (JSON, CSV), reading JSON objects, a file's SHA-256."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from cnn_aliasing.files import JsonFileError, read_json_object, sha256_of, write_csv_atomic, write_json_atomic


def test_write_json_atomic_creates_parents_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "result.json"
    obj = {"name": "x", "values": [1.5, 2], "nested": {"ok": True}, "where": tmp_path, "n": np.int64(3)}
    assert write_json_atomic(path, obj) == path
    assert json.loads(path.read_text()) == {**obj, "where": str(tmp_path), "n": 3}
    assert path.read_text().endswith("\n")
    assert os.listdir(path.parent) == ["result.json"]
    assert path.stat().st_mode & 0o777 == 0o644


def test_write_json_atomic_replaces_and_failure_keeps_old_file(tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    write_json_atomic(str(path), {"v": 1})
    write_json_atomic(path, {"v": 2})
    assert json.loads(path.read_text()) == {"v": 2}
    with pytest.raises(TypeError, match="object"):
        write_json_atomic(path, {"v": 3, "bad": object()})
    assert json.loads(path.read_text()) == {"v": 2}
    assert os.listdir(tmp_path) == ["result.json"]


def test_sha256_of_and_csv_written_atomically(tmp_path: Path) -> None:
    blob = tmp_path / "weights.bin"
    blob.write_bytes(b"abc" * 1000)
    assert sha256_of(blob) == hashlib.sha256(b"abc" * 1000).hexdigest()
    table = tmp_path / "out" / "table.csv"
    write_csv_atomic(table, [{"op": "layer2.0.conv1", "aliasing": 0.25}, {"op": "x", "aliasing": 1}])
    assert table.read_text() == "op,aliasing\nlayer2.0.conv1,0.25\nx,1\n"
    assert [p.name for p in table.parent.iterdir()] == ["table.csv"]


def test_write_json_atomic_writes_non_finite_floats_as_null(tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    obj = {
        "a": float("nan"),
        "b": [float("inf")],
        "c": (1.5, -float("inf")),
        "d": {"e": np.float32("nan"), "f": np.float64("-inf"), "g": [{"h": float("nan")}]},
        "i": 2.0,
    }
    write_json_atomic(path, obj)

    def refuse(token: str) -> float:
        raise ValueError(f"non-standard JSON token {token}")

    assert json.loads(path.read_text(), parse_constant=refuse) == {
        "a": None,
        "b": [None],
        "c": [1.5, None],
        "d": {"e": None, "f": None, "g": [{"h": None}]},
        "i": 2.0,
    }


def test_read_json_object_names_the_file_and_what_is_wrong(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text('{"a": [1, 2]}', encoding="utf-8")
    assert read_json_object(good) == {"a": [1, 2]}
    cases = {
        "missing.json": (None, "missing.json: no such file"),
        "bad.json": ("{not json", "bad.json: not valid JSON"),
        "list.json": ("[1, 2]", "list.json: expected a JSON object at the top level, got list"),
    }
    for name, (text, expected) in cases.items():
        if text is not None:
            (tmp_path / name).write_text(text, encoding="utf-8")
        with pytest.raises(JsonFileError, match=expected):
            read_json_object(tmp_path / name)
    with pytest.raises(JsonFileError, match="cannot read it"):
        read_json_object(tmp_path)  # a folder
