"""Jobs the distributed tests run in several processes (each started with torchrun's environment: RANK,
LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and, for reference, in the test's own process:

    python tests/distributed_jobs.py JOB OUT_DIR

``compare`` writes each rank's measurements and robust accuracy to ``OUT_DIR/rank{R}.pt``; ``kill`` has
rank 1 SIGKILL itself in its second attack batch of a resumable evaluation; ``die`` and ``stall`` have
rank 1 SIGKILL itself, or sleep twice the collectives' timeout, where rank 0 waits for it in a collective,
and rank 0 writes the error it got and how long it waited to ``OUT_DIR/error0.txt``.

Training: ``steps`` runs one epoch of :func:`train_steps` per objective and saves each rank's per-step
(summed loss, images) and final weights to ``OUT_DIR/steps{R}.pt``; ``train_stop`` trains the run of
:func:`run_recipe` on ``OUT_DIR/data`` into ``OUT_DIR/run`` and stops (KeyboardInterrupt on every rank)
in its second epoch, counting each rank's writes of the run folder in ``OUT_DIR/writes{R}.txt``;
``train_die`` has rank 1 SIGKILL itself in its second step of that run, rank 0 recording its error.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attack_models import images, predicted, tiny_cnn
from cnn_aliasing import distributed, measure, training
from cnn_aliasing.attacks import robust_accuracy
from cnn_aliasing.attacks.robust import _Cascade
from cnn_aliasing.spectral import PER_MAP_METRICS
from cnn_aliasing.training import loop as training_loop

N_IMAGES, BATCH = 7, 2  # 4 batches: an uneven split over 2 ranks
ATTACK = "apgd-ce+apgd-t"
ATTACK_OPTIONS = {"apgd-ce": {"n_iter": 5}, "apgd-t": {"n_iter": 3, "n_target_classes": 2}}
N_ATTACKED, ATTACK_BATCH = 13, 2  # 7 batches per attack at most
EPS = 3 / 255  # APGD-CE fools 4 of the 11 points classified correctly, APGD-T one more


def measured_model() -> nn.Module:
    """Two down-sampling ops (a strided conv, a max pool) on 3 x 8 x 8 images."""
    torch.manual_seed(5)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(6 * 2 * 2, 10),
    ).eval()


def measure_shard(**options: Any) -> dict[str, Any]:
    """This rank's share of the images, measured across the ranks; the report as a dict."""
    x = images(N_IMAGES, seed=2)
    shard = distributed.shard_range(N_IMAGES)
    mine = x[shard.start : shard.stop].split(BATCH)
    report = measure(measured_model(), mine, progress=False, across_ranks=True, **options)
    return report.to_dict()


