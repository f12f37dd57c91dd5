"""``cnn-aliasing study``: run (or resume) a study config into its results folder and build the report."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from cnn_aliasing.cli.options import add_device_argument, resolve_device
from cnn_aliasing.cli.registry import Subcommand, register_subcommand
from cnn_aliasing.study import StudyConfig, expand_models, load_config, run_study, shipped_configs
from cnn_aliasing.study.config import DEFAULT_CONFIG, device_setting

EXIT_SOME_FAILED = 1


@register_subcommand
class StudyCommand(Subcommand):
    """``cnn-aliasing study [CONFIG]``: models x (clean accuracy, robust accuracy, aliasing) -> report."""

    name = "study"
    help = "run a study config: accuracy, robust accuracy and aliasing of a set of models, and a report"
    description = (
        "Run the study described by CONFIG (a .toml file, or the name of a shipped config: "
        f"{', '.join(shipped_configs())}; default {DEFAULT_CONFIG}): for every model (zoo models, local "
        "checkpoints, or recipes the study trains) measure clean accuracy, robust accuracy and the aliasing "
        "of every down-sampling op on the same images, write one result file per model into the output "
        "folder, then build the report (report.html, figures, results.csv) from those files.\n\n"
        "Each model's results are written as soon as they exist; run the same command again after an "
        "interruption and it skips the models already done (an interrupted attack or training resumes). "
        "A model that fails (missing checkpoint, NaN) is recorded with its reason and the others go on; "
        "the exit status is then 1. The config format: docs/study.md."
    )
    example = (
        "examples:\n"
        "  cnn-aliasing study                       # the quick study (configs/quick.toml)\n"
        "  cnn-aliasing study paper-wrn28 --device cuda\n"
        "  cnn-aliasing study my-study.toml --out runs/mine --dry-run\n"
        "  cnn-aliasing report runs/quick           # rebuild the report without rerunning"
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "config",
            nargs="?",
            default=DEFAULT_CONFIG,
            metavar="CONFIG",
            help=f"a study config (.toml) or a shipped config name ({', '.join(shipped_configs())})",
        )
        parser.add_argument("--force", action="store_true", help="recompute models already done")
        parser.add_argument("--out", type=Path, metavar="DIR", help="results folder (default: the config's)")
        add_device_argument(parser, default="the config's; auto = cuda if available, else cpu")
        parser.add_argument(
            "--no-report",
            action="store_true",
            help="only the result files; build the report later with `cnn-aliasing report DIR`",
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="print the resolved config and the models it expands to, then exit",
        )

    def run(self, args: argparse.Namespace) -> int:
        config = load_config(args.config)
        if args.out is not None:
            config = dataclasses.replace(config, output=args.out.expanduser().absolute())
        if args.device is not None:
            config = dataclasses.replace(config, device=device_setting(args.device, "--device"))
        if args.dry_run:
            _print_plan(config)
            return 0
        device = resolve_device(config.device)
        summary = run_study(
            config, force=args.force, progress=not args.quiet, device=device, report=not args.no_report
        )
        done = sum(m.status == "done" for m in summary.models)
        skipped = sum(m.skipped for m in summary.models)
        print(
            f"study {config.name}: {done}/{len(summary.models)} models done ({skipped} from an earlier run), "
            f"{len(summary.failed)} failed, {summary.wall_seconds:.1f} s; results in {summary.output}"
        )
        for failed in summary.failed:
            print(f"  failed: {failed.name}: {failed.error}")
        if summary.report is not None:
            print(f"report: {summary.report}")
        return EXIT_SOME_FAILED if summary.failed else 0


def _print_plan(config: StudyConfig) -> None:
    """The resolved config as JSON, then one line per model the study would run."""
    print(json.dumps({"config_path": str(config.path), **config.to_dict()}, indent=2))
    models = expand_models(config.models, config.model_dir)
    print(f"{len(models)} models -> {config.output}")
    for i, model in enumerate(models, start=1):
        robust = {True: "robust", False: "standard", None: "robust?"}[model.robust]
        source = ", ".join(f"{k}={v}" for k, v in model.source.items() if k != "type")
        arch = model.arch or "(from the recipe)"
        print(f"  {i:2d}. {model.name}: {model.source['type']} ({source}); {arch}; {robust}")
