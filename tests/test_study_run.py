"""Running studies: every file written, resuming after a kill, failures recorded, --force, the CLI."""

from __future__ import annotations

import html
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cifar_fixtures import make_layout
from cnn_aliasing import data, measure
from cnn_aliasing.attacks import RobustAccuracy, robust_accuracy
from cnn_aliasing.clean_accuracy import clean_accuracy
from cnn_aliasing.cli import main
from cnn_aliasing.models import create_model, save_checkpoint
from cnn_aliasing.plausibility import checkpoint_doubt
from cnn_aliasing.probe import find_downsamplers
from cnn_aliasing.report.results import load_model_result, load_results
from cnn_aliasing.study import parse_config, run_study, runner
from cnn_aliasing.study import specs as study_specs

N_IMAGES, ATTACK_IMAGES = 6, 4
LOAD_CHECKPOINT: Callable[..., Any] = study_specs._load_checkpoint
ARGS = {"width": 4}


def _checkpoint(path: Path, seed: int, *, nan: bool = False) -> Path:
    torch.manual_seed(seed)
    model = create_model("preact_resnet18", **ARGS)
    if nan:
        linear = model.linear
        assert isinstance(linear, torch.nn.Linear)
        with torch.no_grad():
            linear.bias.fill_(float("nan"))
    save_checkpoint(model, path)
    return path


@pytest.fixture
def study_dir(tmp_path: Path) -> Path:
    """Fake CIFAR-10 and three tiny checkpoints: a (robust), b (standard), nan (NaN logits)."""
    make_layout(tmp_path / "data", test_size=N_IMAGES)
    _checkpoint(tmp_path / "a.safetensors", 0)
    _checkpoint(tmp_path / "b.safetensors", 1)
    _checkpoint(tmp_path / "nan.pt", 2, nan=True)
    return tmp_path


def _raw(root: Path, out: str, *names: str, **sections: Any) -> dict[str, Any]:
    robust = {"a": True, "b": False, "nan": False}
    models = [
        {
            "checkpoint": str(root / (f"{n}.pt" if n in ("nan", "missing") else f"{n}.safetensors")),
            "arch": "preact_resnet18",
            "args": ARGS,
            "robust": robust.get(n, False),
            "name": n,
        }
        for n in names
    ]
    return {
        "name": "tiny",
        "output": str(root / out),
        "data": {"dir": str(root / "data"), "n_images": N_IMAGES, "batch_size": 4},
        "attack": {
            "name": "apgd-ce",
            "n_images": ATTACK_IMAGES,
            "batch_size": 4,
            "options": {"apgd-ce": {"n_iter": 2}},
        },
        "aliasing": {"metrics": ["relative_aliasing"]},
        "models": models,
        **sections,
    }


def _run(raw: dict[str, Any], **kwargs: Any) -> Any:
    return run_study(
        parse_config(raw, "tiny.toml", default_name="tiny"), progress=False, report=False, **kwargs
    )


def _read(path: Path) -> Any:
    return json.loads(path.read_text())


def _measurements(record: dict[str, Any]) -> dict[str, Any]:
    """The measured values of a model file (no timings, timestamps or provenance)."""
    robust = dict(record["robust_accuracy"])
    for key in ("elapsed", "attack_seconds"):
        robust.pop(key)
    aliasing = record["aliasing"]
    return {
        "clean": record["clean_accuracy"],
        "robust": robust,
        "ops": aliasing["ops"],
        "status": record["status"],
        "source": record["source"],
    }


def _count_loads(monkeypatch: pytest.MonkeyPatch, fail_on: str | None = None) -> Counter[str]:
    """Count checkpoint loads per model; raise KeyboardInterrupt when ``fail_on`` is loaded (a kill)."""
    loads: Counter[str] = Counter()

    def counting(model: Any, context: Any) -> Any:
        loads[model.name] += 1
        if model.name == fail_on:
            raise KeyboardInterrupt
        return LOAD_CHECKPOINT(model, context)

    monkeypatch.setattr(study_specs, "_load_checkpoint", counting)
    return loads


