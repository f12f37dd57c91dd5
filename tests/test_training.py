"""Training: recipes, schedules, augmentation, objectives, tracking, and resumable runs with sidecars."""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from attack_models import single_thread
from cifar_fixtures import make_layout
from cnn_aliasing.errors import CnnAliasingError, UnknownNameError
from cnn_aliasing.models import create_model, load_checkpoint
from cnn_aliasing.probe import find_downsamplers
from cnn_aliasing.resume import StateMismatchError
from cnn_aliasing.training import (
    FIELDS,
    CatastrophicOverfittingWarning,
    Recipe,
    Trainer,
    attack_step,
    get_objective,
    get_recipe,
    learning_rate,
    list_recipes,
    load_trained_model,
    read_sidecar,
    track,
    train,
)
from cnn_aliasing.training.augment import crop_flip, random_crop_flip
from cnn_aliasing.training.recipes import read_catalogue
from cnn_aliasing.training.tracking import overfitting_warning

EPS = 8 / 255
TINY = {"arch_args": {"width": 4, "normalize": "cifar10"}, "n_train": None, "batch_size": 16, "lr": 0.05}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with single_thread():  # tiny models: thread hand-offs cost more than they save on a busy machine
        yield


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    make_layout(root, train_sizes=(16, 16, 16, 8, 8), test_size=8)
    return root


def tiny_recipe(name: str = "small-fgsm-rs", **overrides: Any) -> Recipe:
    """A recipe of the width-4 PreAct ResNet-18 on the 64 fake images, tracked on 8 test images."""
    return get_recipe(name, **{**TINY, "epochs": 3, "eval_images": 8, "eval_pgd_steps": 2, **overrides})


# ----------------------------------------------------------------------------------------------- recipes
def test_paper_baseline_is_the_study_schedule() -> None:
    r = get_recipe("paper-baseline")
    assert (r.epochs, r.batch_size, r.objective) == (200, 512, "standard")
    assert (r.lr, r.momentum, r.weight_decay, r.nesterov) == (0.1, 0.9, 5e-4, False)
    assert (r.schedule, r.milestones, r.gamma, r.warmup_epochs) == ("multistep", (100, 150), 0.1, 1.0)
    assert (r.crop_padding, r.flip) == (4, True)
    assert (r.arch, r.arch_args) == ("preact_resnet18", {"normalize": "cifar10"})


def test_adversarial_recipes_use_the_published_attacks() -> None:
    pgd, fgsm, trades = (get_recipe(n) for n in ("pgd-at", "fgsm-rs", "trades"))
    assert (pgd.objective, pgd.eps, attack_step(pgd), pgd.attack_steps) == ("pgd-at", EPS, 2 / 255, 10)
    assert (fgsm.objective, attack_step(fgsm)) == ("fgsm-rs", 1.25 * EPS)
    assert (trades.objective, trades.trades_beta, attack_step(trades)) == ("trades", 6.0, 2 / 255)
    assert attack_step(get_recipe("fgsm-rs", eps=4 / 255)) == 1.25 * 4 / 255
    assert attack_step(get_recipe("pgd-at", attack_step=0.01)) == 0.01
    assert all(get_objective(r.objective).robust for r in (pgd, fgsm, trades))
    assert not get_objective("standard").robust


def test_small_recipes_are_named_small_and_small() -> None:
    assert {"small-standard", "small-fgsm-rs"} <= set(list_recipes())
    for name in ("small-standard", "small-fgsm-rs"):
        r = get_recipe(name)
        assert r.arch_args["width"] == 16 and r.n_train == 10_000 and r.epochs <= 8
        assert r.description.startswith("SMALL")


