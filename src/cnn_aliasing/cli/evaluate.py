"""``cnn-aliasing evaluate``: the accuracy of a model on CIFAR-10."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from cnn_aliasing import attacks, data, zoo
from cnn_aliasing.clean_accuracy import AccuracyResult, clean_accuracy
from cnn_aliasing.cli.options import (
    add_input_arguments,
    load_inputs,
    prepare_output,
)
from cnn_aliasing.cli.registry import Subcommand, register_subcommand
from cnn_aliasing.eps import parse_eps
from cnn_aliasing.files import write_json_atomic


@register_subcommand
class EvaluateCommand(Subcommand):
    """``cnn-aliasing evaluate``: clean accuracy on CIFAR-10, beside the zoo's reported accuracies."""

    name = "evaluate"
    help = "clean and robust accuracy of a model on CIFAR-10 (zoo models: beside RobustBench's reported ones)"
    description = (
        "Classify CIFAR-10 images with a model and report its clean (top-1) accuracy, and with --attack its "
        "robust accuracy under an attack cascade (AutoAttack 'standard': APGD-CE, APGD-T, FAB-T, Square) at "
        "radius --eps, with the robust accuracy after each attack. For a zoo model the accuracies "
        "RobustBench reports (clean and AutoAttack, full test set) are shown beside them. Optionally writes "
        "a JSON file with the results, all arguments, versions and the checkpoint SHA-256.\n\n"
        "A robust evaluation with --state FILE saves its progress after every batch; run the same command "
        "again after an interruption and it continues where it stopped. Under torchrun the attack batches "
        "are shared among the processes, with the same result (docs/distributed.md)."
    )
    example = (
        "examples:\n"
        "  cnn-aliasing evaluate --model Carmon2019Unlabeled --model-dir ./models --data-dir ./data \\\n"
        "      --n-images 1000\n"
        "  cnn-aliasing evaluate --model Standard --download-weights --data-dir ./data --out standard.json\n"
        "  cnn-aliasing evaluate --model preact_resnet18 --checkpoint weights.pt --data-dir ./data\n"
        "  cnn-aliasing evaluate --model Carmon2019Unlabeled --data-dir ./data --n-images 1000 \\\n"
        "      --attack standard --eps 8/255 --state runs/carmon-aa.state.json --out runs/carmon-aa.json"
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_input_arguments(parser, "evaluation")
        attack = parser.add_argument_group("robust accuracy")
        attack.add_argument(
            "--attack",
            metavar="ATTACK",
            help=f"also measure robust accuracy: a preset ({', '.join(attacks.PRESETS)}) or attack names "
            f"joined by '+' ({', '.join(attacks.list_attacks())})",
        )
        attack.add_argument(
            "--eps", type=str, default="8/255", help="radius of the threat model, a number or a fraction"
        )
        attack.add_argument("--norm", choices=attacks.NORMS, default="Linf", help="norm of the threat model")
        attack.add_argument("--attack-seed", type=int, default=0, help="seed of the attacks' randomness")
        attack.add_argument(
            "--state",
            type=Path,
            metavar="FILE",
            help="save progress here after every batch and resume from it when it exists",
        )
        out = parser.add_argument_group("output")
        out.add_argument("--out", type=Path, metavar="FILE", help="also write the result as JSON")

    def run(self, args: argparse.Namespace) -> int:
        start = time.perf_counter()
        if args.out is not None:
            prepare_output(args.out, "--out")
        eps = parse_eps(args.eps)
        if args.attack is not None:  # refuse an unknown attack or a mistaken radius before any work
            attacks.check_radius(eps, args.norm)
            attacks.resolve_attacks(args.attack)
            if args.state is not None:
                prepare_output(args.state, "--state")
        inputs = load_inputs(args)
        context, device = inputs.context, inputs.device
        model, images, labels = inputs.model, inputs.images, inputs.labels
        if args.attack is not None:
            attacks.check_radius(eps, args.norm, tuple(images.shape[1:]))  # an L2 eps above the diameter
        model.to(device).eval()  # attacks expect an eval-mode model (and warn otherwise)
        bars = not args.quiet and context.is_main
        batches = data.iterate_batches(images, labels, args.batch_size, device=device)
        results: dict[str, AccuracyResult | attacks.RobustAccuracy] = {
            "clean": clean_accuracy(model, batches, progress=bars, total_images=len(images))
        }
        if context.is_main:
            print(
                f"clean accuracy of {args.model} on {len(images)} CIFAR-10 {args.split} images: "
                f"{results['clean']} (device={device}, {time.perf_counter() - start:.1f} s)"
            )
        if args.attack is not None:
            results["robust"] = self._robust(args, model, images, labels, device, eps, context.is_main)
        reported = inputs.model_meta["model"].get("zoo", {}).get("reported")
        seconds = time.perf_counter() - start
        if not context.is_main:
            return 0
        if reported is not None:
            print(
                f"reported by RobustBench (full test set): clean {reported['clean_acc']:.2f}%, AutoAttack "
                f"{reported['autoattack_acc']:.2f}% (Linf, eps {zoo.EPS})"
            )
        if args.out is not None:
            meta = inputs.meta(args, self.name, elapsed_s=seconds)
            results_json = {name: result.to_dict() for name, result in results.items()}
            write_json_atomic(args.out, {**results_json, "reported": reported, "meta": meta})
            print(f"wrote {args.out}")
        return 0

    @staticmethod
    def _robust(
        args: argparse.Namespace,
        model: torch.nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        device: torch.device,
        eps: float,
        main: bool,
    ) -> attacks.RobustAccuracy:
        """Robust accuracy under ``--attack`` at ``eps`` (shared among the ranks under torchrun), printed
        with the accuracy after each attack on rank 0 (``main``)."""
        result = attacks.robust_accuracy(
            model,
            images,
            labels,
            eps,
            norm=args.norm,
            attack=args.attack,
            batch_size=args.batch_size,
            seed=args.attack_seed,
            device=device,
            state_path=args.state,
            progress=not args.quiet,
            across_ranks=True,
        )
        if not main:
            return result
        print(
            f"robust accuracy under {result.attack} ({args.norm}, eps {args.eps}): "
            f"{100 * result.robust_accuracy:.2f}% (clean {100 * result.clean_accuracy:.2f}%)"
        )
        for name, accuracy in result.per_attack:
            print(f"  after {name}: {100 * accuracy:.2f}%")
        return result
