"""One mechanism for the values users set by name (cnn_aliasing.fields): recipes' fields, attacks' options,
anti-aliasing methods' options and study configs' TOML keys refuse an unknown key with the same class and
the same words, naming every unknown key and listing the valid ones; values are checked and converted."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from torch import nn

from cnn_aliasing.antialias import antialias
from cnn_aliasing.attacks import create_attack
from cnn_aliasing.errors import CnnAliasingError, UnknownKeyError
from cnn_aliasing.fields import check_fields, checked, field_names, read_fields
from cnn_aliasing.study import parse_config
from cnn_aliasing.training import get_recipe
from cnn_aliasing.validation import is_int, is_str

CKPT = {"checkpoint": "w.pt", "arch": "preact_resnet18", "robust": False}


@dataclass(frozen=True)
class Table:
    name: str = field(metadata=checked(is_str))
    size: int = field(default=1, metadata=checked(is_int(1)))
    derived: int = 0  # not a key: filled by the reader


def test_read_fields_checks_keys_requires_and_converts() -> None:
    assert field_names(Table) == ["name", "size"]
    table = read_fields(Table, {"name": "a", "size": 3}, "t.toml: [t]", derived=7)
    assert table == Table("a", 3, 7)
    with pytest.raises(UnknownKeyError) as error:
        read_fields(Table, {"name": "a", "colour": 1, "derived": 2}, "t.toml: [t]")
    assert str(error.value) == "t.toml: [t]: unknown keys 'colour', 'derived'; valid keys: name, size"
    with pytest.raises(CnnAliasingError, match=r"^t.toml: \[t\]: the key 'name' is required$"):
        read_fields(Table, {"size": 2}, "t.toml: [t]")
    with pytest.raises(
        CnnAliasingError, match=r"^t.toml: \[t\] key size must be an integer >= 1, got int 0$"
    ):
        read_fields(Table, {"name": "a", "size": 0}, "t.toml: [t]")
    with pytest.raises(CnnAliasingError, match=r"^t.toml: \[t\] must be a table, got list \[1\]$"):
        read_fields(Table, [1], "t.toml: [t]")


def test_check_fields_stores_converted_values_in_a_frozen_instance() -> None:
    @dataclass(frozen=True)
    class Options:
        n: Any = field(default=2, metadata=checked(lambda value, where: int(is_int(1)(value, where))))

        def __post_init__(self) -> None:
            check_fields(self, "thing 'x'", "option")

    class Two(int):
        pass

    assert type(Options(Two(2)).n) is int
    with pytest.raises(CnnAliasingError, match=r"^thing 'x' option n must be an integer >= 1, got int 0$"):
        Options(0)


def _no_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2))


# every reader of a schema, given the unknown key "bogus": the call, the message up to the first valid keys
UNKNOWN: dict[str, tuple[Callable[[], Any], str]] = {
    "recipe": (
        lambda: get_recipe("small-standard", bogus=1),
        "recipe 'small-standard': unknown field 'bogus'; valid fields: name, description, arch,",
    ),
    "attack": (
        lambda: create_attack("square", bogus=1),
        "attack 'square': unknown option 'bogus'; valid options: n_queries, p_init,",
    ),
    "anti-aliasing method": (
        lambda: antialias(_no_model(), "blurpool", bogus=1),
        "anti-aliasing method 'blurpool': unknown option 'bogus'; valid options: filter_size",
    ),
    "study section": (
        lambda: parse_config({"data": {"bogus": 1}, "models": [CKPT]}, "s.toml", default_name="s"),
        "s.toml: [data]: unknown key 'bogus'; valid keys: dir, split, n_images,",
    ),
    "study top level": (
        lambda: parse_config({"bogus": 1, "models": [CKPT]}, "s.toml", default_name="s"),
        "s.toml: unknown top-level key 'bogus'; valid top-level keys: name, output, seed,",
    ),
    "study model": (
        lambda: parse_config({"models": [{**CKPT, "bogus": 1}]}, "s.toml", default_name="s"),
        "s.toml: [[models]] #1: unknown key 'bogus'; valid keys: checkpoint, arch, robust,",
    ),
}


@pytest.mark.parametrize("reader", list(UNKNOWN))
def test_every_unknown_key_is_one_error_in_the_same_words(reader: str) -> None:
    call, start = UNKNOWN[reader]
    with pytest.raises(UnknownKeyError) as error:
        call()
    assert str(error.value).startswith(start), str(error.value)
