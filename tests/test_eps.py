"""The one eps parser: a number or a fraction such as "8/255", with one error message, read the same way by
the command line's --eps, the recipes' eps-like fields (--set and catalogue TOML) and the study configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnn_aliasing.eps import is_eps, parse_eps
from cnn_aliasing.errors import CnnAliasingError
from cnn_aliasing.study import parse_config
from cnn_aliasing.training import get_recipe
from cnn_aliasing.training.recipes import read_catalogue

WANTED = 'must be a number >= 0 or a fraction such as "8/255"'


@pytest.mark.parametrize(
    ("text", "value"),
    [("8/255", 8 / 255), ("0.5", 0.5), ("1 / 4", 0.25), (0.1, 0.1), ("0", 0.0), (2, 2.0), ("1e-2", 0.01)],
)
def test_parse_eps(text: str | float, value: float) -> None:
    parsed = parse_eps(text)
    assert parsed == value and type(parsed) is float


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("-1/255", "str '-1/255'"),
        ("eight", "str 'eight'"),
        ("1/0", "str '1/0'"),
        ("", "str ''"),
        (True, "bool True"),
        (float("inf"), "float inf"),
        ("nan", "str 'nan'"),
        (None, "NoneType None"),
    ],
)
def test_parse_eps_refuses_with_one_message(value: object, shown: str) -> None:
    with pytest.raises(CnnAliasingError) as error:
        parse_eps(value)  # type: ignore[arg-type]
    assert str(error.value) == f"eps {WANTED}, got {shown}"


def test_positive_radius_refuses_zero() -> None:
    assert is_eps(positive=True)("1/255", "step") == 1 / 255
    with pytest.raises(
        CnnAliasingError, match=r'^step must be a number > 0 or a fraction such as "8/255", got int 0$'
    ):
        is_eps(positive=True)(0, "step")


def test_recipes_take_fractions_in_overrides_and_in_their_catalogue(tmp_path: Path) -> None:
    r = get_recipe("pgd-at", eps="4/255", attack_step="1/255", eval_pgd_step="1 / 255")
    assert (r.eps, r.attack_step, r.eval_pgd_step) == (4 / 255, 1 / 255, 1 / 255)
    assert r.to_dict()["eps"] == 4 / 255  # stored as the number, as run folders record it
    path = tmp_path / "recipes.toml"
    path.write_text('[recipes.a]\neps = "16/255"\n')
    assert read_catalogue(path)[0].eps == 16 / 255
    with pytest.raises(CnnAliasingError) as error:
        get_recipe("pgd-at", eps="8/x")
    assert str(error.value) == f"recipe 'pgd-at' field eps {WANTED}, got str '8/x'"


def test_study_configs_read_eps_with_the_same_parser() -> None:
    models = [{"checkpoint": "w.pt", "arch": "preact_resnet18", "robust": False}]
    config = parse_config({"attack": {"eps": "4/255"}, "models": models}, "s.toml", default_name="s")
    assert config.attack.eps == 4 / 255
    with pytest.raises(CnnAliasingError) as error:
        parse_config({"attack": {"eps": "8/x"}, "models": models}, "s.toml", default_name="s")
    assert str(error.value) == f"s.toml: [attack] key eps {WANTED}, got str '8/x'"
