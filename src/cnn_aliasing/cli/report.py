"""``cnn-aliasing report``: rebuild a study's tables, figures, statistics and report.html from its files."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING

from cnn_aliasing.cli.registry import Subcommand, register_subcommand

if TYPE_CHECKING:
    from cnn_aliasing.report import Report
    from cnn_aliasing.report.statistics import OpStatistics


@register_subcommand
class ReportCommand(Subcommand):
    """``cnn-aliasing report RESULTS_DIR``: the report of a study, from its result files alone."""

    name = "report"
    help = "rebuild a study's report (tables, figures, statistics, report.html) from its result files"
    description = (
        "Read a study's results folder (study.json, models/*.json, spectra/*.json) and write results.csv, "
        "results.json, figures/*.png and *.svg and report.html, one self-contained page. Nothing is rerun: "
        "no model is loaded. Prints the page's path, the answer and, per down-sampling op, Spearman's rank "
        "correlation between AM and robust accuracy with its permutation and Holm-adjusted p-values, the "
        "correlation with clean accuracy and the partial correlation where it exists."
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


def _partial(o: OpStatistics) -> str:
    partial = o.am.partial
    if partial.reason is not None:
        return f"none ({partial.reason})"
    return f"{partial.rho:+.2f} {partial.interval.text() if partial.interval else ''}".rstrip()


def _number(value: float, spec: str) -> str:
    return format(value, spec) if math.isfinite(value) else "undefined"


def _op_line(o: OpStatistics) -> str:
    c, clean = o.correlation, o.am.clean
    return (
        f"{o.op}: n = {c.n}, rho = {_number(c.rho, '+.2f')}, {c.test.p_text()}, "
        f"Holm p = {_number(c.p_holm, '.2g')}; rho with clean accuracy = {_number(clean.rho, '+.2f')} "
        f"({clean.test.p_text()}); partial: {_partial(o)}"
    )


def _print_summary(report: Report) -> None:
    """The page's path, the model counts, the answer, the collinearity, one line per op and the per-image
    summary."""
    results, stats = report.results, report.statistics
    done = len(results.done_models)
    print(f"wrote {report.html}")
    print(f"study {results.name}: {len(results.models)} models, {done} finished")
    for sentence in stats.answer:
        print(sentence)
    c = stats.collinearity
    print(f"clean vs robust accuracy across {c.n} models: rho = {_number(c.rho, '+.2f')}, {c.test.p_text()}")
    for o in stats.ops:
        print(_op_line(o))
    for o in stats.ops:
        if o.within:
            rhos = ", ".join(f"{w.model} {w.rho:+.2f} ({w.n_images})" for w in o.within)
            print(f"per image, {o.op}: rho(AM, margin) over clean-correct attacked images: {rhos}")
