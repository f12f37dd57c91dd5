"""The one registry mechanism: registration, lookup, ordering and the unknown-name message, and every
public registry of the package built on it."""

from __future__ import annotations

from typing import Any

import pytest

from cnn_aliasing.cli.registry import SUBCOMMANDS
from cnn_aliasing.errors import UnknownNameError
from cnn_aliasing.registry import Registry, docstring_line


def _entry() -> None:
    """First line.

    More."""


def test_register_get_names_describe() -> None:
    registry: Registry[object] = Registry("widget")
    registry.register("zeta", _entry)
    registry.decorator()(docstring_line)
    registry.decorator("alpha")(len)
    assert registry.names() == ["alpha", "docstring_line", "zeta"]
    assert list(registry) == registry.names() and len(registry) == 3
    assert registry.get("zeta") is _entry and "zeta" in registry and "eta" not in registry
    assert registry.describe()["zeta"] == "First line."
    assert (
        registry.describe()["docstring_line"]
        == "The first line of ``entry``'s docstring ('' when it has none)."
    )
    with pytest.raises(ValueError, match="a widget named 'zeta' is already registered"):
        registry.register("zeta", len)
    with pytest.raises(UnknownNameError) as error:
        registry.get("eta")
    assert str(error.value) == "unknown widget 'eta'; valid widgets: alpha, docstring_line, zeta"
    with pytest.raises(UnknownNameError, match="unknown widget \\['x'\\]"):
        registry.get(["x"])  # type: ignore[arg-type]


def _public_registries() -> list[tuple[Registry[Any], str]]:
    from cnn_aliasing.antialias.swap import METHODS
    from cnn_aliasing.attacks.autoattack import PRESETS
    from cnn_aliasing.attacks.base import ATTACKS
    from cnn_aliasing.models.registry import MODELS
    from cnn_aliasing.study.specs import SPEC_KINDS
    from cnn_aliasing.training.objectives import OBJECTIVES
    from cnn_aliasing.training.recipes import RECIPES
    from cnn_aliasing.training.schedules import SCHEDULES
    from cnn_aliasing.zoo import ZOO

    return [
        (METHODS, "anti-aliasing method"),
        (ATTACKS, "attack"),
        (PRESETS, "attack preset"),
        (MODELS, "model"),
        (SPEC_KINDS, "model spec kind"),
        (OBJECTIVES, "objective"),
        (RECIPES, "recipe"),
        (SCHEDULES, "schedule"),
        (SUBCOMMANDS, "subcommand"),
        (ZOO, "zoo model"),
    ]


@pytest.mark.parametrize(
    "registry, kind", _public_registries(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_every_public_registry_lists_sorted_names_and_describes_each(
    registry: Registry[Any], kind: str
) -> None:
    assert registry.kind == kind and len(registry) > 0
    assert registry.names() == sorted(registry.names())
    descriptions = registry.describe()
    assert list(descriptions) == registry.names()
    assert all(isinstance(text, str) and text for text in descriptions.values()), descriptions
    with pytest.raises(UnknownNameError, match=f"^unknown {kind} 'no-such'; valid {kind}s: "):
        registry.get("no-such")


def test_public_wrappers_use_their_registry() -> None:
    from cnn_aliasing.antialias import list_methods
    from cnn_aliasing.attacks import list_attacks
    from cnn_aliasing.models import list_models
    from cnn_aliasing.training import list_recipes
    from cnn_aliasing.training.objectives import list_objectives
    from cnn_aliasing.training.schedules import list_schedules

    names = {r.kind: r.names() for r, _ in _public_registries()}
    assert list_attacks() == names["attack"] and list_models() == names["model"]
    assert list_recipes() == names["recipe"] and list_objectives() == names["objective"]
    assert list_schedules() == names["schedule"] and list_methods() == names["anti-aliasing method"]
