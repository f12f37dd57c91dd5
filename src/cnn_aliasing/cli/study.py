"""``cnn-aliasing study``: run (or resume) a study config into its results folder and build the report."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from cnn_aliasing.cli.options import add_device_argument, join_ranks
from cnn_aliasing.cli.registry import Subcommand, register_subcommand
from cnn_aliasing.errors import CnnAliasingError
from cnn_aliasing.study import StudyConfig, expand_models, load_config, run_study, shipped_configs
from cnn_aliasing.study.config import DEFAULT_CONFIG, device_setting
from cnn_aliasing.study.sharding import Shard

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
        "the exit status is then 1. The config format: docs/study.md.\n\n"
        "--shard I/N runs only the models whose 0-based position in the study is I modulo N (the snapshots "
        "of one training run count as one position, so one job trains that run), so N "
        "independent jobs (e.g. a Slurm array) share one results folder; the report is built by the job "
        "that finds no model left (else run `cnn-aliasing report DIR` once all have ended). Under torchrun "
        "each model's measurements are shared among the ranks (docs/distributed.md)."
    )
    example = (
        "examples:\n"
        "  cnn-aliasing study                       # the quick study (configs/quick.toml)\n"
        "  cnn-aliasing study paper-wrn28 --device cuda\n"
        "  cnn-aliasing study my-study.toml --out runs/mine --dry-run\n"
        "  cnn-aliasing study paper-wrn28 --shard 0/4   # the first of 4 independent jobs\n"
        "  torchrun --standalone --nproc-per-node 4 -m cnn_aliasing study paper-wrn28\n"
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
            "--shard",
            type=_shard,
            metavar="I/N",
            help="run only the models at positions I, I+N, I+2N, ... (0-based, 0 <= I < N) of the study",
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
            _print_plan(config, args.shard)
            return 0
        context, device = join_ranks(config.device)
        summary = run_study(
            config,
            force=args.force,
            progress=not args.quiet,
            device=device,
            report=not args.no_report,
            shard=args.shard,
        )
        if not context.is_main:
            return EXIT_SOME_FAILED if summary.failed else 0
        done = sum(m.status == "done" for m in summary.models)
        skipped = sum(m.skipped for m in summary.models)
        print(
            f"study {config.name}: {done}/{len(summary.models)} models done ({skipped} from an earlier run), "
            f"{len(summary.failed)} failed, {summary.wall_seconds:.1f} s; results in {summary.output}"
        )
        for failed in summary.failed:
            print(f"  failed: {failed.name}: {failed.error}")
        for warning in (w for m in summary.models for w in m.warnings):
            print(f"  warning: {warning}")
        if summary.report is not None:
            print(f"report: {summary.report}")
            print("the answer (the report's first lines; what each test means: docs/report.md):")
            for line in summary.answer:
                print(f"- {line}")
        elif summary.left_to_other_shards and not args.no_report:
            print(
                f"shard {args.shard}: {summary.left_to_other_shards} model(s) of other shards not finished "
                f"yet, so no report; run `cnn-aliasing report {summary.output}` once every shard has ended"
            )
        return EXIT_SOME_FAILED if summary.failed else 0


def _shard(text: str) -> Shard:
    """``--shard``'s value as a :class:`Shard` (an argparse type)."""
    try:
        return Shard.parse(text)
    except CnnAliasingError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _print_plan(config: StudyConfig, shard: Shard | None) -> None:
    """The resolved config as JSON, then one line per model the study (or the shard) would run."""
    print(json.dumps({"config_path": str(config.path), **config.to_dict()}, indent=2))
    models = expand_models(config.models, config.model_dir)
    chosen = models if shard is None else shard.select(models)
    mine = [i for i, m in enumerate(models) if m in chosen]
    if shard is not None:
        print(f"shard {shard} runs {len(mine)} of these:")
    print(f"{len(models)} models -> {config.output}")
    for i, model in ((i + 1, models[i]) for i in mine):
        robust = {True: "robust", False: "standard", None: "robust?"}[model.robust]
        source = ", ".join(f"{k}={v}" for k, v in model.source.items() if k != "type")
        arch = model.arch or "(from the recipe)"
        print(f"  {i:2d}. {model.name}: {model.source['type']} ({source}); {arch}; {robust}")
