"""A synthetic study results folder (docs/results-format.md) for the report's tests, and checks of it.

``make_results(root)`` writes study.json, models/*.json (robust and standard models of one architecture,
one model of another architecture without an attack, one failed model, one with a training history) and
one spectrum file made with the real spectral.spectrum / spectral.fold, so it is consistent.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnn_aliasing import spectral

OPS = ["layer2.0.shortcut.0", "layer2.0.conv1", "layer3.0.conv1"]
WRN_OPS = ["block2.layer.0.conv1", "block3.layer.0.conv1"]
# name -> (robust, robust accuracy, AM scale); robust models alias less and are more robust
MODELS: dict[str, tuple[bool, float, float]] = {
    "robust-a": (True, 0.52, 0.30),
    "robust-b": (True, 0.48, 0.40),
    "robust-c": (True, 0.45, 0.55),
    "standard-a": (False, 0.02, 1.00),
    "standard-b": (False, 0.00, 1.20),
    "standard-c": (False, 0.01, 0.90),
}
#: the training eps of each model (a dose design: 0, 2/255, 4/255, 8/255)
DOSES = {"robust-a": 8 / 255, "robust-b": 4 / 255, "robust-c": 2 / 255}
N_MEASURED, N_ATTACKED = 10, 8
TRAINED = "robust-a"
SPECTRUM_MODEL = "standard-a"
FAILED = "broken"
WRN = "wrn-standard"


def op_entry(name: str, am: float, *, variant: bool = True) -> dict[str, Any]:
    """One op of an AliasingReport.to_dict(), AM ``am``."""
    metrics: dict[str, Any] = {"aliasing": {"mean": am, "std": am / 2, "count": 640, "per_channel": None}}
    if variant:
        metrics["relative_aliasing"] = {"mean": am / 10, "std": 0.01, "count": 640, "per_channel": None}
    return {
        "name": name,
        "kind": "conv",
        "factor": [2, 2],
        "full_size": [16, 16],
        "channels": 64,
        "aliasing": am,
        "std": am / 2,
        "count": 640,
        "metrics": metrics,
    }


def model_file(name: str, robust: bool, robust_acc: float | None, ams: dict[str, float], arch: str) -> dict:
    """A finished model's file."""
    attack = None
    if robust_acc is not None:
        attack = {
            "clean_accuracy": 0.8,
            "robust_accuracy": robust_acc,
            "per_attack": [{"attack": "apgd-ce", "robust_accuracy": robust_acc}],
            "attack_seconds": [],
            "n_images": 100,
            "eps": 8 / 255,
            "norm": "Linf",
            "seed": 0,
            "elapsed": 3.0,
            "attack": "apgd-ce",
        }
    return {
        "schema": 1,
        "name": name,
        "status": "done",
        "error": None,
        "source": {"type": "recipe", "recipe": name, "overrides": {}, "checkpoint": f"training/{name}/m"},
        "arch": arch,
        "arch_args": {"width": 16},
        "robust": robust,
        "tags": ["robust" if robust else "standard", arch],
        "clean_accuracy": {"accuracy": 0.75 if robust else 0.9, "n_images": 100},
        "robust_accuracy": attack,
        "aliasing": {
            "n_images": N_MEASURED,
            "nyquist": "zero",
            "metrics": ["aliasing", "relative_aliasing"],
            "ops": [op_entry(op, am) for op, am in ams.items()],
        },
        "training": None,
        "spectrum": None,
        "timings": {"load_s": 0.1, "clean_s": 1.0, "attack_s": 4.0, "aliasing_s": 0.5},
        "run": {"version": "0.1.0"},
    }


def per_image(content: dict[str, Any], robust_acc: float, seed: int) -> None:
    """Add per-image results to a model file: each op's AM per measured image (mean: the op's AM), and the
    attacked images' verdicts and margins (margins fall as the image's AM in the first op rises)."""
    rng = np.random.default_rng(seed)
    spread = rng.normal(size=N_MEASURED)
    spread -= spread.mean()
    ops = content["aliasing"]["ops"]
    content["aliasing"]["per_image"] = {op["name"]: list(op["aliasing"] * (1 + 0.3 * spread)) for op in ops}
    n_robust = round(robust_acc * N_ATTACKED)
    content["per_image"] = {
        "n_measured": N_MEASURED,
        "n_attacked": N_ATTACKED,
        "clean": "11111101",
        "robust": "1" * n_robust + "0" * (N_ATTACKED - n_robust),
        "margin": list(-spread[:N_ATTACKED] + 0.3 * rng.normal(size=N_ATTACKED)),
    }