def test_a_catalogue_starts_from_shared_fields_and_its_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "recipes.toml"
    path.write_text('[shared.s]\nepochs = 3\nlr = 0.01\n[recipes.a]\nshared = "s"\nlr = 0.02\n[recipes.b]\n')
    a, b = read_catalogue(path)
    assert (a.name, a.epochs, a.lr, a.batch_size) == ("a", 3, 0.02, 512) and b == Recipe(name="b")
    for text, message in [
        ('[shared.s]\n[recipes.a]\nshared = "t"\n', "[recipes.a] shared must be one of s, got str 't'"),
        ("[recipes.a]\nepochs = 0\n", "recipe 'a' field epochs must be an integer >= 1, got int 0"),
        ("[recipes.a]\nepoch = 3\n", "recipe 'a': unknown field 'epoch'; valid fields: name,"),
    ]:
        path.write_text(text)
        with pytest.raises(CnnAliasingError, match=f"^{re.escape(f'{path}: {message}')}"):
            read_catalogue(path)


def test_overrides_and_their_errors() -> None:
    r = get_recipe("small-fgsm-rs", epochs=3, milestones=[2])
    assert r.epochs == 3 and r.milestones == (2,) and get_recipe("small-fgsm-rs").epochs == 5
    assert Recipe.from_dict(r.to_dict()) == r
    with pytest.raises(
        CnnAliasingError, match=r"unknown field 'epoch'.*valid fields: name, description, arch"
    ):
        get_recipe("small-standard", epoch=3)
    with pytest.raises(CnnAliasingError) as error:
        get_recipe("pgd-at", x=1)
    assert all(f in str(error.value) for f in FIELDS)
    for field, value, needle in [
        ("epochs", 0, "recipe 'small-standard' field epochs must be an integer >= 1, got int 0"),
        ("lr", -0.1, "field lr must be a number >= 0, got float -0.1"),
        (
            "objective",
            "mart",
            "field objective must be one of fgsm, fgsm-rs, gaussian-noise, pgd-at, standard, trades, got",
        ),
        ("schedule", "cosine", "must be one of constant, cyclic, multistep, got str 'cosine'"),
        ("arch", "vgg", "field arch must be one of "),
        ("milestones", (150, 100), "increasing epochs"),
        ("autocast", "fp16", "must be one of 'auto', 'bf16', 'off'"),
        ("flip", 1, "field flip must be true or false, got int 1"),
        (
            "n_train",
            0,
            r"field n_train must be an integer >= 1, got int 0 \(or None: the whole train split\)",
        ),
        ("attack_step", 0.0, "field attack_step must be a number > 0"),
        ("downsample", "x", "field downsample must be one of strided, asap, blurpool, flc"),
    ]:
        with pytest.raises(CnnAliasingError, match=needle):
            get_recipe("small-standard", **{field: value})
    valid = "valid recipes: fgsm, fgsm-rs, paper-baseline, pgd-at, small-fgsm"
    with pytest.raises(UnknownNameError, match=f"unknown recipe 'huge'; {valid}"):
        get_recipe("huge")


# --------------------------------------------------------------------------------------------- schedules
def test_multistep_schedule_at_the_milestones() -> None:
    r = get_recipe("paper-baseline")
    for t, lr in [(1, 0.1), (99.999, 0.1), (100, 0.01), (149.5, 0.01), (150, 0.001), (199.99, 0.001)]:
        assert learning_rate(r, t) == pytest.approx(lr, rel=1e-12)


def test_warm_up_scales_the_first_epochs_linearly() -> None:
    r = get_recipe("paper-baseline")  # 1 epoch of linear warm-up, then 0.1 until epoch 100
    for t, lr in [(0, 0.0), (0.25, 0.025), (0.5, 0.05), (1, 0.1), (50, 0.1), (100, 0.01)]:
        assert learning_rate(r, t) == pytest.approx(lr, rel=1e-12, abs=1e-15)
    assert learning_rate(r.replace(warmup_epochs=0.0), 0) == 0.1


def test_cyclic_schedule_known_values() -> None:
    r = get_recipe("fgsm-rs")  # 15 epochs, peak 0.2 at 6
    for t, lr in [(0, 0.0), (3, 0.1), (6, 0.2), (10.5, 0.1), (15, 0.0)]:
        assert learning_rate(r, t) == pytest.approx(lr, abs=1e-12)


