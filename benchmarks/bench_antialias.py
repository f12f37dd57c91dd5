"""Cost of each anti-aliased down-sampler relative to the strided convolution it replaces.

    python benchmarks/bench_antialias.py                       # CPU, CIFAR PreAct ResNet-18 shapes
    python benchmarks/bench_antialias.py --device cuda --batch-size 512 --json bench_antialias.json

Two levels, each timed forward and forward + backward (training), medians over ``--repeats`` after a
warm-up, alternating the variants so drift hits them alike:

- **op**: one strided 3x3 convolution (padding 1) of a PreAct ResNet-18 down-sampling block (``--in``
  channels at ``--size`` x ``--size`` to twice as many at half the size) against its swapped form made by
  :func:`cnn_aliasing.antialias.antialias`: FLC / ASAP then the stride-1 conv at half size; the stride-1
  conv at full size then BlurPool (here straight after the conv: the activation between them costs the
  same in both).
- **model**: ``preact_resnet18`` (``--width``) built with ``create_model(..., downsample=...)``, a whole
  forward (and backward) pass of a batch.

Reports seconds and the ratio to the strided version; ``--json`` writes the rows with run metadata.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnn_aliasing.antialias import antialias
from cnn_aliasing.models import create_model
from cnn_aliasing.provenance import run_metadata

VARIANTS = ["strided", "flc", "asap", "blurpool"]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def step(model: nn.Module, x: torch.Tensor, backward: bool) -> Callable[[], Any]:
    def run() -> Any:
        if not backward:
            with torch.no_grad():
                return model(x)
        model.zero_grad(set_to_none=True)
        out = model(x)
        out.float().square().mean().backward()
        return None

    return run


def compare(
    models: dict[str, nn.Module], x: torch.Tensor, args: argparse.Namespace, level: str
) -> list[dict[str, Any]]:
    rows = []
    for backward in (False, True):
        if backward:
            x = x.detach().requires_grad_(level == "op")
        times: dict[str, list[float]] = {name: [] for name in models}
        runs = {name: step(model, x, backward) for name, model in models.items()}
        for _ in range(args.warmup):
            for run in runs.values():
                run()
        for _ in range(args.repeats):
            for name, run in runs.items():
                times[name].append(timed(run, args.device))
        base = statistics.median(times["strided"])
        for name in models:
            median = statistics.median(times[name])
            rows.append(
                {
                    "level": level,
                    "pass": "forward+backward" if backward else "forward",
                    "variant": name,
                    "seconds": median,
                    "ratio": median / base,
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", type=torch.device)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--in", dest="channels", type=int, default=64, help="input channels of the op")
    parser.add_argument("--size", type=int, default=32, help="input size of the op")
    parser.add_argument("--width", type=int, default=16, help="preact_resnet18 width for the model level")
    parser.add_argument("--filter-size", type=int, default=3, help="BlurPool filter size")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--levels", default="op,model")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    device = args.device
    rows: list[dict[str, Any]] = []
    if "op" in args.levels:
        conv = nn.Conv2d(args.channels, 2 * args.channels, 3, stride=2, padding=1, bias=False).to(device)
        x = torch.rand(args.batch_size, args.channels, args.size, args.size, device=device)
        models: dict[str, nn.Module] = {"strided": conv}
        example = x[:1]
        for method in VARIANTS[1:]:
            options = {"filter_size": args.filter_size} if method == "blurpool" else {}
            models[method] = antialias(nn.Sequential(conv), method, example_input=example, **options)
        rows += compare(models, x, args, "op")
    if "model" in args.levels:
        x = torch.rand(args.batch_size, 3, 32, 32, device=device)
        models = {
            v: create_model("preact_resnet18", width=args.width, downsample=v).to(device) for v in VARIANTS
        }
        rows += compare(models, x, args, "model")
    threads = torch.get_num_threads()
    print(f"device {device}, torch {torch.__version__}, {threads} threads, batch {args.batch_size}")
    print(f"{'level':6} {'pass':17} {'variant':9} {'seconds':>9} {'ratio':>7}")
    for row in rows:
        print(
            f"{row['level']:6} {row['pass']:17} {row['variant']:9} {row['seconds']:9.4f} {row['ratio']:7.2f}"
        )
    if args.json:
        config = {k: str(v) for k, v in vars(args).items()}
        args.json.write_text(
            json.dumps({"rows": rows, "config": config, "metadata": run_metadata()}, indent=2)
        )


if __name__ == "__main__":
    main()
