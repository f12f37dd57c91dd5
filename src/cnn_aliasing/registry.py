"""One registry mechanism for every named thing users choose: models, attacks, recipes, objectives,
schedules, study model kinds and subcommands.

A :class:`Registry` maps names to entries of one kind. Each name is registered once; names are listed
sorted; an unknown name raises :class:`~cnn_aliasing.errors.UnknownNameError` listing the valid ones, in
the same words for every kind; ``describe`` gives each entry's one-line description (by default the first
line of its docstring). The public ``list_*`` / ``get_*`` functions of each package are thin wrappers.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from cnn_aliasing.errors import UnknownNameError

Entry = TypeVar("Entry")


def docstring_line(entry: object) -> str:
    """The first line of ``entry``'s docstring ('' when it has none)."""
    doc = inspect.getdoc(entry)
    return doc.splitlines()[0] if doc else ""


class Registry(Generic[Entry]):
    """Entries of one kind by name (``kind`` names it in messages: "model", "attack", ...)."""

    def __init__(
        self, kind: str, *, plural: str | None = None, describe: Callable[[Entry], str] = docstring_line
    ) -> None:
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self._describe = describe
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, entry: Entry) -> Entry:
        """Add ``entry`` under ``name``; a name already taken is a programming error (ValueError)."""
        if name in self._entries:
            raise ValueError(f"a {self.kind} named {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def decorator(self, name: str | None = None) -> Callable[[Entry], Entry]:
        """A decorator registering its target under ``name`` (default: the target's ``__name__``)."""

        def register(entry: Entry) -> Entry:
            return self.register(name if name is not None else entry.__name__, entry)  # type: ignore[attr-defined]

        return register

    def get(self, name: str) -> Entry:
        """The entry ``name``; an unknown name is an :class:`UnknownNameError` listing the valid ones."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise UnknownNameError(self.unknown(name)) from None

    def unknown(self, name: object) -> str:
        """The message for an unknown name: what was asked for and every valid name."""
        return f"unknown {self.kind} {name!r}; valid {self.plural}: {', '.join(self.names())}"

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def describe(self) -> dict[str, str]:
        """Each name (sorted) with its entry's one-line description."""
        return {name: self._describe(self._entries[name]) for name in self.names()}

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
