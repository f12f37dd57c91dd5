"""The zoo registry: entries by name, and selection by tag ("robust", "wrn-28-10", "dm_wrn_28_10", ...)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from cnn_aliasing.errors import UnknownNameError
from cnn_aliasing.zoo.cifar10_linf import ENTRIES
from cnn_aliasing.zoo.entry import ZooEntry

ZOO: Mapping[str, ZooEntry] = MappingProxyType({entry.name: entry for entry in ENTRIES})
"""Every zoo entry by name, in the data's order (grouped by architecture)."""


def zoo_entry(name: str) -> ZooEntry:
    """The zoo entry called ``name``; the error lists the valid names."""
    if name not in ZOO:
        raise UnknownNameError(f"unknown zoo model {name!r}; valid zoo models: {', '.join(ZOO)}")
    return ZOO[name]


def zoo_tags() -> list[str]:
    """Every tag some entry carries, sorted."""
    return sorted({tag for entry in ZOO.values() for tag in entry.tags})


def select(*tags: str) -> list[ZooEntry]:
    """The entries carrying every one of ``tags`` (case-insensitive), in zoo order; no tags: all.

    ``select("wrn-28-10")`` gives every WRN-28-10, ``select("robust", "preact-resnet-18")`` the robust
    PreAct ResNet-18s.
    """
    wanted = [tag.lower() for tag in tags]
    unknown = [tag for tag in wanted if tag not in zoo_tags()]
    if unknown:
        raise UnknownNameError(f"unknown zoo tag {unknown[0]!r}; valid tags: {', '.join(zoo_tags())}")
    return [entry for entry in ZOO.values() if all(tag in entry.tags for tag in wanted)]
