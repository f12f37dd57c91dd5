"""``cnn-aliasing train``: train a named recipe (normal or adversarial) into a resumable run folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cnn_aliasing.cli.options import (
    add_device_argument,
    join_ranks,
    parse_value,
    positive_int,
    split_key_value,
)
from cnn_aliasing.cli.registry import Subcommand, register_subcommand
from cnn_aliasing.errors import CnnAliasingError
from cnn_aliasing.runtime import set_threads
from cnn_aliasing.training import Recipe, attack_step, get_recipe, list_recipes, train

ARCH_ARG_PREFIX = "arch_args."


def parse_setting(text: str) -> tuple[str, Any]:
    """``FIELD=VALUE`` (or ``arch_args.KEY=VALUE``) as ``(field, parsed value)``; the recipe checks the
    value (eps-like fields take fractions such as 8/255 there)."""
    key, value = split_key_value(
        text, expected="FIELD=VALUE (e.g. epochs=3, eps=8/255, arch_args.width=32)", prefix=ARCH_ARG_PREFIX
    )
    return key, parse_value(value)


def resolve_recipe(name: str, settings: list[tuple[str, Any]]) -> Recipe:
    """The named recipe with the ``--set`` overrides (``arch_args.KEY`` merged into its arch_args)."""
    base = get_recipe(name)
    overrides: dict[str, Any] = {}
    arch_args = dict(base.arch_args)
    for key, value in settings:
        if key.startswith(ARCH_ARG_PREFIX):
            arch_args[key.removeprefix(ARCH_ARG_PREFIX)] = value
        else:
            overrides[key] = value
    if arch_args != base.arch_args:
        overrides["arch_args"] = arch_args
    return get_recipe(name, **overrides)


def format_recipe(recipe: Recipe) -> str:
    """The resolved recipe as JSON, with the attack step the objective uses."""
    shown = recipe.to_dict()
    shown["attack_step_used"] = attack_step(recipe)
    return json.dumps(shown, indent=2)


@register_subcommand
class TrainCommand(Subcommand):
    """``cnn-aliasing train``: a recipe into a run folder (model.safetensors + model.json)."""

    name = "train"
    help = "train a model with a named recipe (normal, PGD-AT, FGSM-RS, TRADES), tracking aliasing per epoch"
    description = (
        "Train a named recipe on CIFAR-10 into --out: model.safetensors (the weights), model.json (the "
        "sidecar: recipe, seed, per-epoch loss, accuracy, throughput, and the clean accuracy, PGD robust "
        "accuracy and aliasing AM of every down-sampling op on a fixed held-out batch) and state.pt (for "
        "resuming). All three are rewritten after every epoch; running the same command again resumes "
        "after a kill with the same result. Any recipe field can be changed with --set. The run folder "
        "works as --model of measure and evaluate. Under torchrun it trains with DistributedDataParallel "
        "on the same global batches (docs/distributed.md); rank 0 alone prints and writes.\n\n"
        f"Recipes: {', '.join(list_recipes())}. The small-* ones take minutes on two CPU cores."
    )
    example = (
        "examples:\n"
        "  cnn-aliasing train --recipe small-standard --data-dir ./data --out runs/small-standard\n"
        "  cnn-aliasing train --recipe small-fgsm-rs --set epochs=3 --data-dir ./data --out runs/fgsm\n"
        "  cnn-aliasing train --recipe paper-baseline --set arch=wrn_28_10 --data-dir ./data \\\n"
        "      --out runs/wrn-baseline --device cuda\n"
        "  cnn-aliasing train --recipe pgd-at --set eps=4/255 --dry-run\n"
        "  torchrun --standalone --nproc-per-node 4 -m cnn_aliasing train --recipe pgd-at \\\n"
        "      --data-dir ./data --out runs/pgd-at --sync-batchnorm\n"
        "  cnn-aliasing measure --model runs/small-standard --data-dir ./data --out small.json"
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--recipe", required=True, choices=list_recipes(), help="the named recipe")
        parser.add_argument(
            "--set",
            dest="settings",
            action="append",
            type=parse_setting,
            metavar="FIELD=VALUE",
            help="override a recipe field, repeatable (e.g. epochs=3, eps=8/255, milestones=[50,75], "
            "arch_args.width=32); see --dry-run for the fields",
        )
        parser.add_argument(
            "--data-dir", type=Path, metavar="DIR", help="folder holding cifar-10-batches-py/"
        )
        parser.add_argument("--out", type=Path, metavar="DIR", help="the run folder to write (and resume)")
        add_device_argument(parser)
        parser.add_argument("--threads", type=positive_int, metavar="N", help="CPU threads (torch's default)")
        parser.add_argument(
            "--restart", action="store_true", help="replace a run in --out instead of resuming"
        )
        parser.add_argument(
            "--sync-batchnorm",
            action="store_true",
            help="under torchrun on GPUs: BatchNorm statistics over the whole global batch (SyncBatchNorm)",
        )
        parser.add_argument("--dry-run", action="store_true", help="print the resolved recipe and exit")

    def run(self, args: argparse.Namespace) -> int:
        recipe = resolve_recipe(args.recipe, args.settings or [])
        if args.dry_run:
            print(format_recipe(recipe))
            return 0
        missing = [
            option for option, value in (("--data-dir", args.data_dir), ("--out", args.out)) if not value
        ]
        if missing:
            raise CnnAliasingError(f"train needs {' and '.join(missing)} (only --dry-run runs without them)")
        if args.out.exists() and not args.out.is_dir():
            raise CnnAliasingError(f"--out {args.out} is a file; give a folder for the run")
        context, device = join_ranks(args.device)
        set_threads(args.threads)
        result = train(
            recipe,
            args.data_dir,
            args.out,
            device=device,
            progress=not args.quiet,
            resume=not args.restart,
            sync_batchnorm=args.sync_batchnorm,
        )
        if context.is_main:
            _print_summary(result.sidecar, args.out)
        return 0


def _print_summary(sidecar: dict[str, Any], out: Path) -> None:
    """One line per epoch and the files written, on stdout."""
    recipe = sidecar["recipe"]
    print(f"{recipe['name']}: {recipe['arch']} {recipe['arch_args']}, objective {recipe['objective']}")
    for row in sidecar["history"]:
        line = (
            f"epoch {row['epoch']:>3}  lr {row['lr']:.4g}  loss {row['train_loss']:.4f}  "
            f"acc {row['train_accuracy']:.4f}  {row['images_per_second']:.0f} img/s"
        )
        if row["eval"] is not None:
            line += f"  test {row['eval']['clean_accuracy']:.4f}  pgd {row['eval']['pgd_accuracy']:.4f}"
        print(line)
    for warning in sidecar["warnings"]:
        print(f"warning: {warning['message']}")
    print(f"wrote {out / 'model.safetensors'} and {out / 'model.json'}")
