"""How much the metric's zero-padding of odd-sized stride-1 outputs biases AM across architecture families.

    python benchmarks/bench_padding_bias.py                        # both pairs, random + trained (~3 min CPU)
    python benchmarks/bench_padding_bias.py --no-train --seeds 1   # random weights only, quick
    python benchmarks/bench_padding_bias.py --out padding_bias.json

The DeepMind-style models (``dm_preact_resnet18``, ``dm_wrn_28_10``) pad (0, 1, 0, 1) before an unpadded
strided 3x3 convolution, so that op's stride-1 output is 31 x 31 (15 x 15, 7 x 7 further down) and the
metric zero-pads it at the end to 32 (16, 8) before the FFT (docs/metric.md). That adds an edge to every
map. Their TRADES-lineage twins (``preact_resnet18``, ``wrn_28_10``) have even-sized stride-1 outputs.

For each pair (the DM model vs its twin, matched op by op: the i-th strided main-branch conv and the i-th
strided shortcut) this measures, on ``--images`` CIFAR-10 test images:

- AM as defined, with :func:`cnn_aliasing.measure` (``dm`` and ``twin`` columns);
- for the DM model, AM of the same full-resolution maps (captured with the probe) with padding that adds no
  edge: ``replicate`` (the 31st row/column repeated: x[31] = x[30]), ``reflect`` (x[31] = x[29]), and
  ``crop`` (the last row/column dropped: 30 x 30, a 15 x 15 grid; this drops real samples of y). Replicate
  and reflect padding leave the real output y = x[::2, ::2] and the grid size (16 x 16) unchanged; only the
  padded sample, which y never reads, differs. ``replicate`` is the reference the ``explained`` column uses:
  (dm - dm_replicate) / (dm - twin), the share of the DM-vs-twin difference due to the padding; negative
  where the DM model lies below its twin in spite of the bias. ``edge bias`` is (dm - dm_replicate) /
  dm_replicate, ``DM - twin`` and ``DM - twin, edge-free`` are (dm - twin) / twin and (dm_replicate -
  twin) / twin. Shown: means over seeds (± sd over seeds for AM).

Weights: ``--seeds`` random initialisations (BatchNorm at its initial statistics), and, unless
``--no-train``, the PreAct pair trained with the package's trainer (recipe ``small-standard`` with
``n_train=--train-images``, ``epochs=--epochs``, no per-epoch tracking) into ``--runs-dir`` (a finished run
there is reused). Both members of a pair get the same ``normalize`` and, by default, the same activation
(``--dm-activation relu``; the published DM checkpoints use ``silu``), so the families differ only in their
padding and (PreAct) in the DM shortcut being a 3x3 conv. Widths are reduced to keep the run short on one
CPU thread: PreAct ResNet-18 at ``--preact-width`` (16, as the small recipes) and WRN-28 at
``--wrn-width`` (2: WRN-28-2, not WRN-28-10).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnn_aliasing import aliasing_per_map, measure
from cnn_aliasing.data import iterate_batches, load_cifar10
from cnn_aliasing.downsamplers import StridedCall
from cnn_aliasing.models import create_model, load_checkpoint
from cnn_aliasing.models.wide_resnet import robustbench_init
from cnn_aliasing.probe import OpCall, probing
from cnn_aliasing.runtime import evaluation_mode, run_model
from cnn_aliasing.training import get_recipe, train

#: Ways to bring a stride-1 output to a multiple of the factor. ``zero`` is the metric's definition.
Padder = Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]


def _pad(mode: str) -> Padder:
    def pad(x: torch.Tensor, factor: tuple[int, int]) -> torch.Tensor:
        ph, pw = -x.shape[-2] % factor[0], -x.shape[-1] % factor[1]
        if ph == 0 and pw == 0:
            return x
        return F.pad(x, (0, pw, 0, ph), mode=mode)

    return pad


def _crop(x: torch.Tensor, factor: tuple[int, int]) -> torch.Tensor:
    h, w = x.shape[-2:]
    return x[..., : h - h % factor[0], : w - w % factor[1]]


VARIANTS: dict[str, Padder] = {
    "zero": _pad("constant"),
    "replicate": _pad("replicate"),
    "reflect": _pad("reflect"),
    "crop": _crop,
}
REFERENCE = "replicate"


@dataclass(frozen=True)
class Pair:
    """A DM-style model and its twin, with the factory arguments each gets."""

    label: str
    dm: str
    twin: str
    dm_args: dict[str, Any]
    twin_args: dict[str, Any]


@dataclass
class OpSums:
    """Running per-map sums of one op's aliasing under each padding variant."""

    full_size: tuple[int, int] = (0, 0)
    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(VARIANTS, 0.0))
    count: int = 0

    def means(self) -> dict[str, float]:
        return {k: v / self.count for k, v in self.sums.items()}


