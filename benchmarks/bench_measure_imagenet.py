"""Cost of measuring aliasing on ImageNet-sized networks, as a ratio to a plain forward pass.

    python benchmarks/bench_measure_imagenet.py --threads 2                    # the six networks + ViT patch
    python benchmarks/bench_measure_imagenet.py --networks resnet50 regnety_200mf --repeats 5
    python benchmarks/bench_measure_imagenet.py --list-ops                     # each network's strided ops
    python benchmarks/bench_measure_imagenet.py --breakdown resnet50 --threads 2
    python benchmarks/bench_measure_imagenet.py --breakdown regnety_200mf --breakdown-sampled --threads 2

The networks are the stand-ins of :mod:`imagenet_networks` (the real models' layers and down-sampling ops,
random weights, eval mode), on uniform random images of ``--size`` x ``--size``.

Speed (the default): as ``bench_measure.py`` does for CIFAR networks, for each network a plain
``model(x)`` under ``torch.no_grad()``, ``cnn_aliasing.measure`` over the same batches (exact), and
``measure(..., sample_channels=--sample-channels)`` alternate ``--repeats`` times after a warm-up; the
table gives the medians and the ratios to the plain pass beside their targets (issue 23), in wall time, in
process CPU time, and as the median of each repeat's wall-time ratio to the plain pass of the same repeat
("paired"), and the exact measurement's extra milliseconds per image. The ViT patch embedding has no
target: its plain pass runs one of ViT-B/16's 12 encoder blocks, so only its extra time per image carries
over to the real model.

Breakdown (``--breakdown NETWORK``): where the exact measurement's extra time goes. Alternating as above:
the plain pass, the exact measurement, and a measurement selecting no op (``measure``'s own fixed cost);
with ``--breakdown-sampled``, the sampled measurement (``--sample-channels``) in place of the exact one.
Per op: its extra wall time over the plain pass (paired median); the op's own time in the plain pass
("strided") and in the measurement ("probed", both timed by forward hooks on its module); within the probed
call, the time forming the stride-1 output (``StridedCall.full``, or ``measured_channels`` for the sampled
channels alone), in the spectral metrics (``spectral.per_map_metrics`` or
``ConvSpectra.per_map_metrics`` for a convolution measured from its input's spectra: FFTs, DFT matrix
products or the kernel's mix, and the sums), and the rest (slicing the real
output, accumulating the moments, the probe's dispatch). Then one profiled run each of the plain pass and
the exact measurement (``torch.profiler``, CPU self time per aten operator), grouped into convolution, FFT,
matmul, pooling, copy/layout and other (elementwise and reductions), and the operators whose self time
grew most.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import torch
from torch import nn

from bench_measure import add_sample_channels_argument, synchronize
from cnn_aliasing import find_downsamplers, measure, spectral
from cnn_aliasing.conv_spectra import ConvSpectra
from cnn_aliasing.downsamplers import StridedCall
from imagenet_networks import NETWORKS

FIRST_FIVE = (1.5, 1.15)  # issue 23: exact, sampled
TARGETS: dict[str, tuple[float, float]] = {
    "resnet50": FIRST_FIVE,
    "efficientnet_b0": FIRST_FIVE,
    "convnext_tiny": FIRST_FIVE,
    "densenet121": FIRST_FIVE,
    "mobilenet_v3_large": FIRST_FIVE,
    "regnety_200mf": (2.0, 2.0),
}
"""The ratio to the plain pass each network's exact and sampled measurement should stay under."""

Times = dict[str, list[tuple[float, float]]]  # per run: (wall s, CPU s) of each repeat


def random_images(args: argparse.Namespace, device: torch.device, seed: int = 0) -> list[torch.Tensor]:
    """``--batches`` batches of ``--batch-size`` uniform random images in [0, 1] of ``--size`` squared."""
    gen = torch.Generator().manual_seed(seed)
    shape = (args.batch_size, 3, args.size, args.size)
    return [torch.rand(shape, generator=gen).to(device) for _ in range(args.batches)]


