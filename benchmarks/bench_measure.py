"""Cost of measuring aliasing, as a ratio to a plain forward pass of the same model on the same batches.

    python benchmarks/bench_measure.py                       # PreAct ResNet-18 and WRN-28-10, CPU
    python benchmarks/bench_measure.py --device cuda --batch-size 512 --batches 8
    python benchmarks/bench_measure.py --sample-channels 0   # exact measurement only
    python benchmarks/bench_measure.py --memory              # peak memory, 1,000 vs 10,000 images

Speed: for each model, a plain ``model(x)`` under ``torch.no_grad()``, ``cnn_aliasing.measure`` over the
same batches (exact), and ``measure(..., sample_channels=--sample-channels)`` (default 1/8 of each op's
channels) alternate ``--repeats`` times after a warm-up; the table gives the medians and the ratios to the
plain pass beside their targets, in wall time, in process CPU time, and as the median of each repeat's
wall-time ratio to the plain pass of the same repeat ("paired": steadier when the machine's load drifts).
Memory: ``measure`` runs in a fresh process on a stream of random batches
(never held together), and the peak resident set (CPU) or peak allocated device memory (CUDA) is
reported for each image count: streaming means it must not grow with the number of images.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator

import torch

from cnn_aliasing import measure
from cnn_aliasing.models import create_model

TARGETS = {"preact_resnet18": 1.45, "wrn_28_10": 1.25}
SAMPLED_TARGET = 1.08


def random_batches(n_batches: int, batch_size: int, seed: int = 0) -> Iterator[torch.Tensor]:
    """Uniform random images in [0, 1], made one batch at a time."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n_batches):
        yield torch.rand(batch_size, 3, 32, 32, generator=gen)


def add_sample_channels_argument(parser: argparse.ArgumentParser) -> None:
    """--sample-channels: a fraction (with a point or an exponent) or a count; 0 skips the sampled run."""
    parser.add_argument(
        "--sample-channels",
        type=lambda text: float(text) if "." in text or "e" in text else int(text),
        default=0.125,
        help="measure(sample_channels=...) timed beside the exact measurement (default 0.125; 0: skip)",
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_and_batches(
    name: str, args: argparse.Namespace, device: torch.device
) -> tuple[torch.nn.Module, list[torch.Tensor]]:
    """The model in eval mode and the random batches on ``device``, channels_last if asked for."""
    torch.manual_seed(0)
    model = create_model(name).to(device).eval()
    batches = [b.to(device) for b in random_batches(args.batches, args.batch_size)]
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch stubs lack it
        batches = [b.contiguous(memory_format=torch.channels_last) for b in batches]
    return model, batches


def time_model(name: str, args: argparse.Namespace) -> dict[str, float | str | int]:
    device = torch.device(args.device)
    model, batches = model_and_batches(name, args, device)

    def plain() -> None:
        with torch.no_grad():
            for b in batches:
                model(b)

    def measured() -> None:
        measure(model, batches, progress=False)

    def sampled() -> None:
        measure(model, batches, progress=False, sample_channels=args.sample_channels)

    def timed(fn) -> tuple[float, float]:
        synchronize(device)
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        synchronize(device)
        return time.perf_counter() - wall, time.process_time() - cpu

    runs = {"plain": plain, "exact": measured}
    if args.sample_channels:
        runs["sampled"] = sampled
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in runs}
    for fn in runs.values():  # warm-up
        fn()
    for _ in range(args.repeats):
        for key, fn in runs.items():
            times[key].append(timed(fn))
    wall = {k: statistics.median(t[0] for t in ts) for k, ts in times.items()}
    cpu = {k: statistics.median(t[1] for t in ts) for k, ts in times.items()}

    def paired(key: str) -> float:
        """Median over repeats of the wall-time ratio to the plain pass of the same repeat (steadier
        than the ratio of medians when the machine's load drifts)."""
        return statistics.median(m[0] / p[0] for m, p in zip(times[key], times["plain"], strict=True))

    result: dict[str, float | str | int] = {
        "model": name,
        "images": args.batches * args.batch_size,
        "plain_s": wall["plain"],
        "measure_s": wall["exact"],
        "ratio": wall["exact"] / wall["plain"],
        "cpu_ratio": cpu["exact"] / cpu["plain"],
        "paired_ratio": paired("exact"),
        "target": TARGETS.get(name, float("nan")),
    }
    if "sampled" in runs:
        result.update(
            sampled_s=wall["sampled"],
            sampled_ratio=wall["sampled"] / wall["plain"],
            sampled_cpu_ratio=cpu["sampled"] / cpu["plain"],
            sampled_paired_ratio=paired("sampled"),
            sampled_target=SAMPLED_TARGET,
        )
    return result


def peak_memory_child(name: str, n_images: int, batch_size: int, device: str) -> None:
    """Run in a fresh process: measure on a stream of random batches and print the peak memory (MiB)."""
    dev = torch.device(device)
    torch.manual_seed(0)
    model = create_model(name).to(dev).eval()
    batches = (b.to(dev) for b in random_batches(n_images // batch_size, batch_size))
    measure(model, batches, progress=False)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # ru_maxrss is KiB on Linux
    print(json.dumps({"peak_mib": peak}))


def memory(args: argparse.Namespace) -> None:
    print(f"peak memory of measure() on {args.device}, model {args.memory_model}, batch {args.batch_size}")
    print(f"{'images':>8} {'peak MiB':>10}")
    for n in (1000, 10000):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                args.memory_model,
                *map(str, (n, args.batch_size)),
                args.device,
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        print(f"{n:>8} {json.loads(out.strip().splitlines()[-1])['peak_mib']:>10.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=list(TARGETS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    add_sample_channels_argument(parser)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--channels-last", action="store_true", help="model and inputs in channels_last")
    parser.add_argument("--memory", action="store_true", help="peak memory for 1,000 vs 10,000 images")
    parser.add_argument("--memory-model", default="preact_resnet18")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        name, n, bs, device = args.child
        peak_memory_child(name, int(n), int(bs), device)
        return
    if args.memory:
        memory(args)
        return
    print(
        f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, "
        f"batch {args.batch_size} x {args.batches}, {args.repeats} alternating repeats, medians"
        + (f"; sampled: sample_channels={args.sample_channels}" if args.sample_channels else "")
    )
    header = (
        f"{'model':<18} {'images':>6} {'plain s':>9} {'exact s':>9} {'ratio':>7} {'cpu ratio':>9} "
        f"{'paired':>7} {'target':>7}"
    )
    if args.sample_channels:
        header += f" {'sampled s':>10} {'ratio':>7} {'cpu ratio':>9} {'paired':>7} {'target':>7}"
    print(header)
    for name in args.models:
        r = time_model(name, args)
        line = (
            f"{r['model']:<18} {r['images']:>6} {r['plain_s']:>9.3f} {r['measure_s']:>9.3f} "
            f"{r['ratio']:>7.3f} {r['cpu_ratio']:>9.3f} {r['paired_ratio']:>7.3f} {r['target']:>7.2f}"
        )
        if "sampled_s" in r:
            line += (
                f" {r['sampled_s']:>10.3f} {r['sampled_ratio']:>7.3f} {r['sampled_cpu_ratio']:>9.3f} "
                f"{r['sampled_paired_ratio']:>7.3f} {r['sampled_target']:>7.2f}"
            )
        print(line, flush=True)


if __name__ == "__main__":
    main()
