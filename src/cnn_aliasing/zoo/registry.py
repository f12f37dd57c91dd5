"""The zoo's registries: entries by name (:data:`ZOO`) and by tag (:data:`TAGS`: "robust", "wrn-28-10",
"dm_wrn_28_10", ...), both :class:`~cnn_aliasing.registry.Registry` s like every named thing; listings keep
the data's order (grouped by architecture)."""

from __future__ import annotations

from cnn_aliasing.errors import UnknownNameError
from cnn_aliasing.registry import Registry
from cnn_aliasing.zoo.cifar10_linf import ENTRIES
from cnn_aliasing.zoo.entry import ZooEntry

ZOO: Registry[ZooEntry] = Registry("zoo model", describe=lambda entry: entry.paper.title)
"""Every zoo entry by name."""
TAGS: Registry[tuple[ZooEntry, ...]] = Registry(
    "zoo tag", plural="tags", describe=lambda entries: f"{len(entries)} zoo models"
)
"""The entries carrying each tag (lower case), in the data's order."""


def _register(entries: tuple[ZooEntry, ...]) -> None:
    """Register each entry by name and under each of its tags."""
    for entry in entries:
        ZOO.register(entry.name, entry)
    for tag in sorted({tag for entry in entries for tag in entry.tags}):
        TAGS.register(tag, tuple(entry for entry in entries if tag in entry.tags))


_register(ENTRIES)


def zoo_entry(name: str) -> ZooEntry:
    """The zoo entry called ``name``; the error lists the valid names."""
    return ZOO.get(name)


def zoo_tags() -> list[str]:
    """Every tag some entry carries, sorted."""
    return TAGS.names()


def select(*tags: str) -> list[ZooEntry]:
    """The entries carrying every one of ``tags`` (case-insensitive), in the data's order; no tags: all.

    ``select("wrn-28-10")`` gives every WRN-28-10, ``select("robust", "preact-resnet-18")`` the robust
    PreAct ResNet-18s. An unknown tag is an :class:`UnknownNameError` naming it as given and listing the
    valid ones.
    """
    for tag in tags:
        if tag.lower() not in TAGS:
            raise UnknownNameError(TAGS.unknown(tag))
    return [entry for entry in ENTRIES if all(entry in TAGS.get(tag.lower()) for tag in tags)]
