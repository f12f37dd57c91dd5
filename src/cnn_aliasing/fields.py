"""Declared fields: a dataclass whose fields carry checks is the schema of the values users set by name.

One mechanism serves the recipes (fields), the attacks (options) and the study configs' TOML tables
(keys). A field declared ``field(default=..., metadata=checked(check))`` is one users may set; its
:data:`~cnn_aliasing.validation.Check` takes the value and the place it stands and returns the value
(converted where the check says so) or raises :class:`~cnn_aliasing.errors.CnnAliasingError`. A field
without a default is required. Every reader of such a schema says the same things in the same words:

- an unknown key: :class:`~cnn_aliasing.errors.UnknownKeyError`, ``"<where>: unknown <noun> 'x'; valid
  <noun>s: a, b, c"``;
- a missing key: ``"<where>: the <noun> 'x' is required"``;
- a bad value: the check's error at ``"<where> <noun> <name>"`` (e.g. ``"recipe 'pgd-at' field eps must
  be ..."``).

``noun`` is what the schema calls its keys ("field", "option", "key").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

from cnn_aliasing.errors import CnnAliasingError, UnknownKeyError
from cnn_aliasing.validation import Check, invalid

T = TypeVar("T")


def checked(check: Check) -> dict[str, Check]:
    """Metadata of a field users set by name, checked by ``check``:
    ``field(default=1, metadata=checked(is_int(1)))``."""
    return {"check": check}


def _checked_fields(cls: type) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls) if "check" in f.metadata]


def field_names(cls: type) -> list[str]:
    """The keys the dataclass ``cls`` takes: its checked fields, in order."""
    return [f.name for f in _checked_fields(cls)]


def check_keys(keys: Iterable[Any], valid: Sequence[str], where: str, noun: str = "key") -> None:
    """Refuse keys outside ``valid``: an :class:`UnknownKeyError` naming every unknown key and the valid
    ones."""
    unknown = [key for key in keys if key not in valid]
    if unknown:
        raise UnknownKeyError(
            f"{where}: unknown {noun}{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"valid {noun}s: {', '.join(valid) or 'none'}"
        )


def checked_values(cls: type, values: Mapping[str, Any], where: str, noun: str = "key") -> dict[str, Any]:
    """Each of ``values`` that is a checked field of ``cls``, passed through its check (converted)."""
    return {
        f.name: f.metadata["check"](values[f.name], f"{where} {noun} {f.name}")
        for f in _checked_fields(cls)
        if f.name in values
    }


def read_fields(cls: type[T], raw: Any, where: str, noun: str = "key", **extra: Any) -> T:
    """``cls`` built from the mapping ``raw`` (e.g. a TOML table; ``where`` names it, ``"quick.toml:
    [attack]"``): unknown keys and missing required ones are errors, each value is checked and converted.
    ``extra`` fills fields that are not read (derived values)."""
    if not isinstance(raw, Mapping):
        raise invalid(where, "a table", raw)
    check_keys(raw, field_names(cls), where, noun)
    for f in _checked_fields(cls):
        if (
            f.name not in raw
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ):
            raise CnnAliasingError(f"{where}: the {noun} {f.name!r} is required")
    return cls(**checked_values(cls, raw, where, noun), **extra)


def check_fields(obj: Any, where: str, noun: str) -> None:
    """Check every checked field of the dataclass instance ``obj`` (from its ``__post_init__``), storing
    each converted value (frozen dataclasses too)."""
    given = {f.name: getattr(obj, f.name) for f in _checked_fields(type(obj))}
    for name, value in checked_values(type(obj), given, where, noun).items():
        object.__setattr__(obj, name, value)
