"""Training snapshots (a run's weights after chosen epochs), the studies that measure them as models, and
the Gaussian-noise control objective."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from attack_models import single_thread
from cifar_fixtures import make_layout
from cnn_aliasing.errors import CheckpointError, CnnAliasingError
from cnn_aliasing.study import load_config, parse_config, run_study
from cnn_aliasing.study.runner import training_dose
from cnn_aliasing.study.sharding import Shard, group_index
from cnn_aliasing.study.specs import expand_models
from cnn_aliasing.training import (
    Trainer,
    get_objective,
    get_recipe,
    load_snapshot,
    read_sidecar,
    snapshot_file,
    train,
)

TINY = {
    "arch_args": {"width": 4, "normalize": "cifar10"},
    "n_train": None,
    "batch_size": 16,
    "lr": 0.05,
    "epochs": 3,
    "eval_every": 0,
}


class Killed(Exception):
    pass


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with single_thread():
        yield


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    make_layout(root, train_sizes=(16, 16, 16, 8, 8), test_size=8)
    return root


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_snapshots_are_the_weights_after_their_epochs(cifar_dir: Path, tmp_path: Path, monkeypatch) -> None:
    recipe = get_recipe("small-standard", **TINY, snapshots=[1, 3])
    whole = train(recipe, cifar_dir, tmp_path / "whole", progress=False)
    assert not snapshot_file(tmp_path / "whole", 2).exists()
    last = load_file(snapshot_file(tmp_path / "whole", 3))
    assert _same_weights(last, load_file(whole.checkpoint))

    # the weights after epoch 1 of the same run, as a kill in epoch 2 leaves them in model.safetensors
    step, calls = Trainer.step, []

    def dying(self: Trainer, *args: Any) -> Any:
        calls.append(1)
        if len(calls) == 4 + 1:  # 64 images in batches of 16: the first step of the second epoch
            raise Killed
        return step(self, *args)

    monkeypatch.setattr(Trainer, "step", dying)
    with pytest.raises(Killed):
        train(recipe, cifar_dir, tmp_path / "killed", progress=False)
    after_one = load_file(tmp_path / "killed" / "model.safetensors")
    assert _same_weights(load_file(snapshot_file(tmp_path / "whole", 1)), after_one)
    assert not _same_weights(after_one, last)

    model = load_snapshot(tmp_path / "whole", 1)
    assert not model.training
    assert _same_weights(dict(model.state_dict()), after_one)
    rows = read_sidecar(tmp_path / "whole")["history"]
    assert ["snapshot" in r for r in rows] == [True, False, True]


def test_a_missing_or_foreign_snapshot_is_refused(cifar_dir: Path, tmp_path: Path) -> None:
    recipe = get_recipe("small-standard", **{**TINY, "epochs": 2, "snapshots": [1, 2]})
    train(recipe, cifar_dir, tmp_path / "run", progress=False)
    with pytest.raises(CheckpointError, match=r"no snapshot of epoch 3 \(snapshots kept: 1, 2"):
        load_snapshot(tmp_path / "run", 3)
    # the weights of epoch 2 written under epoch 1's name: their token is not the one the history records
    save_file(
        load_file(snapshot_file(tmp_path / "run", 2)),
        snapshot_file(tmp_path / "run", 1),
        metadata={"commit": "epoch 1 sha256 0"},
    )
    with pytest.raises(CheckpointError, match="is not the snapshot of epoch 1"):
        load_snapshot(tmp_path / "run", 1)


def test_snapshots_beyond_the_last_epoch_are_refused() -> None:
    with pytest.raises(CnnAliasingError, match=r"field snapshots must be epochs from 1 to epochs=3"):
        get_recipe("small-standard", **TINY, snapshots=[1, 4])
    with pytest.raises(CnnAliasingError, match="increasing epochs"):
        get_recipe("small-standard", **TINY, snapshots=[2, 1])


def test_a_study_measures_each_snapshot_of_one_run_as_a_model(
    cifar_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    epochs: list[int] = []
    run_epoch = Trainer.run_epoch

    def counting(self: Trainer, epoch: int, *args: Any, **kwargs: Any) -> Any:
        epochs.append(epoch)
        return run_epoch(self, epoch, *args, **kwargs)

    monkeypatch.setattr(Trainer, "run_epoch", counting)
    overrides = {**TINY, "snapshots": [1, 3]}
    raw = {
        "name": "snap",
        "output": str(tmp_path / "out"),
        "data": {"dir": str(cifar_dir), "n_images": 8, "batch_size": 4},
        "attack": {"enabled": False},
        "models": [{"recipe": "small-standard", "overrides": overrides, "name": "std"}],
    }
    summary = run_study(parse_config(raw, "snap.toml", default_name="snap"), progress=False, report=False)
    assert [(m.name, m.status) for m in summary.models] == [("std-e1", "done"), ("std-e3", "done")]
    assert epochs == [0, 1, 2]  # one run, trained once, for both models
    first, last = (json.loads((tmp_path / "out" / "models" / f"std-e{k}.json").read_text()) for k in (1, 3))
    assert first["source"]["checkpoint"] == "training/std/epoch-001.safetensors"
    assert last["source"]["checkpoint"] == "training/std/epoch-003.safetensors"
    assert [r["epoch"] for r in first["training"]["history"]] == [1]
    assert [r["epoch"] for r in last["training"]["history"]] == [1, 2, 3]
    assert first["model_identity"]["weights_sha256"] != last["model_identity"]["weights_sha256"]


def test_gaussian_noise_objective_against_a_float64_reference() -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(3 * 8 * 8, 10)
    net = torch.nn.Sequential(torch.nn.Flatten(), linear)
    x = torch.rand(5, 3, 8, 8)
    y = torch.tensor([0, 3, 9, 2, 2])
    recipe = get_recipe("small-noise", noise_std=0.25)
    objective = get_objective("gaussian-noise")
    assert not objective.robust
    loss, logits = objective.loss(net, x, y, torch.Generator().manual_seed(7), recipe)
    noise = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(7)).double()
    noisy = (x.double() + 0.25 * noise).clamp(0.0, 1.0)
    ref = F.linear(noisy.flatten(1), linear.weight.double(), linear.bias.double())
    assert torch.allclose(logits.double(), ref, atol=1e-5)
    assert loss.item() == pytest.approx(F.cross_entropy(ref, y).item(), rel=1e-6)


def test_shards_keep_the_snapshots_of_one_run_together() -> None:
    quick = load_config("quick")
    models = expand_models(quick.models[:-1], quick.model_dir)
    groups = [group_index(models, m) for m in models]
    assert groups == [0] * 4 + [1] * 5 + [2] * 2  # standard-e1..e4, fgsm-rs-8-e2..e6, noise-e2, noise-e4
    second = [m.name for m in Shard(1, 2).select(models)]
    assert second == [f"fgsm-rs-8-e{k}" for k in range(2, 7)]  # one job trains that run, alone


def test_the_dose_of_a_control_objective_is_unknown() -> None:
    recipe = {"eps": 8 / 255}
    assert training_dose({"recipe": {**recipe, "objective": "fgsm-rs"}}) == 8 / 255
    assert training_dose({"recipe": {**recipe, "objective": "standard"}}) == 0.0
    assert training_dose({"recipe": {**recipe, "objective": "gaussian-noise"}}) is None
    assert training_dose(None) is None
