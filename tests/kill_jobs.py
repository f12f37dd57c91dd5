"""Jobs the kill tests run twice: in a child process killed with SIGKILL at a chosen point, then resumed in
the test. Run as a script, it arms the kill point and runs one job:

    python tests/kill_jobs.py JOB DATA_DIR OUT_DIR POINT N

POINT is a function the jobs call (see KILL_POINTS); the child sends itself SIGKILL just before the N-th
call of it, so "replace" kills between two files (every atomic write ends in an ``os.replace``), "step"
inside a training epoch and "attack_batch" inside an attack batch.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cnn_aliasing.attacks import robust_accuracy
from cnn_aliasing.attacks.robust import _Cascade
from cnn_aliasing.data import load_cifar10, to_float
from cnn_aliasing.models import create_model, save_checkpoint
from cnn_aliasing.study import parse_config, run_study
from cnn_aliasing.training import Trainer, get_recipe, train

TINY_ARGS = {"width": 4, "normalize": "cifar10"}
TRAIN_EPOCHS, TRAIN_STEPS_PER_EPOCH = 3, 4  # 64 train images in batches of 16
ATTACK_IMAGES, ATTACK_BATCH = 8, 2
KILL_POINTS: dict[str, tuple[Any, str]] = {
    "replace": (os, "replace"),
    "step": (Trainer, "step"),
    "attack_batch": (_Cascade, "_attack_batch"),
}


def train_job(data_dir: Path, out_dir: Path) -> Any:
    """A 3-epoch FGSM-RS run of a width-4 PreAct ResNet-18 on 64 images, tracked every epoch."""
    recipe = get_recipe(
        "small-fgsm-rs",
        arch_args=TINY_ARGS,
        n_train=None,
        batch_size=16,
        epochs=TRAIN_EPOCHS,
        eval_images=8,
        eval_pgd_steps=2,
    )
    return train(recipe, data_dir, out_dir / "run", progress=False)


def _attacked_model() -> torch.nn.Module:
    torch.manual_seed(3)
    return create_model("preact_resnet18", **TINY_ARGS).eval()


def attack_job(data_dir: Path, out_dir: Path) -> Any:
    """APGD-CE then APGD-T (few iterations) at 8/255 on 8 test images in batches of 2, resumable; labelled
    with the model's own predictions (two of them wrong), so both attacks have points to attack."""
    model = _attacked_model()
    images, _ = load_cifar10(data_dir, "test", n_images=ATTACK_IMAGES)
    with torch.no_grad():
        labels = model(to_float(images)).argmax(dim=1)
    labels[:2] = (labels[:2] + 1) % 10
    return robust_accuracy(
        model,
        images,
        labels,
        8 / 255,
        attack="apgd-ce+apgd-t",
        attack_options={"apgd-ce": {"n_iter": 3}, "apgd-t": {"n_iter": 2, "n_target_classes": 2}},
        batch_size=ATTACK_BATCH,
        state_path=out_dir / "attack.state.json",
        progress=False,
    )


def study_job(data_dir: Path, out_dir: Path) -> Any:
    """A study of two checkpoints and one recipe trained inside it, attacked and measured."""
    checkpoints = []
    for seed in (0, 1):
        path = out_dir / f"m{seed}.safetensors"
        if not path.exists():  # made by the first run; a kill before it is written is just a rerun
            torch.manual_seed(seed)
            save_checkpoint(create_model("preact_resnet18", **TINY_ARGS), path)
        checkpoints.append(path)
    recipe = {"arch_args": TINY_ARGS, "epochs": 2, "batch_size": 16, "eval_every": 0, "n_train": None}
    raw = {
        "name": "killed",
        "output": str(out_dir / "study"),
        "data": {"dir": str(data_dir), "n_images": 6, "batch_size": 3},
        "attack": {"name": "apgd-ce", "n_images": 6, "batch_size": 1, "options": {"apgd-ce": {"n_iter": 2}}},
        "models": [
            {
                "checkpoint": str(checkpoints[0]),
                "arch": "preact_resnet18",
                "args": TINY_ARGS,
                "name": "m0",
                "robust": False,
            },
            {"recipe": "small-standard", "overrides": recipe, "name": "trained"},
            {
                "checkpoint": str(checkpoints[1]),
                "arch": "preact_resnet18",
                "args": TINY_ARGS,
                "name": "m1",
                "robust": True,
            },
        ],
    }
    return run_study(parse_config(raw, "killed.toml", default_name="killed"), progress=False, report=False)


JOBS: dict[str, Callable[[Path, Path], Any]] = {"train": train_job, "attack": attack_job, "study": study_job}


def arm(point: str, n: int) -> None:
    """Make this process SIGKILL itself just before the ``n``-th call of ``point``."""
    owner, name = KILL_POINTS[point]
    original = getattr(owner, name)
    calls = [0]

    def dying(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)

    setattr(owner, name, dying)


if __name__ == "__main__":
    job, data, out, point, count = sys.argv[1:]
    torch.set_num_threads(1)
    arm(point, int(count))
    JOBS[job](Path(data), Path(out))