def role(name: str) -> str:
    """``shortcut`` for a strided shortcut conv, ``main`` for the main branch's."""
    return "shortcut" if "shortcut" in name.lower() else "main"


def matched_keys(names: list[str]) -> dict[str, str]:
    """Op name -> ``"<role> <i>"`` (the i-th op of that role, 1-based), matching ops across a pair."""
    seen: dict[str, int] = {}
    keys = {}
    for name in names:
        r = role(name)
        seen[r] = seen.get(r, 0) + 1
        keys[name] = f"{r} {seen[r]}"
    return keys


def padding_variants(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, OpSums]:
    """Per op, AM of the captured full-resolution maps under every padding variant of :data:`VARIANTS`."""
    sums: dict[str, OpSums] = {}

    def observe(op: OpCall, call: StridedCall) -> None:
        x = call.measured().detach().to(torch.float64)
        entry = sums.setdefault(op.name, OpSums(full_size=(x.shape[-2], x.shape[-1])))
        for variant, pad in VARIANTS.items():
            entry.sums[variant] += float(aliasing_per_map(pad(x, op.factor), op.factor).sum())
        entry.count += x.shape[0] * x.shape[1]

    with torch.no_grad(), evaluation_mode(model), probing(model, observe):
        for images, _ in batches:
            run_model(model, images)
    return sums


def measure_model(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int
) -> dict[str, Any]:
    """AM per op as defined (``measure``) and under each padding variant (the probe), keyed by op name."""
    report = measure(model, iterate_batches(images, labels, batch_size), progress=False)
    variants = padding_variants(model, iterate_batches(images, labels, batch_size))
    ops = {}
    for op in report.ops:
        means = variants[op.name].means()
        ops[op.name] = {
            "full_size": list(op.full_size),
            "am": op.aliasing,
            "std": op.std,
            "count": op.count,
            **{f"am_{k}": v for k, v in means.items()},
            # the probe's zero-padded value reproduces measure()'s AM (another computation path)
            "check_rel_diff": abs(means["zero"] - op.aliasing) / max(abs(op.aliasing), 1e-300),
        }
    return ops


def build(name: str, args: dict[str, Any], seed: int, init: str) -> nn.Module:
    """Model ``name`` with random weights drawn from ``seed``: the factory's own (``init="default"``) or
    :func:`~cnn_aliasing.models.wide_resnet.robustbench_init` (``"he"``)."""
    torch.manual_seed(seed)
    model = create_model(name, **args)
    if init == "he":
        robustbench_init(model)
    return model.eval()


def trained(
    name: str, arch_args: dict[str, Any], opts: argparse.Namespace
) -> tuple[nn.Module, dict[str, Any]]:
    """The model ``name`` trained by recipe small-standard (shortened) in ``--runs-dir/name``."""
    recipe = get_recipe(
        "small-standard",
        arch=name,
        arch_args=arch_args,
        n_train=opts.train_images,
        epochs=opts.epochs,
        eval_every=0,
        seed=0,
    )
    start = time.perf_counter()
    result = train(recipe, opts.data_dir, Path(opts.runs_dir) / name, device="cpu", progress=False)
    model = create_model(name, **arch_args)
    load_checkpoint(model, result.checkpoint)
    history = result.history
    info = {
        "recipe": "small-standard",
        "n_train": opts.train_images,
        "epochs": opts.epochs,
        "train_accuracy": history[-1].get("train_accuracy") if history else None,
        "seconds": round(time.perf_counter() - start, 1),
    }
    return model.eval(), info


