"""The checks of TOML values a study config reads beside :mod:`cnn_aliasing.validation`'s plain ones: paths,
lists of strings and tables; and :func:`to_json`, a config's dataclass tree as JSON-ready values. The
sections themselves are dataclasses read by :func:`cnn_aliasing.fields.read_fields` (a field's
``metadata=checked(check)`` declares the key).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cnn_aliasing.validation import invalid, is_str


def is_path(value: Any, where: str) -> Path:
    """A path; relative paths resolve against the current working directory."""
    return Path(os.path.abspath(Path(is_str(value, where)).expanduser()))


def is_str_list(value: Any, where: str) -> tuple[str, ...]:
    """A list of non-empty strings."""
    if not isinstance(value, list):
        raise invalid(where, "a list of strings", value)
    return tuple(is_str(item, f"{where}[{i}]") for i, item in enumerate(value))


def is_table(value: Any, where: str) -> dict[str, Any]:
    """A table (any keys)."""
    if not isinstance(value, Mapping):
        raise invalid(where, "a table", value)
    return dict(value)


def to_json(value: Any) -> Any:
    """A dataclass tree as JSON-ready values (paths as strings, tuples as lists)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value) if f.repr}
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value
