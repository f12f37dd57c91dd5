"""The training loop: :func:`train` runs a recipe into a run folder, resumable after a kill.

Every random stream of an epoch (the shuffle, the augmentation, the attacks' random starts, torch's
global generator) is seeded from (seed, epoch) when the epoch starts, and the weights, optimiser state
and history are saved after every epoch; so a run resumed after a kill continues exactly as an
uninterrupted one (bit for bit on the CPU). The training images stay on the device as uint8; each batch
is augmented and converted there. Loss and accuracy are summed on the device and read only when the
progress bar is refreshed.

Under ``torchrun`` (several ranks) the model is wrapped in ``DistributedDataParallel`` and the recipe's
``batch_size`` stays the global batch: every rank draws the same permutation and the same augmentation
for the whole global batch from the same seeded generator, and trains on its contiguous slice of it
(:func:`cnn_aliasing.distributed.shard_range`), its mean loss weighted by ``local_n * world_size /
global_n`` so that DDP's averaged gradient is the gradient of the global batch's mean loss, as in one
process. Only rank 0 writes the run folder and shows progress; the state holds the unwrapped model and
the epochs done, so a run resumes with any number of ranks. See docs/distributed.md.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnn_aliasing import distributed
from cnn_aliasing.data import load_cifar10, to_float
from cnn_aliasing.errors import CnnAliasingError
from cnn_aliasing.files import StrPath
from cnn_aliasing.models import create_model
from cnn_aliasing.runtime import progress_bar, resolve_device, safe_on_cpu, use_channels_last
from cnn_aliasing.training.augment import crop_flip, crop_flip_draws
from cnn_aliasing.training.objectives import get_objective
from cnn_aliasing.training.recipes import Recipe
from cnn_aliasing.training.run_folder import (
    WEIGHTS,
    check_same_data,
    continue_from,
    new_sidecar,
    resume_point,
    write_run,
    write_snapshot,
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


def epoch_seed(seed: int, epoch: int, rank: int | None = None) -> int:
    """A 63-bit seed for the random streams of ``epoch`` (0-based) of a run seeded with ``seed``; with
    ``rank``, the seed of that rank's own stream (the objective's random starts under several ranks)."""
    text = f"cnn-aliasing train {seed} {epoch}" + ("" if rank is None else f" rank {rank}")
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def use_autocast(recipe: Recipe, device: torch.device) -> bool:
    """Whether the recipe trains under bf16 autocast on ``device`` ("auto": on CUDA only)."""
    return recipe.autocast == "bf16" or (recipe.autocast == "auto" and device.type == "cuda")


def check_sync_batchnorm(sync_batchnorm: bool, context: distributed.Context, device: torch.device) -> None:
    """An error if ``sync_batchnorm`` is asked for several ranks off CUDA (torch's SyncBatchNorm runs on
    GPUs only); in one process the option does nothing."""
    if sync_batchnorm and context.world_size > 1 and device.type != "cuda":
        raise CnnAliasingError(
            f"sync_batchnorm (--sync-batchnorm) needs CUDA devices: torch's SyncBatchNorm does not run on "
            f"{device.type}; train without it (each rank then normalises over its own slice of the batch)"
        )


def check_batches_fill_ranks(n: int, batch_size: int, world_size: int) -> None:
    """An error if some step of an epoch of ``n`` images in global batches of ``batch_size`` would leave a
    rank without an image (a batch smaller than ``world_size``)."""
    smallest = min(batch_size, n - (math.ceil(n / batch_size) - 1) * batch_size)
    if smallest < world_size:
        raise CnnAliasingError(
            f"a training step of {smallest} image(s) cannot be shared by {world_size} ranks (batch_size "
            f"{batch_size} over {n} training images leaves some rank without one); use fewer ranks, or a "
            "batch_size and n_train whose every batch holds at least one image per rank"
        )


class Trainer:
    """A model on its device with the recipe's optimiser and training step (used by :func:`train` and by
    the benchmark).

    With a ``context`` of several ranks the model is wrapped in ``DistributedDataParallel`` (its
    BatchNorm layers first made ``SyncBatchNorm`` if ``sync_batchnorm``); ``model`` stays the unwrapped
    module, whose state is saved.
    """

    def __init__(
        self,
        recipe: Recipe,
        model: nn.Module,
        device: torch.device,
        *,
        context: distributed.Context = distributed.SINGLE,
        sync_batchnorm: bool = False,
    ) -> None:
        self.recipe = recipe
        self.device = device
        self.context = context
        check_sync_batchnorm(sync_batchnorm, context, device)
        if sync_batchnorm and context.world_size > 1:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model.to(device)
        self.channels_last = use_channels_last(recipe.channels_last, device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # not in torch's stubs
        self.model.train()
        wrapped = self.model if context.world_size == 1 else distributed.data_parallel(self.model, device)
        self.forward: nn.Module = torch.compile(wrapped) if recipe.compile else wrapped  # type: ignore[assignment]
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
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        lr: float,
        generator: torch.Generator,
        attack_generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step on a global uint8 batch: the augmentation of the whole batch is drawn from
        ``generator``, then this rank's slice (all of it in one process) is augmented and trained on, the
        objective's random starts drawn from ``attack_generator`` (default ``generator``). Returns this
        rank's summed loss and number classified correctly, as device tensors (no host sync)."""
        recipe, global_n = self.recipe, labels.shape[0]
        top, left, flips = crop_flip_draws(global_n, recipe.crop_padding, recipe.flip, generator)
        part = distributed.shard_range(global_n, self.context)
        mine = slice(part.start, part.stop)
        images, labels = images[mine], labels[mine]
        top, left, flips = (d[mine].to(images.device) for d in (top, left, flips))
        x = to_float(crop_flip(images, top, left, flips, recipe.crop_padding))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        n = labels.shape[0]
        weight = n * self.context.world_size / global_n  # DDP averages over ranks: 1.0 in one process
        with safe_on_cpu(self.model, self.device, channels_last=self.channels_last):
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                loss, logits = self.objective.loss(
                    self.forward, x, labels, attack_generator or generator, recipe
                )
            self.optimizer.zero_grad(set_to_none=True)
            (loss * weight).backward()
        self.optimizer.step()
        return loss.detach().float() * n, (logits.detach().argmax(dim=1) == labels).sum()

    def run_epoch(
        self, epoch: int, images: torch.Tensor, labels: torch.Tensor, *, progress: bool = True
    ) -> dict[str, Any]:
        """Train one epoch (0-based ``epoch``) on uint8 ``images`` on the device; return its metrics."""
        recipe, n, context = self.recipe, images.shape[0], self.context
        check_batches_fill_ranks(n, recipe.batch_size, context.world_size)
        seed = epoch_seed(recipe.seed, epoch)
        torch.manual_seed(seed)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        attack_generator = None  # one process: the objective draws from the epoch's generator, as always
        if context.world_size > 1:  # each rank its own stream, so the shared one stays the same everywhere
            rank_seed = epoch_seed(recipe.seed, epoch, context.rank)
            attack_generator = torch.Generator(device=self.device).manual_seed(rank_seed)
        order = torch.randperm(n, generator=generator, device=self.device)
        steps = math.ceil(n / recipe.batch_size)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        seen = 0
        start = time.perf_counter()
        bar = progress_bar(
            show=progress,
            context=context,
            total=n,
            desc=f"epoch {epoch + 1}/{recipe.epochs}",
            unit="img",
            leave=False,
        )
        with bar:
            for i in range(steps):
                idx = order[i * recipe.batch_size : (i + 1) * recipe.batch_size]
                lr = learning_rate(recipe, epoch + i / steps)
                with distributed.collectives(f"training step {i + 1} of epoch {epoch + 1}"):
                    batch_loss, batch_correct = self.step(
                        images[idx], labels[idx], lr, generator, attack_generator
                    )
                loss_sum += batch_loss
                correct += batch_correct
                seen += len(distributed.shard_range(idx.shape[0], context))
                bar.update(idx.shape[0])
                if not bar.disable and ((i + 1) % REFRESH_EVERY == 0 or i + 1 == steps):
                    bar.set_postfix(
                        loss=f"{loss_sum.item() / seen:.3f}",
                        acc=f"{correct.item() / seen:.3f}",
                        lr=f"{lr:.3g}",
                    )
        totals = distributed.all_reduce_sum(torch.stack([loss_sum.double(), correct.double()]))
        train_loss, train_correct = totals[0].item(), round(totals[1].item())  # one sync per epoch
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
    sync_batchnorm: bool = False,
) -> TrainResult:
    """Train ``recipe`` on CIFAR-10 from ``data_dir`` into ``out_dir`` and return the result.

    Writes ``out_dir/state.pt``, ``out_dir/model.safetensors`` and ``out_dir/model.json`` (the sidecar)
    after every epoch (see :mod:`cnn_aliasing.training.run_folder`). With ``resume`` a run of the same
    recipe already there continues from its last saved state (a complete one returns at once, one whose
    weights or sidecar a kill left behind the state is repaired first); a run of another recipe is an
    error. Without ``resume`` any run there is replaced.

    Under ``torchrun`` every rank calls ``train`` alike: the process group is started
    (:func:`cnn_aliasing.distributed.init_from_env`), the model trained with DistributedDataParallel on
    the same global batches as in one process (see the module docstring), ``sync_batchnorm`` (CUDA only)
    computing BatchNorm statistics over the whole global batch. Rank 0 alone writes and shows progress;
    every rank returns the same result once the files are written. In one process ``sync_batchnorm`` does
    nothing.
    """
    out_dir = Path(out_dir).expanduser()
    device = resolve_device(device)
    context = distributed.init_from_env(device)
    device = context.device(device)
    check_sync_batchnorm(sync_batchnorm, context, device)
    finished, state = resume_point(out_dir, recipe, resume)
    if finished is not None:
        return TrainResult(out_dir / WEIGHTS, finished)
    images, labels = load_train_data(data_dir, recipe)
    check_batches_fill_ranks(len(images), recipe.batch_size, context.world_size)
    autocast = use_autocast(recipe, device)
    sidecar = new_sidecar(recipe, data_dir, images, labels, device, context, sync_batchnorm, autocast)
    eval_batch = None
    if recipe.eval_every and context.is_main:  # the tracking runs on rank 0
        eval_images, eval_labels = load_cifar10(data_dir, "test", n_images=recipe.eval_images, progress=False)
        eval_batch = (to_float(eval_images.to(device)), eval_labels.to(device))
    images, labels = images.to(device), labels.to(device)

    torch.manual_seed(recipe.seed)
    model = create_model(recipe.arch, **recipe.model_args)
    if state is not None:
        check_same_data(out_dir, state, sidecar["data"]["sha256"])
        model.load_state_dict(state["model"])
    trainer = Trainer(recipe, model, device, context=context, sync_batchnorm=sync_batchnorm)
    if state is not None:
        trainer.optimizer.load_state_dict(state["optimizer"])
        continue_from(out_dir, state, sidecar, repair=context.is_main)
    objective = get_objective(recipe.objective)
    epochs = progress_bar(
        range(sidecar["epochs_done"], recipe.epochs),
        show=progress,
        context=context,
        desc=f"training {recipe.name}",
        unit="epoch",
        initial=sidecar["epochs_done"],
        total=recipe.epochs,
    )
    for epoch in epochs:
        row = trainer.run_epoch(epoch, images, labels, progress=progress)
        row["world_size"] = context.world_size
        if epoch + 1 in recipe.snapshots and context.is_main:
            row["snapshot"] = write_snapshot(out_dir, epoch + 1, trainer.model)
        if _tracked(recipe, epoch + 1):
            tracked = track(trainer.model, *eval_batch, recipe) if eval_batch is not None else None
            row["eval"] = distributed.broadcast_object(tracked)
        sidecar["history"].append(row)
        message = overfitting_warning(sidecar["history"], recipe, objective.robust)
        if message is not None:
            sidecar["warnings"].append(
                {"epoch": epoch + 1, "kind": "catastrophic_overfitting", "message": message}
            )
        sidecar.update(epochs_done=epoch + 1, complete=epoch + 1 == recipe.epochs)
        if context.is_main:
            write_run(out_dir, trainer.model, trainer.optimizer, sidecar)
        epochs.set_postfix(_summary(row))
    distributed.barrier()  # every rank returns once rank 0 has written the run
    return TrainResult(out_dir / WEIGHTS, sidecar)


def _summary(row: dict[str, Any]) -> dict[str, str]:
    """The progress-bar postfix of a finished epoch."""
    shown = {"loss": f"{row['train_loss']:.3f}", "acc": f"{row['train_accuracy']:.3f}"}
    if row["eval"] is not None:
        shown["test"] = f"{row['eval']['clean_accuracy']:.3f}"
        shown["pgd"] = f"{row['eval']['pgd_accuracy']:.3f}"
    return shown