def network(name: str, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    return NETWORKS[name]().to(device)


def alternate(runs: dict[str, Callable[[], None]], repeats: int, device: torch.device) -> Times:
    """Each run once to warm up, then all of them in turn ``repeats`` times: each repeat's wall and CPU s."""
    for run in runs.values():
        run()
    times: Times = {key: [] for key in runs}
    for _ in range(repeats):
        for key, run in runs.items():
            synchronize(device)
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            synchronize(device)
            times[key].append((time.perf_counter() - wall, time.process_time() - cpu))
    return times


def median_wall(times: Times, key: str) -> float:
    return statistics.median(t[0] for t in times[key])


def paired(times: Times, key: str, plain: str = "plain") -> float:
    """Median over repeats of the wall-time ratio to the plain pass of the same repeat."""
    return statistics.median(m[0] / p[0] for m, p in zip(times[key], times[plain], strict=True))


def paired_extra(times: Times, key: str, plain: str = "plain") -> float:
    """Median over repeats of the wall seconds above the plain pass of the same repeat."""
    return statistics.median(m[0] - p[0] for m, p in zip(times[key], times[plain], strict=True))


def plain_pass(model: nn.Module, batches: list[torch.Tensor]) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            for b in batches:
                model(b)

    return run


def measurement(model: nn.Module, batches: list[torch.Tensor], **options: Any) -> Callable[[], None]:
    def run() -> None:
        measure(model, batches, progress=False, **options)

    return run


# ---- speed ----------------------------------------------------------------------------------------------


def time_network(name: str, args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    model = network(name, device)
    batches = random_images(args, device)
    runs = {"plain": plain_pass(model, batches), "exact": measurement(model, batches)}
    if args.sample_channels:
        runs["sampled"] = measurement(model, batches, sample_channels=args.sample_channels)
    times = alternate(runs, args.repeats, device)
    wall = {k: median_wall(times, k) for k in times}
    cpu = {k: statistics.median(t[1] for t in ts) for k, ts in times.items()}
    images = args.batches * args.batch_size
    exact_target, sampled_target = TARGETS.get(name, (float("nan"), float("nan")))
    result: dict[str, Any] = {
        "network": name,
        "images": images,
        "plain_s": wall["plain"],
        "measure_s": wall["exact"],
        "ratio": wall["exact"] / wall["plain"],
        "cpu_ratio": cpu["exact"] / cpu["plain"],
        "paired_ratio": paired(times, "exact"),
        "target": exact_target,
        "extra_ms_per_image": 1000 * paired_extra(times, "exact") / images,
    }
    if "sampled" in runs:
        result.update(
            sampled_s=wall["sampled"],
            sampled_ratio=wall["sampled"] / wall["plain"],
            sampled_cpu_ratio=cpu["sampled"] / cpu["plain"],
            sampled_paired_ratio=paired(times, "sampled"),
            sampled_target=sampled_target,
        )
    return result


def speed(args: argparse.Namespace) -> list[dict[str, Any]]:
    print(
        f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, "
        f"batch {args.batch_size} x {args.batches} of {args.size}x{args.size}, {args.repeats} alternating "
        "repeats, medians"
        + (f"; sampled: sample_channels={args.sample_channels}" if args.sample_channels else "")
    )
    header = (
        f"{'network':<24} {'plain s':>8} {'exact s':>8} {'ratio':>6} {'cpu':>6} {'paired':>6} {'target':>6} "
        f"{'ms/img':>7}"
    )
    if args.sample_channels:
        header += f" {'sampled s':>9} {'ratio':>6} {'cpu':>6} {'paired':>6} {'target':>6}"
    print(header)
    results = []
    for name in args.networks:
        r = time_network(name, args)
        line = (
            f"{r['network']:<24} {r['plain_s']:>8.3f} {r['measure_s']:>8.3f} {r['ratio']:>6.2f} "
            f"{r['cpu_ratio']:>6.2f} {r['paired_ratio']:>6.2f} {r['target']:>6.2f} "
            f"{r['extra_ms_per_image']:>7.1f}"
        )
        if "sampled_s" in r:
            line += (
                f" {r['sampled_s']:>9.3f} {r['sampled_ratio']:>6.2f} {r['sampled_cpu_ratio']:>6.2f} "
                f"{r['sampled_paired_ratio']:>6.2f} {r['sampled_target']:>6.2f}"
            )
        print(line, flush=True)
        results.append(r)
    print("ms/img: the exact measurement's extra wall milliseconds per image (paired median)")
    return results


def list_ops(args: argparse.Namespace) -> dict[str, Any]:
    """Each network's down-sampling ops as ``find_downsamplers`` sees them on one image."""
    found = {}
    for name in args.networks:
        model = network(name, torch.device(args.device))
        ops = find_downsamplers(model, torch.rand(1, 3, args.size, args.size, device=args.device))
        print(f"{name}: {len(ops)} down-sampling ops")
        for op in ops:
            s, t = op.factor
            h, w = op.full_shape[-2:]
            print(f"  {op.name:<30} {op.kind:<11} {s}x{t}  {op.channels:>5} x {h}x{w}")
        found[name] = [
            {"name": op.name, "kind": op.kind, "factor": list(op.factor), "full_shape": list(op.full_shape)}
            for op in ops
        ]
    return found


# ---- breakdown ------------------------------------------------------------------------------------------


class Stopwatch:
    """Wall seconds spent in the down-sampling ops of a model and in parts of the engine, per op: for each
    run label, one dict (op, part) -> seconds per lap. A watched module's calls are its part "call"; while
    one runs, functions wrapped by :meth:`timed` count for it (op "" outside every watched module)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.label = ""
        self.running: list[str] = []  # the watched modules being called, innermost last
        self.parts: list[str] = []  # the timed parts running, innermost last
        self.laps: dict[str, list[defaultdict[tuple[str, str], float]]] = defaultdict(list)

    def lap(self, label: str, run: Callable[[], None]) -> Callable[[], None]:
        """``run``, its seconds recorded as a new lap of ``label``."""

        def timed_run() -> None:
            self.label = label
            self.laps[label].append(defaultdict(float))
            run()

        return timed_run

    def now(self) -> float:
        synchronize(self.device)
        return time.perf_counter()

    def add(self, op: str, part: str, seconds: float) -> None:
        if self.label:
            self.laps[self.label][-1][op, part] += seconds

    def timed(self, part: str, function: Callable[..., Any]) -> Callable[..., Any]:
        """``function``, its wall time added to ``part`` of the watched module being called (once: a call
        inside another call timed as the same part is not added again)."""

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if part in self.parts:
                return function(*args, **kwargs)
            self.parts.append(part)
            start = self.now()
            try:
                return function(*args, **kwargs)
            finally:
                self.add(self.running[-1] if self.running else "", part, self.now() - start)
                self.parts.pop()

        return wrapper

    def watch(self, module: nn.Module, op: str) -> list[Any]:
        """Forward hooks adding each call of ``module`` to the part "call" of ``op``; returns the handles."""
        starts: list[float] = []

        def before(*_: Any) -> None:
            self.running.append(op)
            starts.append(self.now())

        def after(*_: Any) -> None:
            self.add(op, "call", self.now() - starts.pop())
            self.running.pop()

        return [module.register_forward_pre_hook(before), module.register_forward_hook(after)]

    def median(self, label: str, op: str, part: str, last: int) -> float:
        """The median of a part over the last ``last`` laps of ``label`` (the repeats, not the warm-up)."""
        return statistics.median(lap.get((op, part), 0.0) for lap in self.laps[label][-last:])

    @contextlib.contextmanager
    def engine_parts(self) -> Iterator[None]:
        """While active: forming stride-1 outputs (whole, or of the sampled channels) is timed as
        "stride-1", spectral metrics as "metrics"."""
        with contextlib.ExitStack() as stack:
            for method in ("full", "measured_channels"):
                timed = self.timed("stride-1", getattr(StridedCall, method))
                stack.enter_context(mock.patch.object(StridedCall, method, timed))
            stack.enter_context(
                mock.patch.object(
                    spectral, "per_map_metrics", self.timed("metrics", spectral.per_map_metrics)
                )
            )
            metrics = ConvSpectra.per_map_metrics
            stack.enter_context(
                mock.patch.object(ConvSpectra, "per_map_metrics", self.timed("metrics", metrics))
            )
            yield


OPERATOR_CLASSES = (
    ("fft", ("fft",)),
    ("convolution", ("conv",)),
    ("matmul", ("mm", "matmul", "linear")),
    ("pooling", ("pool",)),
    ("reduction", ("sum", "mean", "var", "amax", "amin")),
    (
        "copy/layout",
        (
            "copy",
            "clone",
            "contiguous",
            "cat",
            "stack",
            "index",
            "select",
            "slice",
            "narrow",
            "pad",
            "flip",
            "view",
            "reshape",
            "permute",
            "transpose",
            "as_strided",
            "empty",
            "zeros",
            "fill",
            "unbind",
        ),
    ),
)
"""Classes of aten operators by a part of their name (the first class that matches); the rest is "other"."""


def operator_class(name: str) -> str:
    return next((c for c, parts in OPERATOR_CLASSES if any(p in name for p in parts)), "other")


def self_times(run: Callable[[], None]) -> dict[str, tuple[float, int]]:
    """One profiled run: per aten operator, its CPU self seconds and number of calls."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        run()
    return {e.key: (e.self_cpu_time_total / 1e6, e.count) for e in profile.key_averages()}


def profile_table(plain: dict[str, tuple[float, int]], exact: dict[str, tuple[float, int]]) -> dict[str, Any]:
    """Self seconds per operator class in the plain pass and the exact measurement, and the 12 operators
    whose self time grew most."""
    classes: dict[str, list[float]] = {c: [0.0, 0.0] for c, _ in OPERATOR_CLASSES}
    classes["other"] = [0.0, 0.0]
    for column, table in enumerate((plain, exact)):
        for key, (seconds, _) in table.items():
            classes[operator_class(key)][column] += seconds
    grown = sorted(
        (
            (key, exact[key][0] - plain.get(key, (0.0, 0))[0], exact[key][1] - plain.get(key, (0.0, 0))[1])
            for key in exact
        ),
        key=lambda row: -row[1],
    )[:12]
    return {
        "classes": {c: {"plain_s": p, "exact_s": e} for c, (p, e) in classes.items()},
        "top_grown": [{"operator": k, "extra_s": s, "extra_calls": n} for k, s, n in grown],
    }


def breakdown(args: argparse.Namespace) -> dict[str, Any]:
    name = args.breakdown
    device = torch.device(args.device)
    model = network(name, device)
    batches = random_images(args, device)
    ops = find_downsamplers(model, batches[0][:1])
    modules = dict(model.named_modules())
    watch = Stopwatch(device)
    handles = [h for op in ops if op.name in modules for h in watch.watch(modules[op.name], op.name)]
    options = {"sample_channels": args.sample_channels} if args.breakdown_sampled else {}
    runs = {
        "plain": plain_pass(model, batches),
        "exact": measurement(model, batches, **options),
        "no op": measurement(model, batches, include=["<no op has this name>"], **options),
    }
    with watch.engine_parts():
        times = alternate({k: watch.lap(k, run) for k, run in runs.items()}, args.repeats, device)
    for handle in handles:
        handle.remove()
    profile = profile_table(self_times(runs["plain"]), self_times(runs["exact"]))

    def part(label: str, op: str, name: str) -> float:
        return watch.median(label, op, name, args.repeats)

    rows = []
    for op in ops:
        watched = op.name in modules  # a module op: its calls are timed
        strided, probed = part("plain", op.name, "call"), part("exact", op.name, "call")
        stride_1, metrics = part("exact", op.name, "stride-1"), part("exact", op.name, "metrics")
        nan = float("nan")
        rows.append(
            {
                "op": op.name,
                "kind": op.kind,
                "factor": "x".join(map(str, op.factor)),
                "map": "x".join(map(str, op.full_shape[-2:])),
                "channels": op.channels,
                "strided_s": strided if watched else nan,
                "probed_s": probed if watched else nan,
                "added_s": probed - strided if watched else nan,
                "stride1_s": stride_1,
                "metrics_s": metrics,
                "rest_s": probed - stride_1 - metrics if watched else nan,
            }
        )
    result = {
        "network": name,
        "measured": f"sampled ({args.sample_channels})" if args.breakdown_sampled else "exact",
        "images": args.batches * args.batch_size,
        "threads": torch.get_num_threads(),
        "plain_s": median_wall(times, "plain"),
        "exact_s": median_wall(times, "exact"),
        "exact_extra_s": paired_extra(times, "exact"),
        "no_op_extra_s": paired_extra(times, "no op"),
        "outside_module_ops": {k: part("exact", "", k) for k in ("stride-1", "metrics")},
        "ops": rows,
        "profile": profile,
    }
    print_breakdown(result, args)
    return result


BREAKDOWN_LEGEND = """\
strided, probed: the op's call in the plain pass, in the exact measurement; added = probed - strided;
share: of the extra; stride-1: forming its stride-1 output; metrics: its spectral metrics (FFTs or DFT
products, mixing, sums); rest = probed - stride-1 - metrics: the real output (a slice, or the strided op
itself where no stride-1 output is formed: 1x1 convs, measured from their input's spectra), the running
moments, the probe's dispatch"""

COLUMNS = ("strided_s", "probed_s", "added_s", "stride1_s", "metrics_s", "rest_s")


def print_breakdown(r: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"where the {r['measured']} measure() of {r['network']} spends its extra time: {r['images']} images "
        f"{args.size}x{args.size} (batch {args.batch_size}), device {args.device}, threads {r['threads']}, "
        f"{args.repeats} alternating repeats, medians (s)"
    )
    extra = r["exact_extra_s"]
    print(
        f"plain {r['plain_s']:.3f}; {r['measured']} measure {r['exact_s']:.3f} "
        f"(ratio {r['exact_s'] / r['plain_s']:.2f}), extra {extra:.3f}; measure selecting no op: extra "
        f"{r['no_op_extra_s']:.3f}"
    )
    print(
        f"{'op':<26} {'kind':<11} {'factor':>6} {'map':>8} {'ch':>5} {'strided':>8} {'probed':>8} "
        f"{'added':>8} {'share':>6} {'stride-1':>8} {'metrics':>8} {'rest':>8}"
    )

    def numbers(row: dict[str, Any]) -> str:
        share = row["added_s"] / extra
        return " ".join(f"{row[k]:>8.3f}" + (f" {share:>6.0%}" if k == "added_s" else "") for k in COLUMNS)

    for o in r["ops"]:
        print(f"{o['op']:<26} {o['kind']:<11} {o['factor']:>6} {o['map']:>8} {o['channels']:>5} {numbers(o)}")
    total = {k: sum(o[k] for o in r["ops"]) for k in COLUMNS}
    print(f"{'all ops':<60} {numbers(total)}")
    outside = r["outside_module_ops"]
    if any(outside.values()):
        print(
            f"functional ops (not timed per op): stride-1 {outside['stride-1']:.3f}, "
            f"metrics {outside['metrics']:.3f}"
        )
    print(
        f"extra {extra:.3f} = added in the ops {total['added_s']:.3f} + measure's fixed cost (no op) "
        f"{r['no_op_extra_s']:.3f} + the rest {extra - total['added_s'] - r['no_op_extra_s']:.3f}"
    )
    print(BREAKDOWN_LEGEND)
    print("\nCPU self time per operator class, one profiled run each (s)")
    print(f"{'class':<14} {'plain':>8} {'exact':>8} {'extra':>8}")
    for c, v in r["profile"]["classes"].items():
        print(f"{c:<14} {v['plain_s']:>8.3f} {v['exact_s']:>8.3f} {v['exact_s'] - v['plain_s']:>8.3f}")
    print(f"\n{'operator':<36} {'extra s':>8} {'extra calls':>11}")
    for row in r["profile"]["top_grown"]:
        print(f"{row['operator']:<36} {row['extra_s']:>8.3f} {row['extra_calls']:>11}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--size", type=int, default=224, help="image height and width")
    parser.add_argument("--repeats", type=int, default=3)
    add_sample_channels_argument(parser)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--list-ops", action="store_true", help="list each network's down-sampling ops")
    parser.add_argument("--breakdown", choices=list(NETWORKS), help="where one network's extra time goes")
    parser.add_argument(
        "--breakdown-sampled",
        action="store_true",
        help="with --breakdown: break down measure(..., sample_channels=--sample-channels) instead of the "
        "exact measurement (forming the sampled channels counts as stride-1)",
    )
    parser.add_argument("--json", help="write the results to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.list_ops:
        results: Any = list_ops(args)
    elif args.breakdown:
        results = breakdown(args)
    else:
        results = speed(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
