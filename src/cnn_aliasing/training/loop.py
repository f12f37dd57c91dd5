"""The training loop: :func:`train` runs a recipe into a run folder, resumable after a kill.

Every random stream of an epoch (the shuffle, the augmentation, the attacks' random starts, torch's
global generator) is seeded from (seed, epoch) when the epoch starts, and the weights, optimiser state
and history are saved after every epoch; so a run resumed after a kill continues exactly as an
uninterrupted one (bit for bit on the CPU). The training images stay on the device as uint8; each batch
is augmented and converted there. Loss and accuracy are summed on the device and read only when the
progress bar is refreshed.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from cnn_aliasing.data import load_cifar10, to_float
from cnn_aliasing.errors import CnnAliasingError
from cnn_aliasing.identity import data_sha256
from cnn_aliasing.models import create_model
from cnn_aliasing.provenance import StrPath, run_metadata
from cnn_aliasing.runtime import resolve_device, safe_on_cpu, use_channels_last
from cnn_aliasing.training.augment import random_crop_flip
from cnn_aliasing.training.objectives import attack_step, get_objective
from cnn_aliasing.training.recipes import Recipe
from cnn_aliasing.training.run_folder import (
    COMMIT,
    SCHEMA,
    SIDECAR,
    STATE,
    WEIGHTS,
    is_finished,
    publish,
    read_sidecar,
    read_state,
    weights_commit,
    write_run,
)
from cnn_aliasing.training.schedules import learning_rate
from cnn_aliasing.training.tracking import overfitting_warning, track

REFRESH_EVERY = 10  # steps between progress-bar refreshes (the only host syncs inside an epoch)


@dataclass
class TrainResult:
    """What :func:`train` produced: the weights file and the sidecar written beside it."""

    checkpoint: Path
    sidecar: dict[str, Any]

    @property
    def history(self) -> list[dict[str, Any]]:
        """Per-epoch metrics, as in the sidecar."""
        return self.sidecar["history"]


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed for the random streams of ``epoch`` (0-based) of a run seeded with ``seed``."""
    digest = hashlib.sha256(f"cnn-aliasing train {seed} {epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def use_autocast(recipe: Recipe, device: torch.device) -> bool:
    """Whether the recipe trains under bf16 autocast on ``device`` ("auto": on CUDA only)."""
    return recipe.autocast == "bf16" or (recipe.autocast == "auto" and device.type == "cuda")


class Trainer:
    """A model on its device with the recipe's optimiser and training step (used by :func:`train` and by
    the benchmark)."""

    def __init__(self, recipe: Recipe, model: nn.Module, device: torch.device) -> None:
        self.recipe = recipe
        self.device = device
        self.model = model.to(device)
        self.channels_last = use_channels_last(recipe.channels_last, device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # not in torch's stubs
        self.model.train()
        self.forward: nn.Module = torch.compile(self.model) if recipe.compile else self.model  # type: ignore[assignment]
        self.objective = get_objective(recipe.objective)
        self.autocast = use_autocast(recipe, device)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(),
            lr=recipe.lr,
            momentum=recipe.momentum,
            weight_decay=recipe.weight_decay,
            nesterov=recipe.nesterov,
        )

    def step(
        self, images: torch.Tensor, labels: torch.Tensor, lr: float, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step on a uint8 batch (augmented here); returns the summed loss and the number
        classified correctly, as device tensors (no host sync)."""
        recipe = self.recipe
        x = to_float(random_crop_flip(images, recipe.crop_padding, recipe.flip, generator))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with safe_on_cpu(self.model, self.device, channels_last=self.channels_last):
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                loss, logits = self.objective.loss(self.forward, x, labels, generator, recipe)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        self.optimizer.step()
        n = labels.shape[0]
        return loss.detach().float() * n, (logits.detach().argmax(dim=1) == labels).sum()

    def run_epoch(
        self, epoch: int, images: torch.Tensor, labels: torch.Tensor, *, progress: bool = True
    ) -> dict[str, Any]:
        """Train one epoch (0-based ``epoch``) on uint8 ``images`` on the device; return its metrics."""
        recipe, n = self.recipe, images.shape[0]
        seed = epoch_seed(recipe.seed, epoch)
        torch.manual_seed(seed)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        order = torch.randperm(n, generator=generator, device=self.device)
        steps = math.ceil(n / recipe.batch_size)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        seen = 0
        start = time.perf_counter()
        bar = tqdm(
            total=n, desc=f"epoch {epoch + 1}/{recipe.epochs}", unit="img", leave=False, disable=not progress
        )
        with bar:
            for i in range(steps):
                idx = order[i * recipe.batch_size : (i + 1) * recipe.batch_size]
                lr = learning_rate(recipe, epoch + i / steps)
                batch_loss, batch_correct = self.step(images[idx], labels[idx], lr, generator)
                loss_sum += batch_loss
                correct += batch_correct
                seen += idx.shape[0]
                bar.update(idx.shape[0])
                if progress and ((i + 1) % REFRESH_EVERY == 0 or i + 1 == steps):
                    bar.set_postfix(
                        loss=f"{loss_sum.item() / seen:.3f}",
                        acc=f"{correct.item() / seen:.3f}",
                        lr=f"{lr:.3g}",
                    )
        train_loss, train_correct = loss_sum.item(), correct.item()  # one sync per epoch
        seconds = time.perf_counter() - start
        if not math.isfinite(train_loss):
            raise CnnAliasingError(
                f"training {recipe.name!r} diverged in epoch {epoch + 1}: the loss is {train_loss};"
                f" the state of epoch {epoch} is kept; try a smaller lr (now {recipe.lr})"
                " or more warm-up (lr_peak)"
            )
        return {
            "epoch": epoch + 1,
            "lr": learning_rate(recipe, epoch),
            "train_loss": train_loss / n,
            "train_accuracy": train_correct / n,
            "images_per_second": n / seconds,
            "seconds": seconds,
            "eval": None,
        }


def load_train_data(data_dir: StrPath, recipe: Recipe) -> tuple[torch.Tensor, torch.Tensor]:
    """The train split, or its fixed random subset of ``n_train`` images (drawn with ``subset_seed``)."""
    images, labels = load_cifar10(data_dir, "train", progress=False)
    if recipe.n_train is None:
        return images, labels
    if recipe.n_train > len(images):
        raise CnnAliasingError(
            f"recipe {recipe.name!r}: n_train={recipe.n_train} is more than the {len(images)} images of the "
            f"train split in {data_dir}; valid: 1..{len(images)} or None"
        )
    subset = torch.randperm(len(images), generator=torch.Generator().manual_seed(recipe.subset_seed))
    keep = subset[: recipe.n_train].sort().values
    return images[keep], labels[keep]


def _differing_fields(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))


def _check_same_recipe(out_dir: Path, stored: dict[str, Any], recipe: Recipe) -> None:
    """An error if ``stored`` (a recipe dict found in ``out_dir``) is not ``recipe``."""
    differ = _differing_fields(stored, recipe.to_dict())
    if differ:
        raise CnnAliasingError(
            f"{out_dir} holds a run of another recipe ({stored.get('name')!r}; fields that "
            f"differ: {', '.join(differ)}); choose another output folder, or restart it (resume=False, "
            "--restart) to replace that run"
        )


def _existing_run(out_dir: Path, recipe: Recipe) -> dict[str, Any] | None:
    """The sidecar already in ``out_dir`` if it is of ``recipe``; an error if it is of another recipe."""
    if not (out_dir / SIDECAR).is_file():
        return None
    sidecar = read_sidecar(out_dir)
    _check_same_recipe(out_dir, sidecar["recipe"], recipe)
    return sidecar


def _check_same_data(out_dir: Path, state: dict[str, Any], wanted: str) -> None:
    """An error if the run in ``out_dir`` was trained on other images than ``wanted`` (their hash)."""
    stored = state.get("data_sha256")
    if stored is not None and stored != wanted:
        raise CnnAliasingError(
            f"{out_dir} holds a run trained on other images (data sha256 {stored[:12]}..., these are "
            f"{wanted[:12]}...): the data folder changed; pass the data it was trained on, or restart it "
            "(resume=False, --restart)"
        )


def _is_published(out_dir: Path, commit: str) -> bool:
    """Whether the weights and the sidecar in ``out_dir`` are those of the state with token ``commit``."""
    if weights_commit(out_dir) != commit or not (out_dir / SIDECAR).is_file():
        return False
    return read_sidecar(out_dir).get(COMMIT) == commit


def _new_sidecar(
    recipe: Recipe, data_dir: StrPath, images: torch.Tensor, labels: torch.Tensor, device: torch.device
) -> dict[str, Any]:
    objective = get_objective(recipe.objective)
    return {
        "schema": SCHEMA,
        "recipe": recipe.to_dict(),
        "model": {"name": recipe.arch, "args": recipe.to_dict()["arch_args"]},
        "objective": recipe.objective,
        "robust": objective.robust,
        "attack": (
            {"norm": "Linf", "eps": recipe.eps, "step": attack_step(recipe), "steps": recipe.attack_steps}
            if objective.robust
            else None
        ),
        "seed": recipe.seed,
        "epochs": recipe.epochs,
        "epochs_done": 0,
        "complete": False,
        "history": [],
        "warnings": [],
        "data": {
            "dir": os.fspath(Path(data_dir).expanduser().resolve()),
            "split": "train",
            "n_train": len(images),
            "sha256": data_sha256(images, labels),
            "subset_seed": recipe.subset_seed if recipe.n_train is not None else None,
            "eval_split": "test",
            "eval_images": recipe.eval_images if recipe.eval_every else 0,
        },
        "device": str(device),
        "autocast_bf16": use_autocast(recipe, device),
        "run": run_metadata(),
    }


def _tracked(recipe: Recipe, epoch: int) -> bool:
    """Whether the tracking runs after ``epoch`` (1-based): every ``eval_every`` epochs and the last."""
    return recipe.eval_every > 0 and (epoch % recipe.eval_every == 0 or epoch == recipe.epochs)


def train(
    recipe: Recipe,
    data_dir: StrPath,
    out_dir: StrPath,
    *,
    device: str | torch.device | None = None,
    progress: bool = True,
    resume: bool = True,
) -> TrainResult:
    """Train ``recipe`` on CIFAR-10 from ``data_dir`` into ``out_dir`` and return the result.

    Writes ``out_dir/state.pt``, ``out_dir/model.safetensors`` and ``out_dir/model.json`` (the sidecar)
    after every epoch (see :mod:`cnn_aliasing.training.run_folder`). With ``resume`` a run of the same
    recipe already there continues from its last saved state (a complete one returns at once, one whose
    weights or sidecar a kill left behind the state is repaired first); a run of another recipe is an
    error. Without ``resume`` any run there is replaced.
    """
    out_dir = Path(out_dir).expanduser()
    device = resolve_device(device)
    if resume:
        existing = _existing_run(out_dir, recipe)
        if existing is not None and is_finished(out_dir, existing):
            return TrainResult(out_dir / WEIGHTS, existing)
    else:
        for name in (STATE, SIDECAR, WEIGHTS):
            (out_dir / name).unlink(missing_ok=True)
    state = read_state(out_dir) if resume else None
    if state is not None and state["recipe"] is not None:
        _check_same_recipe(out_dir, state["recipe"], recipe)
    images, labels = load_train_data(data_dir, recipe)
    sidecar = _new_sidecar(recipe, data_dir, images, labels, device)
    eval_batch = None
    if recipe.eval_every:
        eval_images, eval_labels = load_cifar10(data_dir, "test", n_images=recipe.eval_images, progress=False)
        eval_batch = (to_float(eval_images.to(device)), eval_labels.to(device))
    images, labels = images.to(device), labels.to(device)

    torch.manual_seed(recipe.seed)
    trainer = Trainer(recipe, create_model(recipe.arch, **recipe.arch_args), device)
    if state is not None:
        _check_same_data(out_dir, state, sidecar["data"]["sha256"])
        trainer.model.load_state_dict(state["model"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        sidecar.update(
            epochs_done=state["epochs_done"],
            complete=state["epochs_done"] == recipe.epochs,
            history=state["history"],
            warnings=state["warnings"],
        )
        sidecar[COMMIT] = state[COMMIT]
        if not _is_published(out_dir, state[COMMIT]):  # killed between the state and the sidecar: repair
            publish(out_dir, state["model"], sidecar)
    objective = get_objective(recipe.objective)
    epochs = tqdm(
        range(sidecar["epochs_done"], recipe.epochs),
        desc=f"training {recipe.name}",
        unit="epoch",
        initial=sidecar["epochs_done"],
        total=recipe.epochs,
        disable=not progress,
    )
    for epoch in epochs:
        row = trainer.run_epoch(epoch, images, labels, progress=progress)
        if eval_batch is not None and _tracked(recipe, epoch + 1):
            row["eval"] = track(trainer.model, *eval_batch, recipe)
        sidecar["history"].append(row)
        message = overfitting_warning(sidecar["history"], recipe, objective.robust)
        if message is not None:
            sidecar["warnings"].append(
                {"epoch": epoch + 1, "kind": "catastrophic_overfitting", "message": message}
            )
        sidecar.update(epochs_done=epoch + 1, complete=epoch + 1 == recipe.epochs)
        write_run(out_dir, trainer.model, trainer.optimizer, sidecar)
        epochs.set_postfix(_summary(row))
    return TrainResult(out_dir / WEIGHTS, sidecar)


def _summary(row: dict[str, Any]) -> dict[str, str]:
    """The progress-bar postfix of a finished epoch."""
    shown = {"loss": f"{row['train_loss']:.3f}", "acc": f"{row['train_accuracy']:.3f}"}
    if row["eval"] is not None:
        shown["test"] = f"{row['eval']['clean_accuracy']:.3f}"
        shown["pgd"] = f"{row['eval']['pgd_accuracy']:.3f}"
    return shown