def spectrum_file(model: str, op: str, seed: int = 0) -> dict[str, Any]:
    """Spectra of a random 16x16 map, made with the package's spectrum and fold."""
    x = torch.randn(16, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    full = spectral.spectrum(x)
    actual, alias_free = spectral.fold(full, (2, 2), spectral.Nyquist.ZERO)

    def parts(z: torch.Tensor) -> dict[str, list]:
        return {"re": z.real.tolist(), "im": z.imag.tolist()}

    return {
        "schema": 1,
        "model": model,
        "op": op,
        "image": 0,
        "channel": 3,
        "factor": [2, 2],
        "nyquist": "zero",
        "aliasing": float((actual - alias_free).abs().sum()),
        "full": parts(full),
        "actual": parts(actual),
        "alias_free": parts(alias_free),
    }


def training_history() -> dict[str, Any]:
    """A three-epoch history, evaluated after epochs 1 and 3."""
    history = []
    for epoch in (1, 2, 3):
        evaluated = epoch != 2
        history.append(
            {
                "epoch": epoch,
                "lr": 0.1,
                "train_loss": 2.0 / epoch,
                "train_accuracy": 0.3 * epoch,
                "images_per_second": 1000.0,
                "seconds": 5.0,
                "eval": {
                    "clean_accuracy": 0.2 * epoch,
                    "pgd_accuracy": 0.1 * epoch,
                    "aliasing": {op: 1.0 / epoch + i for i, op in enumerate(OPS[:2])},
                }
                if evaluated
                else None,
            }
        )
    return {"history": history, "recipe": {"epochs": 3}}


def write(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")


def make_results(root: Path, *, rename: dict[str, str] | None = None, config: dict | None = None) -> Path:
    """Write the synthetic results folder into ``root``; ``rename`` gives some models other names."""
    rename = rename or {}
    entries = []

    def add(name: str, content: dict[str, Any]) -> None:
        content["name"] = rename.get(name, name)
        slug = "".join(c if c.isalnum() or c in "._-" else "_" for c in content["name"])
        file = f"models/{slug}.json"
        write(root / file, content)
        entries.append({"name": content["name"], "file": file, "status": content["status"]})

    for i, (name, (robust, acc, scale)) in enumerate(MODELS.items()):
        ams = {op: scale * (1.0 + 0.5 * j) for j, op in enumerate(OPS)}
        content = model_file(name, robust, acc, ams, "preact_resnet18")
        content["dose"] = DOSES.get(name, 0.0)
        per_image(content, acc, seed=i)
        if name == TRAINED:
            content["training"] = training_history()
        if name == SPECTRUM_MODEL:
            content["spectrum"] = f"spectra/{name}.json"
            write(root / content["spectrum"], spectrum_file(name, OPS[1], seed=i))
        add(name, content)
    add(WRN, model_file(WRN, False, None, {op: 2.0 for op in WRN_OPS}, "wrn_28_10"))
    add(
        FAILED,
        {
            "schema": 1,
            "name": FAILED,
            "status": "failed",
            "error": "checkpoint not found: /nowhere/w.pt",
            "source": {"type": "checkpoint", "checkpoint": "/nowhere/w.pt"},
            "arch": "preact_resnet18",
            "robust": True,
            "tags": ["robust"],
            "clean_accuracy": None,
            "robust_accuracy": None,
            "aliasing": None,
            "training": None,
            "spectrum": None,
            "timings": {"load_s": 0.0},
        },
    )
    study = {
        "schema": 1,
        "name": "synthetic",
        "config": config if config is not None else {"name": "synthetic", "report": {"n_resamples": 500}},
        "config_path": "/abs/configs/synthetic.toml",
        "run": {
            "package": "cnn-aliasing",
            "version": "0.1.0",
            "torch": "2.x",
            "python": "3.11",
            "git": {"commit": "abc123", "dirty": False},
            "timestamp": "2025-01-01T00:00:00+00:00",
        },
        "models": entries,
        "wall_seconds": 42.0,
    }
    write(root / "study.json", study)
    return root


def test_fixture_spectrum_is_consistent(tmp_path: Path) -> None:
    """The spectrum file's aliasing is sum |Y - Z| and Y folds X (the replicas' sum)."""
    raw = spectrum_file("m", "op")
    full = np.array(raw["full"]["re"]) + 1j * np.array(raw["full"]["im"])
    actual = np.array(raw["actual"]["re"]) + 1j * np.array(raw["actual"]["im"])
    alias_free = np.array(raw["alias_free"]["re"]) + 1j * np.array(raw["alias_free"]["im"])
    folded = full[:8, :8] + full[8:, :8] + full[:8, 8:] + full[8:, 8:]
    np.testing.assert_allclose(actual, folded, atol=1e-12)
    assert abs(np.abs(actual - alias_free).sum() - raw["aliasing"]) < 1e-12
    assert raw["aliasing"] > 0.1