def test_training_applies_the_schedule_every_step(cifar_dir: Path, tmp_path: Path, monkeypatch) -> None:
    seen: list[float] = []
    step = Trainer.step

    def spy(self: Trainer, images: torch.Tensor, labels: torch.Tensor, lr: float, *gens: Any) -> Any:
        out = step(self, images, labels, lr, *gens)
        seen.append(self.optimizer.param_groups[0]["lr"])
        return out

    monkeypatch.setattr(Trainer, "step", spy)
    recipe = tiny_recipe("small-standard", schedule="multistep", milestones=(1, 2), lr=0.1, eval_every=0)
    result = train(recipe, cifar_dir, tmp_path / "run", progress=False)
    assert seen == pytest.approx([0.1] * 4 + [0.01] * 4 + [0.001] * 4, rel=1e-12)  # 64 images / 16
    assert [h["lr"] for h in result.history] == pytest.approx([0.1, 0.01, 0.001], rel=1e-12)


# ------------------------------------------------------------------------------------------ augmentation
def _crop_flip_reference(images: torch.Tensor, top: list[int], left: list[int], flip: list[bool], pad: int):
    n, _, h, w = images.shape
    out = torch.zeros_like(images)
    for i in range(n):
        for y in range(h):
            for x in range(w):
                src_x = left[i] + (w - 1 - x if flip[i] else x) - pad
                src_y = top[i] + y - pad
                if 0 <= src_y < h and 0 <= src_x < w:
                    out[i, :, y, x] = images[i, :, src_y, src_x]
    return out


def test_crop_flip_matches_a_loop_reference() -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 7, 9), generator=gen, dtype=torch.uint8)
    top, left = [0, 8, 4, 1, 7, 3], [8, 0, 4, 2, 5, 0]
    flip = [False, True, True, False, True, False]
    got = crop_flip(images, torch.tensor(top), torch.tensor(left), torch.tensor(flip), 4)
    assert got.dtype == torch.uint8
    assert torch.equal(got, _crop_flip_reference(images, top, left, flip, 4))
    centre = torch.full((6,), 4)
    assert torch.equal(crop_flip(images, centre, centre, torch.zeros(6, dtype=torch.bool), 4), images)


def test_random_crop_flip_is_seeded_and_flips_half(device: torch.device) -> None:
    images = torch.rand(2000, 3, 8, 8, device=device)
    a = random_crop_flip(images, 0, True, torch.Generator(device).manual_seed(1))
    b = random_crop_flip(images, 0, True, torch.Generator(device).manual_seed(1))
    assert torch.equal(a, b)
    flipped = (a != images).flatten(1).any(dim=1).float().mean().item()
    assert 0.45 < flipped < 0.55
    assert torch.equal(random_crop_flip(images, 0, False, torch.Generator(device).manual_seed(1)), images)
    shifted = random_crop_flip(images, 2, False, torch.Generator(device).manual_seed(1))
    assert shifted.shape == images.shape and (shifted == 0).any()


