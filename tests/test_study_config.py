"""Study configs: the shipped ones, defaults, paths, errors naming file/section/key, model expansion."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest

from cnn_aliasing import training, zoo
from cnn_aliasing.errors import CnnAliasingError
from cnn_aliasing.study import config_file, expand_models, load_config, parse_config, shipped_configs

CKPT = {"checkpoint": "w.pt", "arch": "preact_resnet18", "robust": False}


def parse(raw: dict[str, Any]) -> Any:
    return parse_config(raw, "s.toml", default_name="s")


def error_of(raw: dict[str, Any]) -> str:
    with pytest.raises(CnnAliasingError) as info:
        parse(raw)
    return str(info.value)


def test_shipped_configs_hold_the_study_settings() -> None:
    assert shipped_configs() == [
        "antialias",
        "antialias-gpu",
        "paper-preact18",
        "paper-selftrained",
        "paper-wrn28",
        "quick",
    ]
    assert Path("configs/quick.toml").resolve() == config_file("quick").resolve()  # the repo symlink
    wrn = load_config("paper-wrn28")
    assert (wrn.attack.name, wrn.attack.norm, wrn.attack.eps) == ("standard", "Linf", 8 / 255)
    assert wrn.data.n_images == 1000 and wrn.attack_images == 1000
    names = [m.name for m in expand_models(wrn.models, wrn.model_dir)]
    assert names == [e.name for e in zoo.select("wrn-28-10")] and "Standard" in names
    preact = expand_models(load_config("paper-preact18").models, Path("models"))
    robust = [e.name for e in zoo.select("robust", "preact-resnet-18")]
    assert [m.name for m in preact[:-1]] == robust
    assert preact[-1].source == {"type": "recipe", "recipe": "paper-baseline", "overrides": {}}
    assert preact[-1].robust is False and preact[-1].arch == "preact_resnet18"
    quick = load_config()
    assert quick.name == "quick" and quick.attack.name == "apgd-ce" and quick.data.n_images == 1000
    assert quick.attack_images == 250 and quick.data.download
    kinds = [type(spec).key for spec in quick.models]
    assert kinds == ["recipe"] * 3 + ["zoo_on_disk"]
    trained = expand_models(quick.models[:-1], quick.model_dir)
    names = ["standard-e1", "standard-e2", "standard-e3", "standard-e4"]
    names += ["fgsm-rs-8-e2", "fgsm-rs-8-e3", "fgsm-rs-8-e4", "fgsm-rs-8-e5", "fgsm-rs-8-e6"]
    assert [m.name for m in trained] == [*names, "noise-e2", "noise-e4"]  # snapshots of three runs
    assert [m.robust for m in trained] == [False] * 4 + [True] * 5 + [False] * 2
    recipes = [training.get_recipe(m.source["recipe"], **m.source["overrides"]) for m in trained]
    assert {(r.objective, r.eps) for r in recipes[4:9]} == {("fgsm-rs", 8 / 255)}
    assert {r.objective for r in recipes[9:]} == {"gaussian-noise"}


def test_defaults_are_filled_in_and_paths_resolve_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = parse({"seed": 7, "attack": {"eps": "4/255"}, "models": [CKPT]})
    assert config.output == tmp_path / "runs" / "s" and config.data.dir == tmp_path / "data"
    assert config.model_dir == tmp_path / "models"
    assert config.models[0].checkpoint == tmp_path / "w.pt"
    resolved = config.to_dict()
    assert resolved["attack"] == {
        "enabled": True,
        "source": "measured",
        "name": "standard",
        "eps": 4 / 255,
        "norm": "Linf",
        "n_images": 1000,
        "batch_size": 250,
        "seed": 7,
        "options": {},
    }
    assert resolved["aliasing"] == {
        "nyquist": "zero",
        "metrics": [],
        "include": [],
        "exclude": [],
        "per_channel": False,
    }
    assert resolved["models"] == [
        {
            "checkpoint": str(tmp_path / "w.pt"),
            "arch": "preact_resnet18",
            "robust": False,
            "args": {},
            "name": None,
        }
    ]
    assert resolved["device"] is None and resolved["spectrum"] == {"enabled": True, "op": None, "image": 0}
    assert resolved["report"] == {"highlight": [], "n_resamples": 2000, "seed": 0}


def test_the_report_section_reaches_the_report_through_the_resolved_config() -> None:
    config = parse({"report": {"highlight": ["a", "b"], "n_resamples": 50, "seed": 3}, "models": [CKPT]})
    assert config.to_dict()["report"] == {"highlight": ["a", "b"], "n_resamples": 50, "seed": 3}


def test_no_attack_section_or_enabled_false_means_no_attack() -> None:
    assert not parse({"models": [CKPT]}).attack.enabled
    off = parse({"attack": {"enabled": False, "name": "apgd-ce"}, "models": [CKPT]})
    assert not off.attack.enabled and off.attack.name == "standard"  # disabled settings do not matter


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            {"modles": [CKPT]},
            "s.toml: unknown top-level key 'modles'; valid top-level keys: name, output, seed",
        ),
        (
            {"attack": {"epsilon": 1}, "models": [CKPT]},
            "s.toml: [attack]: unknown key 'epsilon'; valid keys: enabled",
        ),
        (
            {"models": [{**CKPT, "arg": {}}]},
            "s.toml: [[models]] #1: unknown key 'arg'; valid keys: checkpoint, arch",
        ),
        (
            {"attack": {"eps": "8/0"}, "models": [CKPT]},
            "s.toml: [attack] key eps must be a number >= 0 or a fraction such as \"8/255\", got str '8/0'",
        ),
        (
            {"attack": {"eps": "-1/255"}, "models": [CKPT]},
            "s.toml: [attack] key eps must be a number >= 0 or a fraction",
        ),
        (
            {"attack": {"eps": True}, "models": [CKPT]},
            "s.toml: [attack] key eps must be a number >= 0 or a fraction",
        ),
        ({"models": [{"checkpoint": "w.pt", "arch": "preact_resnet18"}]}, "#1: the key 'robust' is required"),
        (
            {"models": [{"zoo": "Standard", "recipe": "x"}]},
            "one of the keys checkpoint, external, recipe, zoo, zoo_on_disk, zoo_tags; it has recipe and zoo",
        ),
        (
            {"models": [{"name": "x"}]},
            "#1 needs exactly one of the keys checkpoint, external, recipe, zoo, zoo_on_disk, zoo_tags; "
            "it has name",
        ),
        ({"models": []}, "[[models]] must list at least one model"),
        (
            {"models": [{"zoo": "Nope"}]},
            "[[models]] #1 key zoo: unknown zoo model 'Nope'; valid zoo models: Addepalli2021Towards_RN18, ",
        ),
        ({"models": [{"zoo_tags": ["wrn"]}]}, "key zoo_tags: unknown zoo tag 'wrn'; valid tags:"),
        (
            {"models": [{**CKPT, "arch": "vgg"}]},
            "key arch: unknown architecture 'vgg'; valid architectures: ",
        ),
        (
            {"data": {"n_images": 0}, "models": [CKPT]},
            "[data] key n_images must be an integer >= 1, got int 0",
        ),
        ({"data": {"split": "val"}, "models": [CKPT]}, "[data] key split must be one of 'train', 'test'"),
        (
            {"aliasing": {"metrics": ["am"]}, "models": [CKPT]},
            "[aliasing] key metrics: unknown metric(s) 'am'",
        ),
        ({"aliasing": {"nyquist": "x"}, "models": [CKPT]}, "nyquist must be one of 'zero', 'keep_negative'"),
        ({"attack": {"name": "pgdd"}, "models": [CKPT]}, "s.toml: [attack] unknown attack 'pgdd'"),
        ({"attack": {"n_images": 2000}, "models": [CKPT]}, "[attack] n_images = 2000 is more than [data]"),
        ({"spectrum": {"image": 1000}, "models": [CKPT]}, "[spectrum] image = 1000 is not among"),
        ({"attack": [1], "models": [CKPT]}, "s.toml: [attack] must be a table, got list"),
        (
            {"report": {"n_resamples": 0}, "models": [CKPT]},
            "[report] key n_resamples must be an integer >= 1",
        ),
        (
            {"report": {"highlight": "a"}, "models": [CKPT]},
            "[report] key highlight must be a list of strings",
        ),
        (
            {"device": "tpu9", "models": [CKPT]},
            's.toml key device must be "auto" or a torch device name such as cpu, cuda or cuda:1, got str '
            "'tpu9'",
        ),
    ],
)
def test_errors_name_the_file_section_key_and_what_is_valid(raw: dict[str, Any], expected: str) -> None:
    assert expected in error_of(raw)


@pytest.mark.parametrize(
    ("attack", "expected"),
    [
        (
            {"options": {"square": {"n_queries": 0}}},
            "s.toml: [attack] attack 'square' option n_queries must be an integer >= 1, got int 0",
        ),
        (
            {"options": {"fab-t": {"bogus": 1}}},
            "s.toml: [attack] attack 'fab-t': unknown option 'bogus'; valid options: n_target_classes, "
            "n_iter",
        ),
        (
            {"options": {"square": {"p_init": 2.0}}, "name": "apgd-ce"},  # options of an attack not run
            "s.toml: [attack] attack 'square' option p_init must be a number in (0, 1], got float 2.0",
        ),
        (
            {"options": {"apgd-ce": {"rho": "x"}}, "name": "apgd-ce"},
            "s.toml: [attack] attack 'apgd-ce' option rho must be a number in (0, 1], got str 'x'",
        ),
        (
            {"options": {"square": 5}},
            "s.toml: [attack] the options of attack 'square' must be a mapping of option names to values, "
            "got int 5",
        ),
        ({"options": {"sqare": {"n_queries": 5}}}, "s.toml: [attack] attack options given for unknown sqare"),
        (
            {"name": "pgd+"},
            "s.toml: [attack] unknown attack ''; valid presets: apgd-ce, apgd-ce+apgd-t, rand, standard",
        ),
    ],
)
def test_attack_options_are_checked_when_the_config_loads(attack: dict[str, Any], expected: str) -> None:
    assert error_of({"attack": attack, "models": [CKPT]}).startswith(expected)


def test_a_toml_file_with_unknown_keys_or_bad_syntax_is_named(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text('name = "mine"\n[[models]]\nzoo = "Standard"\nweights = 1\n')
    with pytest.raises(
        CnnAliasingError, match=r"mine.toml: \[\[models\]\] #1: unknown key 'weights'; valid keys"
    ):
        load_config(path)
    path.write_text("name = \n")
    with pytest.raises(CnnAliasingError, match=r"mine\.toml: not valid TOML"):
        load_config(path)
    with pytest.raises(CnnAliasingError, match="does not exist"):
        load_config(tmp_path / "other.toml")
    with pytest.raises(
        CnnAliasingError,
        match="shipped configs: antialias, antialias-gpu, paper-preact18, paper-selftrained, paper-wrn28, "
        "quick",
    ):
        load_config("quik")


def test_duplicate_names_skip_the_same_model_and_refuse_different_ones(tmp_path: Path) -> None:
    same = parse({"models": [{"zoo": "Standard"}, {"zoo_tags": ["standard"]}]})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        models = expand_models(same.models, tmp_path)
    assert [m.name for m in models] == ["Standard"]
    assert "[[models]] #2 lists Standard again" in str(caught[0].message)
    clash = parse({"models": [{**CKPT, "name": "m"}, {**CKPT, "checkpoint": "v.pt", "name": "m"}]})
    with pytest.raises(CnnAliasingError, match="two different models are named 'm'"):
        expand_models(clash.models, tmp_path)
    slugs = parse({"models": [{**CKPT, "name": "a b"}, {**CKPT, "checkpoint": "v.pt", "name": "a_b"}]})
    with pytest.raises(CnnAliasingError, match=r"would share the result file a_b\.json"):
        expand_models(slugs.models, tmp_path)


def test_zoo_on_disk_takes_the_checkpoints_present_filtered_by_tags(tmp_path: Path) -> None:
    for name in ("Standard", "Carmon2019Unlabeled", "Wong2020Fast"):
        path = zoo.checkpoint_path(name, tmp_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    config = parse({"model_dir": str(tmp_path), "models": [{"zoo_on_disk": True}]})
    assert [m.name for m in expand_models(config.models, config.model_dir)] == [
        e.name for e in zoo.select() if e.name in ("Standard", "Carmon2019Unlabeled", "Wong2020Fast")
    ]
    robust_wrn = parse({"models": [{"zoo_on_disk": True, "tags": ["robust", "wrn-28-10"]}]})
    assert [m.name for m in expand_models(robust_wrn.models, tmp_path)] == ["Carmon2019Unlabeled"]
    entry = expand_models(robust_wrn.models, tmp_path)[0]
    assert entry.robust is True and entry.source == {"type": "zoo", "zoo": "Carmon2019Unlabeled"}
    assert expand_models(parse({"models": [{"zoo_on_disk": False}]}).models, tmp_path) == []


def test_recipe_specs_take_arch_and_robustness_from_the_recipe_and_check_overrides() -> None:
    config = parse({"models": [{"recipe": "small-fgsm-rs", "overrides": {"epochs": 1}, "name": "fast"}]})
    (model,) = expand_models(config.models, Path("models"))
    assert (model.name, model.arch, model.robust, model.tags) == (
        "fast",
        "preact_resnet18",
        True,
        ("robust", "preact_resnet18"),
    )
    bad = parse({"models": [{"recipe": "small-standard", "overrides": {"epoch": 1}}]})
    with pytest.raises(CnnAliasingError, match=r"\[\[models\]\] #1: .*unknown field 'epoch'"):
        expand_models(bad.models, Path("models"))


@pytest.mark.parametrize(
    ("attack", "needle"),
    [
        ({"eps": 8}, "[attack] a Linf eps of 8 covers the whole pixel range"),
        ({"eps": 0}, "[attack] eps must be above 0"),
        ({"eps": 60, "norm": "L2"}, "[attack] an L2 eps of 60 is above 55.43"),
    ],
)
def test_a_radius_a_user_cannot_have_meant_is_refused_when_the_config_loads(attack, needle) -> None:
    assert needle in error_of({"attack": attack, "models": [CKPT]})
    parse({"attack": {"eps": 0, "enabled": False}, "models": [CKPT]})  # no attack: no radius to check
