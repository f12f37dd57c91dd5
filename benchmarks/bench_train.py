"""Throughput of a recipe's training step beside a plain PyTorch loop on the same data, in one run.

    python benchmarks/bench_train.py   # paper-baseline, PreAct ResNet-18
    python benchmarks/bench_train.py --device cuda --arch wrn_28_10 --steps 30 --json bench_train.json
    python benchmarks/bench_train.py --recipe small-fgsm-rs --steps 10   # the small recipes on the CPU

"ours" is :class:`cnn_aliasing.training.Trainer.step` exactly as ``train`` runs it: uint8 images kept on
the device, random crop and flip in batches there, the recipe's objective (attacks included), bf16
autocast and channels_last on CUDA ("auto"), optional torch.compile (``--set compile=true``), no host
sync per step. "plain" is the reference a reader would write: float32 batches already on the device, no
augmentation, ``model(x)``, cross-entropy, ``backward``, SGD with the same hyperparameters, float32,
default memory format. Both start from the same weights and run ``--steps`` steps after ``--warmup``,
alternating ``--repeats`` times; the medians and their ratio (ours / plain throughput) are printed and
optionally written as JSON. For an adversarial recipe the plain loop stays the standard one, so the
ratio shows what the attack costs.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cnn_aliasing.cli.options import parse_value
from cnn_aliasing.models import create_model
from cnn_aliasing.provenance import run_metadata
from cnn_aliasing.runtime import use_channels_last
from cnn_aliasing.training import Trainer, get_recipe, learning_rate, list_recipes
from cnn_aliasing.training.loop import use_autocast


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], None], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe", default="paper-baseline", choices=list_recipes())
    parser.add_argument(
        "--arch", help="architecture (default: the recipe's), e.g. preact_resnet18, wrn_28_10"
    )
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--batch-size", type=int, help="default: the recipe's")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    parser.add_argument("--json", type=Path, metavar="OUT")
    return parser.parse_args()


def recipe_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe fields set on the command line: each ``--set FIELD=VALUE``, then --arch, --batch-size."""
    overrides: dict[str, Any] = {}
    for text in args.settings:
        key, _, value = text.partition("=")
        overrides[key] = parse_value(value)
    if args.arch:
        overrides["arch"] = args.arch
    if args.batch_size:
        overrides["batch_size"] = args.batch_size
    return overrides


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = get_recipe(args.recipe, **recipe_overrides(args))
    device = torch.device(args.device)
    bs = recipe.batch_size

    torch.manual_seed(0)
    model = create_model(recipe.arch, **recipe.arch_args)
    plain_model = copy.deepcopy(model).to(device).train()
    trainer = Trainer(recipe, model, device)
    gen = torch.Generator(device=device).manual_seed(0)
    images = torch.randint(0, 256, (bs, 3, 32, 32), generator=gen, device=device, dtype=torch.uint8)
    labels = torch.randint(0, 10, (bs,), generator=gen, device=device)
    floats = images.float() / 255
    plain_opt = torch.optim.SGD(
        plain_model.parameters(),
        lr=recipe.lr,
        momentum=recipe.momentum,
        weight_decay=recipe.weight_decay,
        nesterov=recipe.nesterov,
    )
    lr = learning_rate(recipe, recipe.epochs / 2)

    def ours(steps: int) -> Callable[[], None]:
        def run() -> None:
            for _ in range(steps):
                trainer.step(images, labels, lr, gen)

        return run

    def plain(steps: int) -> Callable[[], None]:
        def run() -> None:
            for _ in range(steps):
                loss = F.cross_entropy(plain_model(floats), labels)
                plain_opt.zero_grad(set_to_none=True)
                loss.backward()
                plain_opt.step()

        return run

    timed(ours(args.warmup), device)
    timed(plain(args.warmup), device)
    ours_t, plain_t = [], []
    for _ in range(args.repeats):
        ours_t.append(timed(ours(args.steps), device))
        plain_t.append(timed(plain(args.steps), device))
    n = args.steps * bs
    ours_ips, plain_ips = n / statistics.median(ours_t), n / statistics.median(plain_t)
    result = {
        "recipe": recipe.name,
        "arch": recipe.arch,
        "arch_args": dict(recipe.arch_args),
        "objective": recipe.objective,
        "batch_size": bs,
        "steps": args.steps,
        "repeats": args.repeats,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "autocast_bf16": use_autocast(recipe, device),
        "channels_last": use_channels_last(recipe.channels_last, device),
        "compile": recipe.compile,
        "ours_images_per_second": ours_ips,
        "plain_images_per_second": plain_ips,
        "ratio": ours_ips / plain_ips,
        "ours_seconds": ours_t,
        "plain_seconds": plain_t,
        "run": run_metadata(),
    }
    print(
        f"{recipe.name} ({recipe.objective}) {recipe.arch} batch {bs} on {result['device_name']}: "
        f"ours {ours_ips:,.0f} img/s, plain fp32 loop {plain_ips:,.0f} img/s, "
        f"ratio {ours_ips / plain_ips:.2f}x "
        f"(bf16 autocast {result['autocast_bf16']}, channels_last {result['channels_last']}, "
        f"compile {recipe.compile})"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