def compare(dm_ops: dict[str, Any], twin_ops: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per matched op: DM AM (as defined and per variant), twin AM, and the share explained."""
    dm_keys, twin_keys = matched_keys(list(dm_ops)), matched_keys(list(twin_ops))
    twin_by_key = {key: name for name, key in twin_keys.items()}
    rows = []
    for name, key in dm_keys.items():
        twin_name = twin_by_key.get(key)
        if twin_name is None:
            continue
        dm, twin = dm_ops[name], twin_ops[twin_name]
        diff = dm["am"] - twin["am"]
        bias = dm["am"] - dm[f"am_{REFERENCE}"]
        rows.append(
            {
                "op": key,
                "dm_op": name,
                "twin_op": twin_name,
                "dm_full_size": dm["full_size"],
                "twin_full_size": twin["full_size"],
                "dm": dm["am"],
                **{f"dm_{k}": dm[f"am_{k}"] for k in VARIANTS if k != "zero"},
                "twin": twin["am"],
                "diff_pct": 100 * diff / twin["am"],
                "diff_edge_free_pct": 100 * (dm[f"am_{REFERENCE}"] - twin["am"]) / twin["am"],
                "bias": bias,
                "bias_pct": 100 * bias / dm[f"am_{REFERENCE}"],
                "explained": bias / diff if diff != 0 else math.nan,
                "check_rel_diff": max(dm["check_rel_diff"], twin["check_rel_diff"]),
            }
        )
    return rows


def average(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Mean over seeds of every numeric column (and its sample sd as ``<col>_sd`` when several seeds);
    ``explained`` is recomputed from the mean AMs (a mean of per-seed ratios would be dominated by seeds
    whose DM and twin happen to agree)."""
    out = []
    for rows in zip(*runs, strict=True):
        first = dict(rows[0])
        for key, value in rows[0].items():
            if isinstance(value, float):
                values = [r[key] for r in rows]
                first[key] = statistics.fmean(values)
                if len(values) > 1:
                    first[f"{key}_sd"] = statistics.stdev(values)
        diff = first["dm"] - first["twin"]  # the share explained, of the mean difference
        first["explained"] = first["bias"] / diff if diff != 0 else math.nan
        first.pop("explained_sd", None)
        out.append(first)
    return out


def markdown(results: list[dict[str, Any]]) -> str:
    head = (
        "| pair | weights | op (DM / twin) | stride-1 size DM / twin | DM AM | DM AM, replicate | "
        "DM AM, reflect | DM AM, crop | twin AM | DM - twin | edge bias | DM - twin, edge-free | explained |"
    )
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for result in results:
        for row in result["rows"]:
            sd = f" ± {row['dm_sd']:.2f}" if "dm_sd" in row else ""
            tsd = f" ± {row['twin_sd']:.2f}" if "twin_sd" in row else ""
            size = f"{row['dm_full_size'][0]} / {row['twin_full_size'][0]}"
            lines.append(
                f"| {result['pair']} | {result['weights']} | {row['op']} ({row['dm_op']} / {row['twin_op']}) "
                f"| {size} | {row['dm']:.3f}{sd} | {row['dm_replicate']:.3f} | {row['dm_reflect']:.3f} "
                f"| {row['dm_crop']:.3f} | {row['twin']:.3f}{tsd} | {row['diff_pct']:+.0f} % "
                f"| {row['bias_pct']:+.1f} % | {row['diff_edge_free_pct']:+.0f} % "
                f"| {100 * row['explained']:.0f} % |"
            )
    return "\n".join(lines)


def pairs(opts: argparse.Namespace) -> list[Pair]:
    common = {"normalize": "cifar10"}
    dm_common = {**common, "activation": opts.dm_activation}
    return [
        Pair(
            "PreAct ResNet-18",
            "dm_preact_resnet18",
            "preact_resnet18",
            {**dm_common, "width": opts.preact_width},
            {**common, "width": opts.preact_width},
        ),
        Pair(
            f"WRN-28-{opts.wrn_width}",
            "dm_wrn_28_10",
            "wrn_28_10",
            {**dm_common, "width": opts.wrn_width},
            {**common, "widen_factor": opts.wrn_width},
        ),
    ]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data-dir", default="data", help="folder holding cifar-10-batches-py (default: data)"
    )
    parser.add_argument("--images", type=int, default=256, help="CIFAR-10 test images measured (default 256)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=3, help="random initialisations per model (default 3)")
    parser.add_argument("--preact-width", type=int, default=16, help="PreAct ResNet-18 width (64 = full)")
    parser.add_argument("--wrn-width", type=int, default=2, help="WRN-28 widening factor (10 = WRN-28-10)")
    parser.add_argument(
        "--dm-activation", default="relu", choices=("relu", "silu"), help="the DM models' activation"
    )
    parser.add_argument(
        "--init",
        default="he",
        choices=("he", "default"),
        help="random weights: the WRN twin's He init for both models of a pair (default), or each "
        "factory's own (the DM models keep PyTorch's default, about 10x smaller AM in WRN-28)",
    )
    parser.add_argument("--no-train", action="store_true", help="random weights only")
    parser.add_argument("--train-images", type=int, default=4000, help="training subset (default 4000)")
    parser.add_argument("--epochs", type=int, default=2, help="training epochs (default 2)")
    parser.add_argument("--runs-dir", default="runs/bench_padding_bias", help="where trained runs are kept")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    return parser.parse_args()


def main() -> None:
    opts = parse_args()
    torch.set_num_threads(opts.threads)
    start = time.perf_counter()
    images, labels = load_cifar10(opts.data_dir, "test", n_images=opts.images, progress=False)
    results: list[dict[str, Any]] = []
    for pair in pairs(opts):
        runs = []
        for seed in range(opts.seeds):
            dm = measure_model(build(pair.dm, pair.dm_args, seed, opts.init), images, labels, opts.batch_size)
            twin = measure_model(
                build(pair.twin, pair.twin_args, seed, opts.init), images, labels, opts.batch_size
            )
            runs.append(compare(dm, twin))
        weights = f"random, {opts.init} init ({opts.seeds} seeds)"
        results.append({"pair": pair.label, "weights": weights, "rows": average(runs), "per_seed": runs})
        print(f"{pair.label}, {weights}: done at {time.perf_counter() - start:.0f} s", flush=True)
    if not opts.no_train:
        pair = pairs(opts)[0]
        dm_model, dm_info = trained(pair.dm, pair.dm_args, opts)
        twin_model, twin_info = trained(pair.twin, pair.twin_args, opts)
        rows = compare(
            measure_model(dm_model, images, labels, opts.batch_size),
            measure_model(twin_model, images, labels, opts.batch_size),
        )
        weights = f"trained ({opts.train_images} x {opts.epochs} ep)"
        results.append(
            {
                "pair": pair.label,
                "weights": weights,
                "rows": rows,
                "training": {"dm": dm_info, "twin": twin_info},
            }
        )
        print(f"{pair.label}, {weights}: done at {time.perf_counter() - start:.0f} s", flush=True)
    print()
    print(markdown(results))
    worst = max(row["check_rel_diff"] for result in results for row in result["rows"])
    print(f"\nprobe vs measure() AM, largest relative difference: {worst:.1e}")
    print(f"{opts.images} images; wall {time.perf_counter() - start:.0f} s on {opts.threads} thread(s)")
    if opts.out is not None:
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()}
        opts.out.write_text(json.dumps({"settings": settings, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
