"""``cnn-aliasing measure``: the aliasing of every down-sampling op of a model on CIFAR-10."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from cnn_aliasing import data, distributed, spectral
from cnn_aliasing.aliasing_report import AliasingReport
from cnn_aliasing.cli.options import (
    add_input_arguments,
    load_inputs,
    prepare_output,
)
from cnn_aliasing.cli.registry import Subcommand, register_subcommand
from cnn_aliasing.errors import CnnAliasingError
from cnn_aliasing.files import write_csv_atomic, write_json_atomic
from cnn_aliasing.measurement import measure
from cnn_aliasing.probe import find_downsamplers


@register_subcommand
class MeasureCommand(Subcommand):
    """``cnn-aliasing measure``: AM of every down-sampling op of a model on CIFAR-10."""

    name = "measure"
    help = "measure the aliasing of every down-sampling op of a model on CIFAR-10 images"
    description = (
        "Measure the aliasing metric AM (the mean over all feature maps of sum |Y - Z|, Grabinski et al.) of "
        "every down-sampling op (strided convolution, pooling, strided slicing) of a model on CIFAR-10 "
        "images. Prints one row per op in forward order and writes a JSON report (results, all arguments, "
        "versions, git commit, checkpoint SHA-256, timing), optionally a CSV table.\n\n"
        "Global pooling to one pixel is not measured. An architecture without --checkpoint keeps its random "
        "initialisation (seeded with --seed); a zoo model reads its RobustBench checkpoint from "
        "--model-dir.\n\n"
        "Under torchrun (e.g. torchrun --standalone --nproc-per-node 4 -m cnn_aliasing measure ...) each "
        "process measures its share of the images and rank 0 writes the one report (docs/distributed.md)."
    )
    example = (
        "examples:\n"
        "  cnn-aliasing measure --model preact_resnet18 --checkpoint weights.pt --data-dir ./data \\\n"
        "      --out results/preact.json --csv results/preact.csv\n"
        "  cnn-aliasing measure --model wrn_28_10 --model-arg depth=16 --model-arg widen_factor=4 \\\n"
        "      --data-dir ./data --n-images 200 --include 'block2.*' --metric relative_aliasing \\\n"
        "      --out wrn.json\n"
        "  cnn-aliasing measure --model Carmon2019Unlabeled --model-dir ./models --data-dir ./data \\\n"
        "      --out carmon.json"
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        run = add_input_arguments(parser, "measurement")
        run.add_argument(
            "--include",
            action="extend",
            nargs="+",
            metavar="PATTERN",
            help="measure only ops whose name matches one of these shell patterns (e.g. 'layer2.*')",
        )
        run.add_argument(
            "--exclude",
            action="extend",
            nargs="+",
            metavar="PATTERN",
            help="skip ops whose name matches one of these shell patterns (e.g. '*shortcut*')",
        )
        run.add_argument(
            "--nyquist",
            default=spectral.Nyquist.ZERO.value,
            choices=[n.value for n in spectral.Nyquist],
            help="what the alias-free spectrum keeps at the new Nyquist bin: zero (the paper's eq. 5) or "
            "keep_negative (as FLC pooling does)",
        )
        run.add_argument(
            "--metric",
            dest="metrics",
            action="extend",
            nargs="+",
            choices=list(spectral.PER_MAP_METRICS),
            metavar="NAME",
            help=f"per-map metrics to report beside AM (which is always reported): "
            f"{', '.join(spectral.PER_MAP_METRICS)}",
        )
        run.add_argument(
            "--per-channel", action="store_true", help="also keep each channel's mean in the JSON"
        )
        run.add_argument(
            "--sample-channels",
            type=_sample_channels,
            metavar="K",
            help="estimate instead of measuring every map: form the full-resolution output of K output "
            "channels of each op (an integer, e.g. 16) or of that fraction of them (a number in (0, 1], "
            "e.g. 0.125), and report AM with its standard error and 95%% interval over the channel draw "
            "(default: every channel, exact)",
        )
        run.add_argument(
            "--sample-seed",
            type=int,
            default=0,
            metavar="S",
            help="seed of the channel draw of --sample-channels (default: 0)",
        )
        out = parser.add_argument_group("output")
        out.add_argument("--out", type=Path, required=True, metavar="FILE", help="JSON report to write")
        out.add_argument("--csv", type=Path, metavar="FILE", help="also write the per-op table as CSV")

    def run(self, args: argparse.Namespace) -> int:
        start = time.perf_counter()
        prepare_output(args.out, "--out")
        if args.csv is not None:
            prepare_output(args.csv, "--csv")
        inputs = load_inputs(args)
        context, device = inputs.context, inputs.device
        model, images, labels = inputs.model, inputs.images, inputs.labels
        _check_selection(model, images, args)
        shard = distributed.shard_range(len(images), context)
        mine = slice(shard.start, shard.stop)
        measure_start = time.perf_counter()
        report = measure(
            model,
            data.iterate_batches(images[mine], labels[mine], args.batch_size, device=device),
            device=device,
            include=args.include,
            exclude=args.exclude,
            nyquist=args.nyquist,
            metrics=args.metrics or (),
            per_channel=args.per_channel,
            progress=not args.quiet,
            total_images=len(shard),
            sample_channels=args.sample_channels,
            seed=args.sample_seed,
            across_ranks=True,
        )
        end = time.perf_counter()
        report.meta.update(inputs.meta(args, self.name, measure_s=end - measure_start, elapsed_s=end - start))
        if context.is_main:
            write_json_atomic(args.out, report.to_dict())
            if args.csv is not None:
                write_csv_atomic(args.csv, report.rows())
            _print_report(report, args, device, end - start)
        return 0


def _sample_channels(text: str) -> int | float:
    """``--sample-channels``: an integer count, or a fraction written with a point or an exponent (the
    range is checked by measure, naming the valid values)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a channel count (e.g. 16) or a fraction in (0, 1] (e.g. 0.125), got {text!r}"
        ) from None


def _check_selection(model: torch.nn.Module, images: torch.Tensor, args: argparse.Namespace) -> None:
    """Refuse ``--include``/``--exclude`` patterns that leave no op to measure, before measuring."""
    if not (args.include or args.exclude):
        return
    example = data.to_float(images[:1])
    if find_downsamplers(model, example, include=args.include, exclude=args.exclude):
        return
    found = [d.name for d in find_downsamplers(model, example)]
    given = " ".join(
        f"{option} {' '.join(map(repr, patterns))}"
        for option, patterns in (("--include", args.include), ("--exclude", args.exclude))
        if patterns
    )
    raise CnnAliasingError(
        f"no down-sampling op of {args.model} is left after {given}; its ops are: "
        f"{', '.join(found) or '(none)'}"
    )


def _print_report(
    report: AliasingReport, args: argparse.Namespace, device: torch.device, seconds: float
) -> None:
    """The header line, the per-op table and the files written, on stdout."""
    print(
        f"aliasing of {len(report.ops)} down-sampling ops of {args.model} over {report.n_images} CIFAR-10 "
        f"{args.split} images ({report.settings()}, device={device}, {seconds:.1f} s)"
    )
    print(report.format_table())
    print(f"wrote {args.out}" + (f" and {args.csv}" if args.csv is not None else ""))
