"""``cnn-aliasing models``: the registered architectures and the model zoo."""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cnn_aliasing import models, zoo
from cnn_aliasing.cli.registry import Subcommand, register_subcommand


@register_subcommand
class ModelsCommand(Subcommand):
    """``cnn-aliasing models``: the registered architectures and the model zoo."""

    name = "models"
    help = "list the registered architectures and the model zoo (reported accuracies, local checkpoints)"
    description = (
        "List the registered architectures (for --model with --model-arg and --checkpoint) with a one-line "
        "description each, then the zoo: RobustBench CIFAR-10 Linf models (for --model alone) with their "
        "architecture, tags, the clean and AutoAttack (eps 8/255) accuracies RobustBench reports, and "
        "whether their checkpoint is in --model-dir."
    )
    example = "examples:\n  cnn-aliasing models\n  cnn-aliasing models --tag wrn-28-10 --model-dir ~/models"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--model-dir",
            type=Path,
            default=zoo.DEFAULT_MODEL_DIR,
            metavar="DIR",
            help="where to look for zoo checkpoints (DIR/cifar10/Linf/NAME.pt)",
        )
        parser.add_argument(
            "--tag",
            dest="tags",
            action="append",
            metavar="TAG",
            help=f"list only zoo models with this tag, repeatable ({', '.join(zoo.zoo_tags())})",
        )

    def run(self, args: argparse.Namespace) -> int:
        entries = zoo.select(*(args.tags or ()))
        descriptions = models.model_descriptions()
        width = max(map(len, descriptions), default=0)
        print("architectures:")
        for name, text in descriptions.items():
            print(f"  {name.ljust(width)}  {text}".rstrip())
        print(
            f"\nzoo (RobustBench CIFAR-10 Linf; reported accuracies in %; checkpoints in {args.model_dir}):"
        )
        rows = [
            {
                "name": e.name,
                "architecture": e.arch,
                "training": e.training,
                "family": e.family,
                "clean": f"{e.clean_acc:.2f}",
                "autoattack": f"{e.autoattack_acc:.2f}",
                "checkpoint": "present"
                if zoo.checkpoint_path(e.name, args.model_dir).is_file()
                else "missing",
            }
            for e in entries
        ]
        print(textwrap.indent(format_table(rows), "  "))
        return 0


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Rows (dicts with the same keys, values as text) as aligned plain text with a header line."""
    if not rows:
        return "(none)"
    header = list(rows[0])
    widths = [max(len(h), *(len(str(r[h])) for r in rows)) for h in header]
    lines = [header, *([str(r[h]) for h in header] for r in rows)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )
