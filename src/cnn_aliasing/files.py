"""Files that survive a kill and say what is wrong with them: atomic writes (any file, JSON, CSV), reading
JSON objects and TOML with errors that name the file, and a file's SHA-256. No torch: the report uses them."""

from __future__ import annotations

import contextlib
import csv
import glob
import hashlib
import json
import math
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cnn_aliasing.errors import CnnAliasingError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

StrPath = str | os.PathLike[str]
"""A file or folder path as users give it."""


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, Inf) replaced by None, through dicts, lists and tuples,
    so that it is written as standard JSON (``null``), which has no NaN or Infinity."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: json_safe(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(value) for value in obj]
    return obj


def _json_default(obj: Any) -> Any:
    """JSON for paths and numpy scalars; anything else is a TypeError as in `json.dumps`."""
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, np.generic):
        return json_safe(obj.item())
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serializable")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends, rename it onto ``path``.

    Parent folders are created; readers see the old file or the new one, never a partial one. If the block
    raises, the temporary file is removed and ``path`` is left untouched; temporary files of ``path`` left
    by a writer that was killed are removed first. The file gets mode 0644.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for orphan in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):  # left by a writer that was killed
        orphan.unlink(missing_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        tmp.chmod(0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write `obj` as indented standard JSON to `path` atomically (temp file in the same folder, fsync,
    rename).

    NaN and Inf floats are written as null (see :func:`json_safe`); paths and numpy scalars are converted;
    other non-JSON objects raise TypeError and leave `path` untouched.
    """
    path = Path(path)
    with atomic_file(path) as tmp, tmp.open("w", encoding="utf-8") as fh:
        json.dump(json_safe(obj), fh, indent=2, default=_json_default, allow_nan=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    return path


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable where the platform allows (POSIX); a no-op elsewhere."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_HASH_CHUNK = 1 << 20


class JsonFileError(CnnAliasingError):
    """A JSON file is missing, unreadable, not JSON, or not an object at the top level."""


def required_key(
    obj: Any,
    key: str,
    where: str = "",
    *,
    error: type[CnnAliasingError] = JsonFileError,
    file: StrPath | None = None,
) -> Any:
    """``obj[key]`` of data read back from a file: a missing key (or ``obj`` not a mapping) is an ``error``
    naming the full key path (``where`` is the parent's path, ending in a dot) and ``file`` if given."""
    if not isinstance(obj, dict) or key not in obj:
        prefix = "" if file is None else f"{file}: "
        raise error(f"{prefix}missing key {where + key!r}")
    return obj[key]


def read_json_object(path: StrPath, *, error: type[CnnAliasingError] = JsonFileError) -> dict[str, Any]:
    """The JSON object in ``path``; an ``error`` (by default a :class:`JsonFileError`; a caller's own class
    where it has one) names the file and what is wrong with it."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except OSError as problem:
        raise error(f"{path}: cannot read it ({problem.strerror or problem})") from None
    try:
        data = json.loads(text)
    except ValueError as problem:
        raise error(f"{path}: not valid JSON ({problem})") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object at the top level, got {type(data).__name__}")
    return data


def read_toml(path: StrPath) -> dict[str, Any]:
    """The TOML document in ``path``; an error names the file and what is wrong with it."""
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise CnnAliasingError(f"{path}: cannot read it ({error.strerror or error})") from None
    except tomllib.TOMLDecodeError as error:
        raise CnnAliasingError(f"{path}: not valid TOML: {error}") from None


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_csv_atomic(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write ``rows`` (dicts with the same keys) as CSV with a header, atomically; no rows: empty file."""
    with atomic_file(path) as tmp, tmp.open("w", encoding="utf-8", newline="") as fh:
        if rows:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
