"""``cnn-aliasing report``: rebuild a study's tables, figures, statistics and report.html from its files."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from cnn_aliasing.cli.registry import Subcommand, register_subcommand

if TYPE_CHECKING:
    from cnn_aliasing.report import Report
    from cnn_aliasing.report.statistics import Interval


@register_subcommand
class ReportCommand(Subcommand):
    """``cnn-aliasing report RESULTS_DIR``: the report of a study, from its result files alone."""

    name = "report"
    help = "rebuild a study's report (tables, figures, statistics, report.html) from its result files"
    description = (
        "Read a study's results folder (study.json, models/*.json, spectra/*.json) and write results.csv, "
        "results.json, figures/*.png and *.svg and report.html, one self-contained page. Nothing is rerun: "
        "no model is loaded. Prints the page's path and, per down-sampling op, Spearman's rank correlation "
        "between AM and robust accuracy and the ratio of the mean AM of robust to standard models, each "
        "with its bootstrap interval."
    )
    example = (
        "examples:\n  cnn-aliasing report runs/quick\n  cnn-aliasing report runs/quick --out /tmp/quick.html"
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("results_dir", type=Path, metavar="RESULTS_DIR", help="the study's output folder")
        parser.add_argument(
            "--out",
            type=Path,
            metavar="FILE",
            help="where to write the page (default: RESULTS_DIR/report.html)",
        )

    def run(self, args: argparse.Namespace) -> int:
        from cnn_aliasing.report import make_report  # here, not at start-up: matplotlib is slow to load

        report = make_report(args.results_dir, out=args.out, progress=not args.quiet)
        _print_summary(report)
        return 0


def _interval(ci: Interval, spec: str) -> str:
    return f"[{format(ci.low, spec)}, {format(ci.high, spec)}]" if ci.defined else "[-]"


def _print_summary(report: Report) -> None:
    """The page's path, the model counts, one line per op and the overall verdict."""
    results, stats = report.results, report.statistics
    done = len(results.done_models)
    print(f"wrote {report.html}")
    print(f"study {results.name}: {len(results.models)} models, {done} finished")
    for sentence in stats.answer:
        print(sentence)
    level = f"{100 * stats.level:g}%"
    width = max((len(o.op) for o in stats.ops), default=2)
    print(
        f"{'op':<{width}}  {'n':>3}  {'spearman':>8}  {level + ' CI':<16}  {'partial':>8}  "
        f"{level + ' CI':<16}  {'AM ratio':>8}  {level} CI"
    )
    for o in stats.ops:
        c, r, p = o.correlation, o.ratio, o.partial
        partial = (
            f"{p.rho:>+8.2f}  {_interval(p.interval, '+.2f'):<16}" if p is not None else f"{'-':>8}  {'':<16}"
        )
        print(
            f"{o.op:<{width}}  {c.n:>3}  {c.rho:>+8.2f}  {_interval(c.interval, '+.2f'):<16}  {partial}  "
            f"{r.ratio:>8.2f}  {_interval(r.interval, '.2f')}"
        )
    print(stats.verdict)