def attack_data() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A tiny CNN, 13 images and labels (its predictions, two of them wrong)."""
    model = tiny_cnn(seed=4)
    x = images(N_ATTACKED, seed=3)
    return model, x, predicted(model, x, n_wrong=2)


def attack(state_path: Path | None = None) -> Any:
    """The robust accuracy of :func:`attack_data` under APGD-CE then APGD-T, across the ranks."""
    model, x, y = attack_data()
    return robust_accuracy(
        model,
        x,
        y,
        EPS,
        attack=ATTACK,
        attack_options=ATTACK_OPTIONS,
        batch_size=ATTACK_BATCH,
        seed=1,
        state_path=state_path,
        return_adversarial=True,
        progress=False,
        across_ranks=True,
    )


EXACT: dict[str, Any] = {"metrics": PER_MAP_METRICS, "per_channel": True, "per_image": True}
SAMPLED: dict[str, Any] = {"sample_channels": 3, "seed": 2, "per_image": True}


def compare(out: Path) -> None:
    exact, sampled = measure_shard(**EXACT), measure_shard(**SAMPLED)
    result = attack()
    rank = distributed.current().rank
    torch.save({"exact": exact, "sampled": sampled, "robust": robust_fields(result)}, out / f"rank{rank}.pt")


def robust_fields(result: Any) -> dict[str, Any]:
    """What two runs of :func:`attack` must agree on (timings aside)."""
    fields = result.to_dict()
    for name in ("elapsed", "attack_seconds"):
        del fields[name]
    return {
        **fields,
        "clean_points": result.clean_points,
        "robust_points": result.robust_points,
        "margins": result.margins,
        "adversarial": result.adversarial,
    }


def _die_in_call(owner: Any, name: str, n: int, action: Any) -> None:
    """Make rank 1 run ``action`` just before its ``n``-th call of ``owner.name``."""
    original = getattr(owner, name)
    calls = [0]

    def dying(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == n and distributed.current().rank == 1:
            action()
        return original(*args, **kwargs)

    setattr(owner, name, dying)


def kill(out: Path) -> None:
    _die_in_call(_Cascade, "_attack_batch", 2, lambda: os.kill(os.getpid(), signal.SIGKILL))
    attack(out / "state.json")


def _waited_for_peer(out: Path, action: Any) -> None:
    """Rank 1 runs ``action`` in the all-reduce of a measurement; rank 0 records the error it gets."""
    _die_in_call(distributed, "all_reduce_sum", 1, action)
    began = time.monotonic()
    try:
        measure_shard()
    except distributed.DistributedError as error:
        rank = distributed.current().rank
        (out / f"error{rank}.txt").write_text(f"{time.monotonic() - began:.3f}\n{error}")
        raise


def die(out: Path) -> None:
    _waited_for_peer(out, lambda: os.kill(os.getpid(), signal.SIGKILL))


def stall(out: Path) -> None:
    _waited_for_peer(out, lambda: time.sleep(2 * distributed.timeout_seconds()))


# ------------------------------------------------------------------------------------------- training
N_TRAIN, GLOBAL_BATCH = 17, 7  # batches of 7, 7, 3: uneven over 2 ranks (4 + 3, 4 + 3, 2 + 1)
STEP_OBJECTIVES = ("standard", "fgsm")  # fgsm has no random start: the same attack in any rank count


def step_recipe(objective: str) -> training.Recipe:
    """A recipe for :func:`train_steps` (only its optimiser, schedule, augmentation and objective matter)."""
    return training.get_recipe(
        "small-standard",
        objective=objective,
        batch_size=GLOBAL_BATCH,
        crop_padding=2,
        lr=0.2,
        epochs=1,
        eps=8 / 255,
    )


def train_steps(objective: str) -> tuple[list[tuple[float, int]], dict[str, torch.Tensor]]:
    """One epoch of :func:`tiny_cnn` (no BatchNorm) on 17 random uint8 images in global batches of 7, on
    this rank's slices: each step's (summed loss, images) of this rank and the final weights."""
    x = (images(N_TRAIN, seed=6) * 255).to(torch.uint8)
    y = torch.arange(N_TRAIN) % 10
    trainer = training.Trainer(
        step_recipe(objective), tiny_cnn(seed=7), torch.device("cpu"), context=distributed.current()
    )
    steps: list[tuple[float, int]] = []
    step = trainer.step

    def recorded(
        images: torch.Tensor, labels: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        loss, correct = step(images, labels, *args, **kwargs)
        steps.append((loss.item(), len(distributed.shard_range(labels.shape[0], trainer.context))))
        return loss, correct

    trainer.step = recorded  # type: ignore[method-assign]
    trainer.run_epoch(0, x, y, progress=False)
    return steps, {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def steps(out: Path) -> None:
    rank = distributed.current().rank
    torch.save({o: train_steps(o) for o in STEP_OBJECTIVES}, out / f"steps{rank}.pt")


RUN_TRAIN, RUN_BATCH = 61, 14  # batches of 14 x 4 and 5: uneven over 2 ranks


def run_recipe() -> training.Recipe:
    """Two epochs of a width-4 PreAct ResNet-18 on 61 of the fake train images, tracked every epoch."""
    return training.get_recipe(
        "small-standard",
        arch_args={"width": 4, "normalize": "cifar10"},
        n_train=RUN_TRAIN,
        batch_size=RUN_BATCH,
        epochs=2,
        eval_images=4,
        eval_pgd_steps=1,
    )


def train_run(out: Path) -> Any:
    return training.train(run_recipe(), out / "data", out / "run", device="cpu", progress=False)


def train_stop(out: Path) -> None:
    rank = distributed.current().rank
    writes = out / f"writes{rank}.txt"
    writes.write_text("0")
    write_run = training_loop.write_run

    def counted(*args: Any) -> None:
        writes.write_text(str(int(writes.read_text()) + 1))
        write_run(*args)

    training_loop.write_run = counted  # type: ignore[assignment]
    run_epoch = training.Trainer.run_epoch
    calls = [0]

    def stopping(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == 2:
            raise KeyboardInterrupt  # every rank stops in the second epoch, after the first was saved
        return run_epoch(self, *args, **kwargs)

    training.Trainer.run_epoch = stopping  # type: ignore[method-assign]
    train_run(out)


def train_die(out: Path) -> None:
    _die_in_call(training.Trainer, "step", 2, lambda: os.kill(os.getpid(), signal.SIGKILL))
    began = time.monotonic()
    try:
        train_run(out)
    except distributed.DistributedError as error:
        (out / f"error{distributed.current().rank}.txt").write_text(
            f"{time.monotonic() - began:.3f}\n{error}"
        )
        raise


JOBS = {
    "compare": compare,
    "kill": kill,
    "die": die,
    "stall": stall,
    "steps": steps,
    "train_stop": train_stop,
    "train_die": train_die,
}

if __name__ == "__main__":
    job, folder = sys.argv[1:]
    torch.set_num_threads(1)
    distributed.init_from_env("cpu")
    JOBS[job](Path(folder))
