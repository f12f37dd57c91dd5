"""Reading TOML tables into frozen dataclasses: each field declares its checker, unknown keys are errors.

A field's ``metadata=reads(check)`` names a :data:`Check`: it takes the raw TOML value and a description of
where it stands (file, section, key) and returns the converted value or raises
:class:`CnnAliasingError`. Fields without a default are required. :func:`from_table` names the file, the
section and the key of every error, and lists the valid keys when a key is unknown. The checks of plain
values (strings, booleans, integers, numbers, choices) are :mod:`cnn_aliasing.validation`'s; this module
adds those of TOML's paths, lists, tables and radii.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from cnn_aliasing.attacks import parse_eps
from cnn_aliasing.errors import CnnAliasingError
from cnn_aliasing.validation import Check, invalid, is_str
from cnn_aliasing.validation import is_bool as is_bool  # re-exported: the study's specs read it from here

T = TypeVar("T")


def reads(check: Check) -> dict[str, Check]:
    """Metadata of a field read from TOML with ``check``: ``field(metadata=reads(is_int(1)))``."""
    return {"check": check}


def table_keys(cls: type) -> list[str]:
    """The TOML keys a dataclass reads: its checked fields, in order."""
    return [f.name for f in dataclasses.fields(cls) if "check" in f.metadata]


def from_table(cls: type[T], raw: Any, where: str, **extra: Any) -> T:
    """Build ``cls`` from the TOML table ``raw``; ``where`` is e.g. ``"quick.toml: [attack]"``.

    ``extra`` fills fields that are not read from TOML (derived values).
    """
    if not isinstance(raw, Mapping):
        raise invalid(where, "a table", raw)
    valid = table_keys(cls)
    unknown = [key for key in raw if key not in valid]
    if unknown:
        raise CnnAliasingError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(valid)}")
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]  # every table class is a dataclass
        if "check" not in f.metadata:
            continue
        if f.name in raw:
            values[f.name] = f.metadata["check"](raw[f.name], f"{where}: {f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise CnnAliasingError(f"{where}: the key {f.name!r} is required")
    return cls(**values, **extra)


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


def is_eps(value: Any, where: str) -> float:
    """A radius: a number or a fraction string such as "8/255"."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise invalid(where, 'a number or a fraction such as "8/255"', value)
    try:
        return parse_eps(value)
    except CnnAliasingError as error:
        raise CnnAliasingError(f"{where}: {error}") from None


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
