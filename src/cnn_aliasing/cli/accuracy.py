"""``cnn-aliasing evaluate``: the accuracy of a model on CIFAR-10."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from cnn_aliasing import data, zoo
from cnn_aliasing.cli.options import (
    add_data_arguments,
    add_model_arguments,
    load_model,
    prepare_output,
    resolve_device,
    run_meta,
)
from cnn_aliasing.cli.registry import Subcommand, register_subcommand
from cnn_aliasing.evaluation import clean_accuracy
from cnn_aliasing.provenance import write_json_atomic


@register_subcommand
class EvaluateCommand(Subcommand):
    """``cnn-aliasing evaluate``: clean accuracy on CIFAR-10, beside the zoo's reported accuracies."""

    name = "evaluate"
    help = "clean accuracy of a model on CIFAR-10 images (zoo models: beside RobustBench's reported ones)"
    description = (
        "Classify CIFAR-10 images with a model and report its clean (top-1) accuracy. For a zoo model the "
        "accuracies RobustBench reports (clean and AutoAttack, full test set) are shown beside it. "
        "Optionally writes a JSON file with the result, all arguments, versions and the checkpoint SHA-256."
    )
    example = (
        "examples:\n"
        "  cnn-aliasing evaluate --model Carmon2019Unlabeled --model-dir ./models --data-dir ./data \\\n"
        "      --n-images 1000\n"
        "  cnn-aliasing evaluate --model Standard --download-weights --data-dir ./data --out standard.json\n"
        "  cnn-aliasing evaluate --model preact_resnet18 --checkpoint weights.pt --data-dir ./data"
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_model_arguments(parser)
        add_data_arguments(parser)
        run = parser.add_argument_group("evaluation")
        run.add_argument(
            "--device", metavar="DEVICE", help="torch device (default: cuda if available, else cpu)"
        )
        out = parser.add_argument_group("output")
        out.add_argument("--out", type=Path, metavar="FILE", help="also write the result as JSON")

    def run(self, args: argparse.Namespace) -> int:
        start = time.perf_counter()
        if args.out is not None:
            prepare_output(args.out, "--out")
        device = resolve_device(args.device)
        model, model_meta = load_model(args)
        images, labels = data.load_cifar10(
            args.data_dir, args.split, n_images=args.n_images, download=args.download, progress=not args.quiet
        )
        model.to(device)
        batches = data.iterate_batches(images, labels, args.batch_size, device=device)
        results = {"clean": clean_accuracy(model, batches, progress=not args.quiet, total_images=len(images))}
        reported = model_meta["model"].get("zoo", {}).get("reported")
        seconds = time.perf_counter() - start
        print(
            f"clean accuracy of {args.model} on {len(images)} CIFAR-10 {args.split} images: "
            f"{results['clean']} (device={device}, {seconds:.1f} s)"
        )
        if reported is not None:
            print(
                f"reported by RobustBench (full test set): clean {reported['clean_acc']:.2f}%, AutoAttack "
                f"{reported['autoattack_acc']:.2f}% (Linf, eps {zoo.EPS})"
            )
        if args.out is not None:
            meta = run_meta(args, self.name, model_meta, len(images), device, elapsed_s=seconds)
            results_json = {name: result.to_dict() for name, result in results.items()}
            write_json_atomic(args.out, {**results_json, "reported": reported, "meta": meta})
            print(f"wrote {args.out}")
        return 0