# ------------------------------------------------------------------------------------------- objectives
class Recorder(nn.Module):
    """A tiny CNN (no batch norm) that records every input it is called on."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(96, 10)
        )
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().clone())
        return self.net(x)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    return torch.rand(12, 3, 8, 8, generator=gen), torch.randint(0, 10, (12,), generator=gen)


@pytest.mark.parametrize("objective", ["pgd-at", "fgsm-rs", "fgsm", "trades"])
def test_adversarial_training_stays_inside_the_eps_ball(objective: str) -> None:
    x, y = _batch()
    model = Recorder()
    recipe = get_recipe(objective)
    get_objective(objective).loss(model, x, y, torch.Generator().manual_seed(0), recipe)
    dist = torch.stack([(inp - x).abs().amax() for inp in model.inputs])
    assert dist.max() <= EPS + 1e-6
    assert (
        min(inp.min().item() for inp in model.inputs) >= 0 and max(i.max().item() for i in model.inputs) <= 1
    )
    assert dist.max() > EPS / 2  # the attack did perturb
    expected_calls = {"pgd-at": 10 + 1, "fgsm-rs": 1 + 1, "fgsm": 1 + 1, "trades": 1 + 10 + 2}[objective]
    assert len(model.inputs) == expected_calls


def test_pgd_at_and_fgsm_rs_losses_against_a_float64_reference() -> None:
    x, y = _batch()
    for name in ("pgd-at", "fgsm-rs"):
        model = Recorder()
        loss, logits = get_objective(name).loss(
            model, x, y, torch.Generator().manual_seed(0), get_recipe(name)
        )
        adv = model.inputs[-1]
        ref = copy.deepcopy(model.net).double()
        assert loss.item() == pytest.approx(F.cross_entropy(ref(adv.double()), y).item(), rel=1e-5)
        assert torch.equal(logits.argmax(1), ref(adv.double()).argmax(1))
    # FGSM-RS: one step of 1.25 eps from the random start, clipped to the ball and [0, 1]
    start = model.inputs[0].double().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(ref(start), y, reduction="sum"), [start])
    expected = (x.double() + (start + 1.25 * EPS * grad.sign() - x.double()).clamp(-EPS, EPS)).clamp(0, 1)
    assert torch.allclose(adv.double(), expected, atol=1e-6)


def test_plain_fgsm_is_one_step_of_eps_from_the_clean_image() -> None:
    x, y = _batch()
    model = Recorder()
    recipe = get_recipe("fgsm")
    assert attack_step(recipe) == EPS and get_objective("fgsm").robust
    loss, _ = get_objective("fgsm").loss(model, x, y, torch.Generator().manual_seed(0), recipe)
    assert torch.equal(model.inputs[0], x)  # no random start: the gradient is taken at the clean image
    ref = copy.deepcopy(model.net).double()
    start = x.double().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(ref(start), y, reduction="sum"), [start])
    expected = (x.double() + EPS * grad.sign()).clamp(0, 1)
    assert torch.allclose(model.inputs[-1].double(), expected, atol=1e-6)
    assert loss.item() == pytest.approx(F.cross_entropy(ref(expected), y).item(), rel=1e-5)


def test_trades_loss_against_a_float64_reference() -> None:
    x, y = _batch()
    model = Recorder()
    recipe = get_recipe("trades")
    loss, _ = get_objective("trades").loss(model, x, y, torch.Generator().manual_seed(0), recipe)
    adv = model.inputs[-1]  # the outer pass: clean first, then adversarial
    ref = copy.deepcopy(model.net).double()
    p = torch.softmax(ref(x.double()), 1)
    log_q = torch.log_softmax(ref(adv.double()), 1)
    kl = sum((p[i, c] * (p[i, c].log() - log_q[i, c])).item() for i in range(12) for c in range(10)) / 12
    expected = F.cross_entropy(ref(x.double()), y).item() + 6.0 * kl
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert kl > 0
    beta0, _ = get_objective("trades").loss(
        Recorder(), x, y, torch.Generator(), get_recipe("trades", trades_beta=0.0)
    )
    assert beta0.item() == pytest.approx(F.cross_entropy(ref(x.double()), y).item(), rel=1e-5)


def test_a_few_steps_on_a_tiny_model_reduce_the_loss() -> None:
    recipe = get_recipe("small-standard", **{**TINY, "crop_padding": 0, "flip": False})
    torch.manual_seed(0)
    trainer = Trainer(recipe, create_model(recipe.arch, **recipe.arch_args), torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 32, 32), generator=gen, dtype=torch.uint8)
    labels = torch.arange(16) % 10
    losses = [trainer.step(images, labels, 0.05, gen)[0].item() / 16 for _ in range(25)]
    assert losses[-1] < 0.5 * losses[0]
    assert all(math.isfinite(v) for v in losses)


# --------------------------------------------------------------------------------------------- tracking
def test_track_measures_every_downsampler_and_pgd() -> None:
    torch.manual_seed(0)
    model = create_model("preact_resnet18", width=4, normalize="cifar10").train()
    x = torch.rand(8, 3, 32, 32)
    y = torch.arange(8)
    row = track(model, x, y, get_recipe("small-standard", eval_pgd_steps=2))
    assert list(row["aliasing"]) == [d.name for d in find_downsamplers(model, x[:1])]
    assert all(v > 0 for v in row["aliasing"].values())
    assert 0 <= row["pgd_accuracy"] <= row["clean_accuracy"] <= 1
    assert model.training


def test_catastrophic_overfitting_warning() -> None:
    recipe = get_recipe("small-fgsm-rs")
    history = [{"epoch": e + 1, "eval": {"pgd_accuracy": a}} for e, a in enumerate([0.2, 0.35, 0.3])]
    assert overfitting_warning(history, recipe, robust=True) is None
    history.append({"epoch": 4, "eval": {"pgd_accuracy": 0.05}})
    with pytest.warns(
        CatastrophicOverfittingWarning, match="catastrophic overfitting at epoch 4.*0.350 to 0.050"
    ):
        assert overfitting_warning(history, recipe, robust=True) is not None
    assert overfitting_warning(history, recipe, robust=False) is None


# ------------------------------------------------------------------------------------ runs and resuming
class Killed(Exception):
    pass


def test_resume_after_a_kill_is_bit_identical(cifar_dir: Path, tmp_path: Path, monkeypatch) -> None:
    recipe = tiny_recipe()
    whole = train(recipe, cifar_dir, tmp_path / "whole", progress=False)

    step, calls = Trainer.step, []

    def dying(self: Trainer, *args: Any) -> Any:
        calls.append(1)
        if len(calls) == 2 * 4 + 2:  # in the middle of the third epoch
            raise Killed
        return step(self, *args)

    monkeypatch.setattr(Trainer, "step", dying)
    with pytest.raises(Killed):
        train(recipe, cifar_dir, tmp_path / "killed", progress=False)
    assert read_sidecar(tmp_path / "killed")["epochs_done"] == 2
    resumed_steps = []

    def counting(self: Trainer, *args: Any) -> Any:
        resumed_steps.append(1)
        return step(self, *args)

    monkeypatch.setattr(Trainer, "step", counting)
    resumed = train(recipe, cifar_dir, tmp_path / "killed", progress=False)
    assert len(resumed_steps) == 4  # only the third epoch's 4 steps: the first two are not redone

    a, b = load_file(whole.checkpoint), load_file(resumed.checkpoint)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    drop = ("seconds", "images_per_second")
    strip = [[{k: v for k, v in h.items() if k not in drop} for h in r.history] for r in (whole, resumed)]
    assert strip[0] == strip[1] and len(strip[0]) == 3


def test_resuming_on_other_images_is_refused(cifar_dir: Path, tmp_path: Path, monkeypatch) -> None:
    recipe = tiny_recipe("small-standard", epochs=2, eval_every=0)
    run_epoch = Trainer.run_epoch
    calls: list[int] = []

    def dying(self: Trainer, *args: Any, **kwargs: Any) -> Any:
        if calls:
            raise Killed
        calls.append(1)
        return run_epoch(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "run_epoch", dying)
    with pytest.raises(Killed):
        train(recipe, cifar_dir, tmp_path / "run", progress=False)
    monkeypatch.undo()
    other = tmp_path / "other"
    make_layout(other, train_sizes=(16, 16, 16, 8, 9), test_size=8)
    other_images = r'written for data_sha256="[0-9a-f]{64}", this run has .*trained on other images'
    with pytest.raises(StateMismatchError, match=other_images):
        train(recipe, other, tmp_path / "run", progress=False)
    assert train(recipe, cifar_dir, tmp_path / "run", progress=False).sidecar["complete"]


def test_a_complete_run_returns_at_once_and_another_recipe_is_refused(
    cifar_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    recipe = tiny_recipe("small-standard", epochs=1, eval_every=0)
    first = train(recipe, cifar_dir, tmp_path, progress=False)

    def no_training(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("trained again")

    monkeypatch.setattr(Trainer, "run_epoch", no_training)
    assert train(recipe, cifar_dir, tmp_path, progress=False).sidecar == first.sidecar
    differ = r"recipe.epochs=1, this run has recipe.epochs=2, recipe.lr=.*, this run has recipe.lr=0.01"
    with pytest.raises(StateMismatchError, match=differ):
        train(recipe.replace(epochs=2, lr=0.01), cifar_dir, tmp_path, progress=False)
    monkeypatch.undo()
    replaced = train(recipe.replace(lr=0.01), cifar_dir, tmp_path, progress=False, resume=False)
    assert read_sidecar(tmp_path)["recipe"]["lr"] == 0.01 and replaced.sidecar["complete"]


def test_the_sidecar_records_what_was_run(cifar_dir: Path, tmp_path: Path) -> None:
    recipe = tiny_recipe(epochs=2, eval_every=2)
    result = train(recipe, cifar_dir, tmp_path, device="cpu", progress=False)
    sidecar = json.loads((tmp_path / "model.json").read_text())
    assert sidecar == result.sidecar == read_sidecar(tmp_path / "model.safetensors")
    assert result.checkpoint == tmp_path / "model.safetensors"
    assert sidecar["schema"] == 1 and sidecar["recipe"] == recipe.to_dict()
    assert sidecar["model"] == {"name": "preact_resnet18", "args": {"width": 4, "normalize": "cifar10"}}
    assert (sidecar["objective"], sidecar["robust"], sidecar["seed"]) == ("fgsm-rs", True, 0)
    assert (sidecar["epochs"], sidecar["epochs_done"], sidecar["complete"]) == (2, 2, True)
    assert sidecar["attack"] == {"norm": "Linf", "eps": EPS, "step": 1.25 * EPS, "steps": 10}
    assert sidecar["data"]["n_train"] == 64 and sidecar["data"]["split"] == "train"
    assert sidecar["device"] == "cpu" and sidecar["run"]["torch"] == torch.__version__
    assert (sidecar["world_size"], sidecar["backend"], sidecar["sync_batchnorm"]) == (1, None, False)
    assert "git" in sidecar["run"] and sidecar["warnings"] == []
    first, second = sidecar["history"]
    assert [first["epoch"], second["epoch"]] == [1, 2] and first["eval"] is None
    assert set(second) == {
        "epoch",
        "lr",
        "train_loss",
        "train_accuracy",
        "images_per_second",
        "seconds",
        "eval",
        "world_size",
    }
    assert set(second["eval"]) == {"clean_accuracy", "pgd_accuracy", "aliasing"}
    assert len(second["eval"]["aliasing"]) == 6 and 0 <= second["train_accuracy"] <= 1


def test_trained_models_load_like_any_other(cifar_dir: Path, tmp_path: Path) -> None:
    from cnn_aliasing.zoo import load_weights, zoo_entry

    train(tiny_recipe("small-standard", epochs=1, eval_every=0), cifar_dir, tmp_path, progress=False)
    model = load_trained_model(tmp_path)
    assert not model.training
    x = torch.rand(4, 3, 32, 32)
    weights = tmp_path / "model.safetensors"
    plain = load_checkpoint(create_model("preact_resnet18", width=4, normalize="cifar10"), weights)
    via_zoo = load_weights(
        create_model("preact_resnet18", width=4, normalize="cifar10"), weights, zoo_entry("Standard")
    )
    with torch.no_grad():
        out = model(x)
        assert torch.equal(out, plain.eval()(x)) and torch.equal(out, via_zoo.eval()(x))
        assert torch.equal(out, load_trained_model(tmp_path / "model.safetensors")(x))
    with pytest.raises(CnnAliasingError, match="not a cnn-aliasing training run"):
        load_trained_model(tmp_path / "nothing")


def test_divergence_is_an_error_that_keeps_the_last_epoch(cifar_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(CnnAliasingError, match="diverged in epoch 1"):
        recipe = tiny_recipe("small-standard", lr=1e30, schedule="constant", eval_every=0)
        train(recipe, cifar_dir, tmp_path, progress=False)
