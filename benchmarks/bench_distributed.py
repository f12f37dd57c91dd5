"""Wall time of a fixed workload in one process and in two processes under torchrun, side by side.

    python benchmarks/bench_distributed.py                                  # the figure of docs/benchmarks.md
    python benchmarks/bench_distributed.py --n-images 16 --steps 2 --width 8   # a quick check

The workload, on synthetic 32 x 32 images (no data folder needed): ``measure`` of a PreAct ResNet-18
(``--width``) on ``--n-images`` images (each rank measures its share, ``across_ranks=True``), then
``--steps`` training steps of the ``small-standard`` recipe's objective with a global batch of ``--batch``
(:class:`cnn_aliasing.training.Trainer`, DDP under two processes). The comparison is fair on a CPU with C
cores: one process uses C threads, each of the two processes C / 2 (``OMP_NUM_THREADS`` and
``torch.set_num_threads``), so both use the same cores. Each side measures one batch and runs ``--warmup``
untimed training steps first;
rank 0 times the section between two barriers. The driver starts the single process, then ``torchrun
--standalone --nproc-per-node 2``, and prints both times and the speed-up (one / two), optionally as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from cnn_aliasing import distributed, measure
from cnn_aliasing.models import create_model
from cnn_aliasing.provenance import run_metadata
from cnn_aliasing.training import Trainer, get_recipe


def workload_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--width", type=int, default=64, help="PreAct ResNet-18 width (64 = full size)")
    parser.add_argument("--n-images", type=int, default=256, help="images measured")
    parser.add_argument("--measure-batch", type=int, default=32, help="measure's batch size per rank")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed training steps first")
    parser.add_argument("--batch", type=int, default=64, help="global training batch")


def timed_section(fn: Any) -> float:
    """Seconds ``fn`` takes on the slowest rank (barriers on both sides)."""
    distributed.barrier()
    start = time.perf_counter()
    fn()
    distributed.barrier()
    return time.perf_counter() - start


def worker(args: argparse.Namespace) -> None:
    """Run the workload in this process (one rank of torchrun, or alone); rank 0 writes the times."""
    torch.set_num_threads(args.threads)
    context = distributed.init_from_env("cpu")
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(args.n_images, 3, 32, 32, generator=generator)
    torch.manual_seed(0)
    model = create_model("preact_resnet18", width=args.width).eval()
    mine = distributed.shard_range(args.n_images, context)
    batches = images[mine.start : mine.stop].split(args.measure_batch)
    measure(model, batches[:1], progress=False, across_ranks=True)  # untimed: tracing, first kernels
    measure_s = timed_section(lambda: measure(model, batches, progress=False, across_ranks=True))

    recipe = get_recipe("small-standard", arch_args={"width": args.width}, batch_size=args.batch)
    trainer = Trainer(
        recipe, create_model("preact_resnet18", width=args.width), torch.device("cpu"), context=context
    )
    train_images = torch.randint(0, 256, (args.batch, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (args.batch,), generator=generator)
    step_generator = torch.Generator().manual_seed(1)

    def steps(n: int) -> None:
        for _ in range(n):
            trainer.step(train_images, labels, recipe.lr, step_generator)

    steps(args.warmup)
    train_s = timed_section(lambda: steps(args.steps))
    if context.is_main:
        times = {"measure_s": measure_s, "train_s": train_s, **context.meta(), "threads": args.threads}
        Path(args.worker).write_text(json.dumps(times))


def run_side(args: argparse.Namespace, processes: int, out: Path) -> dict[str, Any]:
    """Start the workload in ``processes`` processes sharing the cores; its times."""
    threads = max(1, args.cores // processes)
    forwarded = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k in WORKLOAD_KEYS]
    script = [__file__, "--worker", str(out), f"--threads={threads}", *forwarded]
    if processes == 1:
        command = [sys.executable, *script]
    else:
        torchrun = Path(sys.executable).with_name("torchrun")
        command = [str(torchrun), "--standalone", f"--nproc-per-node={processes}", *script]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(command, env=env, check=True)
    return json.loads(out.read_text())


WORKLOAD_KEYS = ("width", "n_images", "measure_batch", "steps", "warmup", "batch")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    workload_arguments(parser)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="cores both sides share")
    parser.add_argument("--json", type=Path, help="also write the times here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        one = run_side(args, 1, Path(tmp) / "one.json")
        two = run_side(args, 2, Path(tmp) / "two.json")
    print(f"{'workload':<44} {'1 process':>10} {'2 processes':>12} {'speed-up':>9}")
    rows = {
        "measure": f"measure, {args.n_images} images, width {args.width}",
        "train": f"train, {args.steps} steps of global batch {args.batch}",
    }
    for key, label in rows.items():
        a, b = one[f"{key}_s"], two[f"{key}_s"]
        print(f"{label:<44} {a:>9.2f}s {b:>11.2f}s {a / b:>8.2f}x")
    print(f"(1 process: {one['threads']} threads; 2 processes: {two['threads']} threads each, gloo)")
    if args.json:
        record = {"one": one, "two": two, "args": {k: getattr(args, k) for k in (*WORKLOAD_KEYS, "cores")}}
        args.json.write_text(json.dumps({**record, "run": run_metadata()}, indent=2))


if __name__ == "__main__":
    main()