def _images(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    return data.load_cifar10(root / "data", "test", n_images=N_IMAGES)


def test_a_study_writes_every_file_with_the_measurements_of_direct_calls(study_dir: Path) -> None:
    summary = _run(_raw(study_dir, "out", "a", "b"))
    out = study_dir / "out"
    assert [(m.name, m.status, m.skipped) for m in summary.models] == [
        ("a", "done", False),
        ("b", "done", False),
    ]
    study = _read(out / "study.json")
    assert study["models"] == [
        {"name": "a", "file": "models/a.json", "status": "done"},
        {"name": "b", "file": "models/b.json", "status": "done"},
    ]
    assert study["config"]["attack"]["n_images"] == ATTACK_IMAGES and study["config"]["seed"] == 0
    assert {"version", "torch", "git"} <= set(study["run"]) and study["wall_seconds"] > 0
    images, labels = _images(study_dir)
    for name, robust in (("a", True), ("b", False)):
        record = _read(out / "models" / f"{name}.json")
        assert (record["schema"], record["name"], record["status"], record["error"]) == (
            2,
            name,
            "done",
            None,
        )
        assert (
            record["robust"] is robust and record["arch"] == "preact_resnet18" and record["arch_args"] == ARGS
        )
        assert record["tags"] == ["robust" if robust else "standard", "preact_resnet18"]
        assert record["source"]["type"] == "checkpoint" and len(record["source"]["sha256"]) == 64
        assert record["training"] is None and set(record["timings"]) == {
            "load_s",
            "clean_s",
            "attack_s",
            "aliasing_s",
            "spectrum_s",
        }
        model = create_model("preact_resnet18", **ARGS)
        from cnn_aliasing.models import load_checkpoint

        load_checkpoint(model, record["source"]["checkpoint"])
        direct = clean_accuracy(model, data.iterate_batches(images, labels, 4), progress=False)
        assert record["clean_accuracy"] == {"accuracy": direct.accuracy, "n_images": N_IMAGES}
        assert record["robust_accuracy"]["n_images"] == ATTACK_IMAGES
        assert record["robust_accuracy"]["attack"] == "apgd-ce"
        assert record["robust_accuracy"]["robust_accuracy"] <= record["robust_accuracy"]["clean_accuracy"]
        report = measure(
            model, data.iterate_batches(images, labels, 4), metrics=["relative_aliasing"], progress=False
        )
        ops = record["aliasing"]["ops"]
        assert [op["name"] for op in ops] == [
            d.name for d in find_downsamplers(model, data.to_float(images[:1]))
        ]
        for stored, op in zip(ops, report.ops, strict=True):
            assert stored["aliasing"] == pytest.approx(op.aliasing, rel=1e-9) and stored["count"] == op.count
            assert stored["metrics"]["relative_aliasing"]["mean"] == pytest.approx(
                op.metrics["relative_aliasing"].mean, rel=1e-9
            )
        assert record["spectrum"] == f"spectra/{name}.json"
        spectrum = _read(out / record["spectrum"])
        assert spectrum["model"] == name and spectrum["op"] == ops[0]["name"] and spectrum["image"] == 0
        _check_per_image(record, model, images, labels, report)
    assert sorted(p.name for p in (out / "models").iterdir()) == ["a.json", "b.json"]
    assert not any((out / "state").iterdir())  # attack states are removed once a model is done
    results = load_results(out)
    for model_result in results.models:
        record = _read(out / "models" / f"{model_result.name}.json")
        per_image = model_result.per_image
        assert model_result.dose is None and per_image is not None and per_image.n_attacked == ATTACK_IMAGES
        assert per_image.margin.dtype == np.float64
        assert per_image.margin.tolist() == record["per_image"]["margin"]
        assert per_image.clean.dtype == bool and per_image.robust.dtype == bool
        assert "".join("01"[int(b)] for b in per_image.clean) == record["per_image"]["clean"]
        assert "".join("01"[int(b)] for b in per_image.robust) == record["per_image"]["robust"]
        assert list(per_image.aliasing) == [op["name"] for op in record["aliasing"]["ops"]]
        for op_name, values in per_image.aliasing.items():
            assert values.shape == (N_IMAGES,) and values.tolist() == record["aliasing"]["per_image"][op_name]


def _check_per_image(
    record: dict[str, Any], model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, report: Any
) -> None:
    """A model file's per-image results: the verdicts, margins and per-image AM of direct calls."""
    assert record["dose"] is None  # a checkpoint: its training is unknown
    per_image = record["per_image"]
    assert (per_image["n_measured"], per_image["n_attacked"]) == (N_IMAGES, ATTACK_IMAGES)
    direct = robust_accuracy(
        model.eval(),
        images[:ATTACK_IMAGES],
        labels[:ATTACK_IMAGES],
        8 / 255,
        attack="apgd-ce",
        batch_size=4,
        progress=False,
        attack_options={"apgd-ce": {"n_iter": 2}},
    )
    assert direct.clean_points is not None and direct.robust_points is not None
    assert direct.margins is not None
    with torch.no_grad():
        logits = model(data.to_float(images[:ATTACK_IMAGES])).double()
    clean = [bool(c) for c in (logits.argmax(dim=1) == labels[:ATTACK_IMAGES]).tolist()]
    assert per_image["clean"] == "".join("01"[c] for c in clean)
    assert per_image["robust"] == "".join("01"[bool(r)] for r in direct.robust_points.tolist())
    assert per_image["margin"] == pytest.approx(direct.margins.tolist(), rel=1e-5)
    for margin, ok in zip(per_image["margin"], clean, strict=True):
        assert (margin > 0) == ok
    kept = record["aliasing"]["per_image"]
    assert list(kept) == [op.name for op in report.ops]
    for op in report.ops:
        assert len(kept[op.name]) == N_IMAGES
        assert sum(kept[op.name]) / N_IMAGES == pytest.approx(op.aliasing, rel=1e-9)


def test_a_kill_between_models_resumes_without_recomputing_and_gives_the_same_files(
    study_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _run(_raw(study_dir, "whole", "a", "b"))
    loads = _count_loads(monkeypatch, fail_on="b")
    with pytest.raises(KeyboardInterrupt):
        _run(_raw(study_dir, "killed", "a", "b"))
    killed = study_dir / "killed"
    assert [m["status"] for m in _read(killed / "study.json")["models"]] == ["done", "pending"]
    assert not (killed / "models" / "b.json").exists()
    loads = _count_loads(monkeypatch)
    summary = _run(_raw(study_dir, "killed", "a", "b"))
    assert loads == {"b": 1}  # a was not recomputed
    assert [(m.name, m.skipped) for m in summary.models] == [("a", True), ("b", False)]
    for name in ("a", "b"):
        assert _measurements(_read(killed / "models" / f"{name}.json")) == _measurements(
            _read(study_dir / "whole" / "models" / f"{name}.json")
        )
        assert _read(killed / "spectra" / f"{name}.json") == _read(
            study_dir / "whole" / "spectra" / f"{name}.json"
        )
    assert [m["status"] for m in _read(killed / "study.json")["models"]] == ["done", "done"]


def test_failing_models_are_recorded_and_the_others_finish(study_dir: Path) -> None:
    summary = _run(_raw(study_dir, "out", "missing", "nan", "b"))
    assert [(m.name, m.status) for m in summary.models] == [
        ("missing", "failed"),
        ("nan", "failed"),
        ("b", "done"),
    ]
    assert [m.name for m in summary.failed] == ["missing", "nan"]
    out = study_dir / "out"
    missing = _read(out / "models" / "missing.json")
    assert missing["status"] == "failed" and "missing.pt" in missing["error"] and "\n" not in missing["error"]
    assert (
        missing["clean_accuracy"] is None
        and missing["aliasing"] is None
        and missing["arch"] == "preact_resnet18"
    )
    nan = _read(out / "models" / "nan.json")
    assert nan["error"] == "the model gives non-finite logits (NaN or inf) on the study's images"
    assert len(nan["source"]["sha256"]) == 64 and nan["spectrum"] is None
    assert [m["status"] for m in _read(out / "study.json")["models"]] == ["failed", "failed", "done"]


def test_failed_models_are_retried_and_force_or_new_settings_recompute(
    study_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads = _count_loads(monkeypatch)
    _run(_raw(study_dir, "out", "a", "nan"))
    assert loads == {"a": 1, "nan": 1}
    _run(_raw(study_dir, "out", "a", "nan"))
    assert loads == {"a": 1, "nan": 2}  # done is skipped, failed is retried
    _run(_raw(study_dir, "out", "a", "nan"), force=True)
    assert loads == {"a": 2, "nan": 3}
    _run(_raw(study_dir, "out", "a", "nan", aliasing={"nyquist": "keep_negative"}))
    assert loads == {"a": 3, "nan": 4}
    assert _read(study_dir / "out" / "models" / "a.json")["aliasing"]["nyquist"] == "keep_negative"


def test_a_failure_after_some_measurements_leaves_none_of_them(study_dir: Path) -> None:
    summary = _run(_raw(study_dir, "out", "a", spectrum={"op": "layer9.conv"}))
    record = _read(study_dir / "out" / "models" / "a.json")
    assert summary.models[0].status == "failed" and record["error"].startswith(
        "no down-sampling op named 'layer9.conv'; the model's ops are: layer2.0.shortcut.0, layer2.0.conv1"
    )
    assert [record[k] for k in ("clean_accuracy", "robust_accuracy", "aliasing", "spectrum")] == [None] * 4
    assert record["source"]["sha256"] and set(record["timings"]) >= {"clean_s", "attack_s", "aliasing_s"}


@pytest.mark.parametrize("stale", ["unreadable", "another model"])
def test_an_attack_state_that_does_not_fit_is_discarded(study_dir: Path, stale: str) -> None:
    state = study_dir / "out" / "state" / "a.json"
    state.parent.mkdir(parents=True)
    if stale == "unreadable":
        state.write_text("{not json")
    else:  # a finished state of model b with the study's attack settings, at a's path
        images, labels = _images(study_dir)
        model_b = create_model("preact_resnet18", **ARGS)
        model_b.load_state_dict(load_file(study_dir / "b.safetensors"))
        robust_accuracy(
            model_b.eval(),
            images[:ATTACK_IMAGES],
            labels[:ATTACK_IMAGES],
            8 / 255,
            attack="apgd-ce",
            batch_size=4,
            state_path=state,
            progress=False,
            attack_options={"apgd-ce": {"n_iter": 2}},
        )
    summary = _run(_raw(study_dir, "out", "a"))
    fresh = _run(_raw(study_dir, "fresh", "a"))
    assert summary.models[0].status == fresh.models[0].status == "done" and not state.exists()
    record, expected = (_read(study_dir / d / "models" / "a.json") for d in ("out", "fresh"))
    assert _measurements(record) == _measurements(expected)
    assert record["robust_accuracy"]["model"] == record["model_identity"] == expected["model_identity"]


def test_recipe_models_are_trained_into_the_results_folder(study_dir: Path) -> None:
    tiny = {"arch_args": ARGS, "epochs": 1, "batch_size": 6, "eval_every": 0, "n_train": None}
    raw = _raw(study_dir, "out")
    raw["attack"] = {"enabled": False}
    raw["models"] = [{"recipe": "small-standard", "overrides": tiny, "name": "std"}]
    summary = _run(raw)
    assert summary.models[0].status == "done", summary.models[0].error
    record = _read(study_dir / "out" / "models" / "std.json")
    assert record["source"] == {
        "type": "recipe",
        "recipe": "small-standard",
        "overrides": tiny,
        "checkpoint": "training/std/model.safetensors",
    }
    assert (study_dir / "out" / record["source"]["checkpoint"]).is_file()
    assert (record["arch"], record["arch_args"]["width"], record["robust"]) == ("preact_resnet18", 4, False)
    assert len(record["training"]["history"]) == 1 and record["training"]["recipe"]["seed"] == 0
    assert record["robust_accuracy"] is None and "train_s" in record["timings"]
    assert record["dose"] == 0.0  # standard training
    assert record["per_image"] is None  # no attack
    assert len(record["aliasing"]["per_image"]) == len(record["aliasing"]["ops"])
    result = load_model_result(study_dir / "out" / "models" / "std.json", "models/std.json")
    assert result.dose == 0.0 and result.per_image is not None and result.per_image.n_attacked == 0
    assert all(v.shape == (N_IMAGES,) for v in result.per_image.aliasing.values())


def test_the_per_image_record_holds_the_verdicts_as_bits_and_margins_to_6_digits() -> None:
    result = RobustAccuracy(
        clean_accuracy=0.75,
        robust_accuracy=0.25,
        per_attack=[("apgd-ce", 0.25)],
        n_images=4,
        eps=8 / 255,
        norm="Linf",
        seed=0,
        elapsed=1.0,
        attack="apgd-ce",
        clean_points=torch.tensor([True, True, False, True]),
        robust_points=torch.tensor([True, False, False, False]),
        margins=torch.tensor([1.23456789, -0.000123456789, -2.5, -12345.678], dtype=torch.float64),
    )
    assert runner.per_image_record(result, 6) == {
        "n_measured": 6,
        "n_attacked": 4,
        "clean": "1101",
        "robust": "1000",
        "margin": [1.23457, -0.000123457, -2.5, -12345.7],
    }


@pytest.mark.parametrize(
    ("training", "dose"),
    [
        (None, None),
        ({"history": [], "recipe": {"objective": "standard", "eps": 8 / 255}}, 0.0),
        ({"history": [], "recipe": {"objective": "pgd-at", "eps": 8 / 255}}, 8 / 255),
        ({"history": [], "recipe": {"objective": "fgsm-rs", "eps": 4 / 255}}, 4 / 255),
        ({"history": []}, None),
    ],
)
def test_the_training_dose_is_the_eps_of_adversarial_recipes(training: Any, dose: float | None) -> None:
    assert runner.training_dose(training) == dose


def test_files_of_another_schema_are_recomputed(study_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loads = _count_loads(monkeypatch)
    _run(_raw(study_dir, "out", "a"))
    _run(_raw(study_dir, "out", "a"))
    assert loads == {"a": 1}
    monkeypatch.setattr(runner, "SCHEMA", runner.SCHEMA + 1)  # files written by another format
    _run(_raw(study_dir, "out", "a"))
    assert loads == {"a": 2} and _read(study_dir / "out" / "models" / "a.json")["schema"] == runner.SCHEMA


# ------------------------------------------------------------------------------------------------------ CLI
def _toml(raw: dict[str, Any], path: Path) -> Path:
    """The config as TOML (only the shapes these tests use)."""

    def value(v: Any) -> str:
        if isinstance(v, dict):
            return "{" + ", ".join(f'"{k}" = {value(x)}' for k, x in v.items()) + "}"
        return json.dumps(v)

    lines = [f"{k} = {value(v)}" for k, v in raw.items() if not isinstance(v, (dict, list))]
    for section in ("data", "attack", "aliasing"):
        lines += [f"[{section}]", *(f"{k} = {value(v)}" for k, v in raw[section].items())]
    for model in raw["models"]:
        lines += ["[[models]]", *(f"{k} = {value(v)}" for k, v in model.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_cli_runs_a_study_dry_runs_and_reports_errors_on_one_line(
    study_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _toml(_raw(study_dir, "out", "a", "missing"), study_dir / "tiny.toml")
    assert main(["study", str(config), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert '"name": "tiny"' in printed and "2 models ->" in printed
    assert "1. a: checkpoint (checkpoint=" in printed and "; preact_resnet18; robust" in printed
    assert not (study_dir / "out").exists()
    assert main(["study", str(config), "--quiet", "--no-report", "--out", str(study_dir / "cli")]) == 1
    printed = capsys.readouterr().out
    assert "study tiny: 1/2 models done (0 from an earlier run), 1 failed" in printed
    assert "failed: missing: checkpoint file not found" in printed
    assert _read(study_dir / "cli" / "models" / "a.json")["status"] == "done"
    bad = study_dir / "bad.toml"
    bad.write_text('[[models]]\nzoo = "Standard"\ncolour = 1\n')
    assert main(["study", str(bad), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cnn-aliasing: error: ") and "bad.toml: [[models]] #1: unknown key 'colour'" in err
    assert "\n" not in err


def test_a_study_with_its_report_produces_every_artefact(study_dir: Path) -> None:
    summary = run_study(
        parse_config(_raw(study_dir, "full", "a", "b"), "tiny.toml", default_name="tiny"), progress=False
    )
    out = study_dir / "full"
    assert summary.report == out / "report.html"
    assert summary.answer and list(summary.answer) == _read(out / "statistics.json")["answer"]
    rows = _read(out / "results.json")
    n_ops = len(_read(out / "models" / "a.json")["aliasing"]["ops"])
    assert len(rows) == 2 * n_ops and {r["model"] for r in rows} == {"a", "b"}
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + 2 * n_ops and csv_lines[0].startswith("model,tags,robust,arch")
    figures = {p.name for p in (out / "figures").iterdir()}
    for stem in ("robust_accuracy_vs_aliasing", "aliasing_per_op", "spectrum_a", "spectrum_b"):
        assert {f"{stem}.png", f"{stem}.svg"} <= figures
        assert (out / "figures" / f"{stem}.png").stat().st_size > 1000
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 4 and ">a<" in page and ">b<" in page


def test_reported_robust_accuracy_for_zoo_models_attacks_nothing(study_dir: Path, monkeypatch) -> None:
    from cnn_aliasing import zoo
    from cnn_aliasing.report import build_report
    from cnn_aliasing.study import runner

    torch.manual_seed(4)
    save_checkpoint(zoo.zoo_entry("Wong2020Fast").build(), zoo.checkpoint_path("Wong2020Fast", study_dir))
    raw = _raw(study_dir, "out", "a", model_dir=str(study_dir))
    raw["attack"]["source"] = "reported"
    raw["attack"]["eps"] = "8/255"
    raw["models"].append({"zoo": "Wong2020Fast"})

    def no_attack(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("attacked although the robust accuracy is the reported one")

    monkeypatch.setattr(runner, "robust_accuracy", no_attack)
    summary = _run(raw)
    outcomes = {m.name: m for m in summary.models}
    assert outcomes["Wong2020Fast"].status == "done", outcomes["Wong2020Fast"].error
    assert outcomes["a"].status == "failed" and 'source = "reported" needs zoo models' in outcomes["a"].error
    record = _read(study_dir / "out" / "models" / "Wong2020Fast.json")
    entry = zoo.zoo_entry("Wong2020Fast")
    assert record["robust_accuracy"]["source"] == "reported"
    assert record["robust_accuracy"]["robust_accuracy"] == pytest.approx(entry.autoattack_acc / 100)
    assert record["robust_accuracy"]["n_images"] == 10_000 and record["aliasing"]["ops"]
    images, labels = _images(study_dir)
    model = zoo.load_zoo_model("Wong2020Fast", study_dir)
    direct = clean_accuracy(model, data.iterate_batches(images, labels, 4), progress=False)
    assert record["clean_accuracy"]["accuracy"] == direct.accuracy
    page = build_report(study_dir / "out", progress=False).read_text()
    assert f"{100 * entry.autoattack_acc / 100:.1f}% (reported)" in page
    # random weights under a zoo name: flagged as a probable wrong checkpoint, in the file and the report
    assert record["reported"]["clean_accuracy"] == pytest.approx(entry.clean_acc / 100)
    doubt = checkpoint_doubt("Wong2020Fast", direct.accuracy, N_IMAGES, entry.clean_acc / 100)
    assert doubt is not None and doubt.endswith("probably a wrong checkpoint")
    assert record["warnings"] == [doubt] and outcomes["Wong2020Fast"].warnings == (doubt,)
    assert html.escape(doubt) in page


@pytest.mark.parametrize(
    ("attack", "message"),
    [
        (
            {"source": "reported", "eps": "4/255"},
            r'source = "reported" uses RobustBench.s figures at Linf 8/255',
        ),
        ({"source": "published"}, r"source must be one of"),
    ],
)
def test_reported_source_is_checked_when_the_config_loads(
    study_dir: Path, attack: dict, message: str
) -> None:
    from cnn_aliasing.errors import CnnAliasingError

    raw = _raw(study_dir, "out", "a")
    raw["attack"].update(attack)
    with pytest.raises(CnnAliasingError, match=message):
        parse_config(raw, "tiny.toml", default_name="tiny")


# --------------------------------------------------------------------------------------------- --shard
def test_shard_jobs_into_one_folder_give_the_files_and_report_of_one_run(
    study_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Models a, b, nan at positions 0, 1, 2: shard 0/2 runs a and nan, shard 1/2 runs b and, finding no
    model left, builds the report; the files equal those of one unsharded run."""
    config = _toml(_raw(study_dir, "shared", "a", "b", "nan"), study_dir / "tiny.toml")
    assert main(["study", str(config), "--shard", "0/2", "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "shard 0/2 runs 2 of these:" in plan and "1. a:" in plan and "3. nan:" in plan
    assert "2. b:" not in plan
    assert main(["study", str(config), "--quiet", "--shard", "0/2"]) == 1  # nan fails
    printed = capsys.readouterr().out
    assert "study tiny: 1/2 models done" in printed and "1 model(s) of other shards not finished" in printed
    shared = study_dir / "shared"
    assert not (shared / "models" / "b.json").exists() and not (shared / "report.html").exists()
    assert [m["status"] for m in _read(shared / "study.json")["models"]] == ["done", "pending", "failed"]
    assert main(["study", str(config), "--quiet", "--shard", "1/2"]) == 0
    printed = capsys.readouterr().out
    assert "report: " in printed and (shared / "report.html").is_file()
    answer = _read(shared / "statistics.json")["answer"]
    assert (
        f"the answer (the report's first lines; what each test means: docs/report.md):\n- {answer[0]}"
        in printed
    )
    assert [m["status"] for m in _read(shared / "study.json")["models"]] == ["done", "done", "failed"]
    assert main(["study", str(config), "--quiet", "--out", str(study_dir / "one")]) == 1
    one = study_dir / "one"
    for name in ("a", "b"):
        assert _measurements(_read(shared / "models" / f"{name}.json")) == _measurements(
            _read(one / "models" / f"{name}.json")
        )
    assert _read(shared / "models" / "nan.json")["error"] == _read(one / "models" / "nan.json")["error"]
    assert _read(shared / "study.json")["models"] == _read(one / "study.json")["models"]
    assert _read(shared / "results.json") == _read(one / "results.json")
    assert _read(shared / "study.json")["run"]["shard"] == "1/2"
    assert _read(shared / "models" / "b.json")["run"]["world_size"] == 1


@pytest.mark.parametrize("value", ["2/2", "-1/2", "0/0", "1", "a/b", "1/2/3"])
def test_invalid_shards_are_refused_naming_the_valid_form(
    study_dir: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    config = _toml(_raw(study_dir, "out", "a"), study_dir / "tiny.toml")
    with pytest.raises(SystemExit) as exit_:
        main(["study", str(config), f"--shard={value}"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--shard must be I/N with integers 0 <= I < N (0-based" in err and repr(value) in err
