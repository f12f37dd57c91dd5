"""The study's report, made from its result files alone: tables, statistics, figures and ``report.html``.

``build_report(results_dir)`` reads ``study.json``, ``models/*.json`` and ``spectra/*.json`` (see
docs/results-format.md) and writes ``results.csv``, ``results.json``, ``statistics.json``,
``figures/*.png|svg`` and ``report.html``; it never runs a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cnn_aliasing.files import atomic_file, write_json_atomic
from cnn_aliasing.provenance import code_metadata
from cnn_aliasing.report.figures import make_figures
from cnn_aliasing.report.html import render_html
from cnn_aliasing.report.results import ResultsError, StudyResults, load_results, table_rows, write_tables
from cnn_aliasing.report.statistics import StudyStatistics, compute_statistics

__all__ = ["Report", "ResultsError", "build_report", "load_results", "make_report"]


@dataclass(frozen=True)
class Report:
    """What :func:`make_report` produced: the page's path, the results it read and their statistics."""

    html: Path
    results: StudyResults
    statistics: StudyStatistics


def make_report(results_dir: str | Path, *, out: str | Path | None = None, progress: bool = True) -> Report:
    """Build every report file from the result files in ``results_dir`` (the statistics also as
    ``statistics.json``); ``out`` is the page's path (default ``results_dir/report.html``). The
    bootstrap's resamples and seed come from the config's ``report.n_resamples`` and ``report.seed``."""
    results = load_results(results_dir)
    settings = results.settings
    stats = compute_statistics(results, n_resamples=settings.n_resamples, seed=settings.seed)
    rows = table_rows(results)
    write_tables(results, rows)
    write_json_atomic(results.root / "statistics.json", stats.to_dict())
    figures = make_figures(results, results.root / "figures", progress=progress)
    html_path = Path(out) if out is not None else results.root / "report.html"
    page = render_html(results, stats, figures, rows, html_path.parent, code_metadata())
    with atomic_file(html_path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return Report(html_path, results, stats)


def build_report(results_dir: str | Path, *, out: str | Path | None = None, progress: bool = True) -> Path:
    """Build every report file from ``results_dir`` (see :func:`make_report`); return report.html's path."""
    return make_report(results_dir, out=out, progress=progress).html
