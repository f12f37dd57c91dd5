"""Contract tests driven by the registries (as timm parametrizes over ``list_models()``): every registered
attack keeps the threat model and is reproducible, every recipe resolves through ``train --dry-run``,
every study model kind is reachable from a config, every subcommand explains itself."""

from __future__ import annotations

import json

import pytest
import torch

from attack_models import images, single_thread, tiny_cnn
from cnn_aliasing import cli
from cnn_aliasing.attacks import (
    Norm,
    ThreatModel,
    attack_options,
    check_adversarial,
    create_attack,
    list_attacks,
)
from cnn_aliasing.study.specs import SPEC_KINDS
from cnn_aliasing.training import get_recipe, list_recipes

SMALL_BUDGET = {"n_iter": 4, "n_queries": 30, "steps": 3}
"""Option values that keep each attack's run short (applied where the attack has the option)."""


def _small(name: str) -> dict[str, int]:
    return {k: v for k, v in SMALL_BUDGET.items() if k in attack_options(name)}


@pytest.mark.parametrize("norm, eps", [("Linf", 8 / 255), ("L2", 0.5)])
@pytest.mark.parametrize("name", list_attacks())
def test_every_attack_stays_in_the_threat_model_and_repeats_with_its_seed(
    name: str, norm: Norm, eps: float
) -> None:
    model, x = tiny_cnn(), images(12)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:2] = (y[:2] + 1) % 10  # two points misclassified from the start
    attack, threat, before = create_attack(name, **_small(name)), ThreatModel(norm, eps), x.clone()
    with single_thread():
        first = attack(model, x, y, threat, torch.Generator().manual_seed(0))
        second = attack(model, x, y, threat, torch.Generator().manual_seed(0))
    check_adversarial(first, x, threat, name=name)
    assert torch.equal(x, before), "the attack changed its input images"
    assert torch.equal(first, second), "the same seed gave a different result"


@pytest.mark.parametrize("name", list_recipes())
def test_every_recipe_resolves_through_train_dry_run(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["train", "--recipe", name, "--dry-run"])
    shown = json.loads(capsys.readouterr().out)
    assert code == 0 and shown["name"] == name
    assert shown == {**get_recipe(name).to_dict(), "attack_step_used": shown["attack_step_used"]}


@pytest.mark.parametrize("key", SPEC_KINDS.names())
def test_every_study_model_kind_is_named_when_a_config_entry_has_none(key: str) -> None:
    from cnn_aliasing.errors import CnnAliasingError
    from cnn_aliasing.study.specs import parse_model_spec

    with pytest.raises(CnnAliasingError) as error:
        parse_model_spec({"name": "x"}, "[[models]] #1")
    assert key in str(error.value)
    assert SPEC_KINDS.get(key).key == key


@pytest.mark.parametrize("command", cli.SUBCOMMANDS.names())
def test_every_subcommand_has_help_with_an_example(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and out.startswith(f"usage: cnn-aliasing {command}")
    assert cli.SUBCOMMANDS.get(command).example.strip().splitlines()[0].strip() in out
