"""Resume state: the state file of a resumable job and the one check that a state belongs to this job.

A resumable job (an attack cascade, a training run) saves where it stands together with what it belongs to:
the model's identity, the data's hash (:mod:`cnn_aliasing.identity`) and the settings. Before it continues,
:func:`check_identity` compares that with what this run would record and refuses a state of anything else
with :class:`StateMismatchError`, naming each entry that differs. :class:`JsonStateFile` writes a JSON state
atomically under its format name and version and reads it back only if both match.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cnn_aliasing.errors import CnnAliasingError
from cnn_aliasing.files import JsonFileError, read_json_object, write_json_atomic

T = TypeVar("T")


class StateMismatchError(CnnAliasingError):
    """A state this run cannot continue: unreadable, of another format or version, or written for other
    settings, another model or other images."""


def _short(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def identity_differences(stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """Each entry in which a state's identity ``stored`` differs from this run's ``wanted``, in key order,
    as ``key=stored, this run has key=wanted``; of two dicts under one key only the entries that differ
    (``key.inner=...``)."""
    differences = []
    for key in sorted(set(stored) | set(wanted)):
        old, new = stored.get(key), wanted.get(key)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            differences += identity_differences(
                {f"{key}.{k}": v for k, v in old.items()}, {f"{key}.{k}": v for k, v in new.items()}
            )
        else:
            differences.append(f"{key}={_short(old)}, this run has {key}={_short(new)}")
    return differences


def check_identity(state: str, stored: Mapping[str, Any], wanted: Mapping[str, Any], remedy: str) -> None:
    """Raise :class:`StateMismatchError` ``"<state> was written for <differences>; <remedy>"`` unless the
    identity ``stored`` in a state equals ``wanted``, what this run would record (see
    :func:`identity_differences`)."""
    differences = identity_differences(stored, wanted)
    if differences:
        raise StateMismatchError(f"{state} was written for {', '.join(differences)}; {remedy}")


@dataclass(frozen=True)
class JsonStateFile:
    """A JSON state file of one ``format`` name and ``version``, replaced atomically at every save.

    ``old_versions`` says, for the error that refuses a state of another version, what older states lack.
    """

    path: Path
    format: str
    version: int
    old_versions: str

    def write(self, body: Mapping[str, Any]) -> None:
        """Replace the file with ``{"format", "version", **body}`` (temp file, fsync, rename)."""
        write_json_atomic(self.path, {"format": self.format, "version": self.version, **body})

    def read(self, parse: Callable[[dict[str, Any]], T]) -> T:
        """The state ``parse`` makes of the file's JSON object; a file that is unreadable, of another format
        or version, or that ``parse`` cannot read (ValueError, KeyError, TypeError) raises
        :class:`StateMismatchError` naming the file."""
        try:
            raw = read_json_object(self.path)
            if raw.get("format") != self.format:
                raise ValueError(f"not a {self.format} file")
            if raw.get("version") != self.version:
                raise ValueError(
                    f"a state of version {raw.get('version')!r} (this version reads {self.version}: "
                    f"{self.old_versions}); it is started afresh when deleted"
                )
            return parse(raw)
        except (JsonFileError, ValueError, KeyError, TypeError) as exc:
            raise StateMismatchError(f"cannot resume from state file {self.path}: {exc!r}") from None
