"""``report.html``: one self-contained page (figures embedded as PNG data URIs, inline CSS, no scripts).

Every piece of text from the result files goes through :func:`html.escape`.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from cnn_aliasing.report.figures import FIGURES
from cnn_aliasing.report.results import ModelResult, StudyResults
from cnn_aliasing.report.statistics import (
    ALPHA,
    MIN_DEFINED,
    Correlation,
    DoseResponse,
    MetricEffect,
    OpStatistics,
    StudyStatistics,
)

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1150px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.88em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.55em; text-align: left; vertical-align: top; }
td:first-child { white-space: nowrap; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.failed td { background: #fff1f0; }
.robust { color: #1f77b4; font-weight: 600; }
.standard { color: #d62728; font-weight: 600; }
.weak { color: #8a5a00; }
.verdict { background: #f6f8fa; border-left: 4px solid #888; padding: 0.6em 1em; }
figure { margin: 1.2em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #444; }
pre { background: #f6f8fa; padding: 0.8em; overflow-x: auto; font-size: 0.82em; }
.scroll { overflow-x: auto; }
"""

QUESTION = (
    "Do adversarially trained (robust) CNNs down-sample with less aliasing than normally trained ones? "
    "Grabinski, Keuper and Keuper (\u201cAliasing coincides with CNNs vulnerability towards adversarial "
    "attacks\u201d, AAAI-22 workshop on adversarial machine learning) found that robust CIFAR-10 models "
    "of the same architecture alias markedly less in their down-sampling layers, most of all in the early "
    "ones. This study measures AM, the mean over all feature maps of sum |Y - Z| (Y: the spectrum of the "
    "actual down-sampled output, Z: its alias-free counterpart), in every down-sampling op of each model, "
    "measures each model's clean and robust accuracy, and asks, per op, whether robust models alias less "
    "and whether aliasing and robust accuracy are rank-correlated."
)


def esc(value: Any) -> str:
    """Text for HTML: ``str(value)`` escaped, quotes included."""
    return html.escape(str(value), quote=True)


def _pct(value: float | None) -> str:
    return "\u2013" if value is None or not math.isfinite(value) else f"{100 * value:.1f}%"


def _num(value: float | None, spec: str = ".4g") -> str:
    return "\u2013" if value is None or not math.isfinite(value) else format(value, spec)


def _table(
    header: Sequence[str],
    rows: Iterable[Sequence[str]],
    numeric: set[int] | None = None,
    row_class: Sequence[str] | None = None,
) -> str:
    """An HTML table of already escaped cells; ``numeric`` column indices are right-aligned."""
    numeric = numeric or set()
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{row_class[i]}"' if row_class and row_class[i] else ""
        cells = "".join(
            f'<td class="num">{c}</td>' if j in numeric else f"<td>{c}</td>" for j, c in enumerate(row)
        )
        body.append(f"<tr{cls}>{cells}</tr>")
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    return f'<div class="scroll">{table}</div>'


def _source(source: dict[str, Any]) -> str:
    kind = source.get("type")
    detail = source.get(str(kind)) if kind in ("zoo", "recipe") else source.get("checkpoint")
    return esc(f"{kind}: {detail}" if kind else "\u2013")


def _status(model: ModelResult) -> str:
    return esc(model.status) if model.done else f"<strong>{esc(model.status)}</strong>: {esc(model.error)}"


def question_section(results: StudyResults) -> str:
    """The hypothesis and the study's attack and image counts."""
    attacks = {json.dumps(m.attack, sort_keys=True) for m in results.done_models if m.attack}
    settings = []
    for text in sorted(attacks):
        a = json.loads(text)
        eps = a.get("eps")
        eps_text = f"{eps:.4g} ({eps * 255:.3g}/255)" if isinstance(eps, (int, float)) else str(eps)
        settings.append(
            f"robust accuracy under {a.get('attack')} ({a.get('norm')}, eps = {eps_text}) on "
            f"{a.get('n_images')} images"
        )
    images = sorted({m.n_images for m in results.done_models if m.n_images is not None})
    if images:
        settings.append(f"aliasing measured on {', '.join(map(str, images))} images")
    detail = f"<p>In this study: {esc('; '.join(settings))}.</p>" if settings else ""
    return f'<h2 id="question">The question</h2><p>{esc(QUESTION)}</p>{detail}'


def _reported(model: ModelResult) -> bool:
    """Whether the model's robust accuracy is RobustBench's reported figure, not measured here."""
    return model.attack is not None and model.attack["source"] == "reported"


def models_section(results: StudyResults) -> str:
    """One row per model, finished or not, failed ones with their reason."""
    rows = [
        [
            esc(m.name),
            _cell(m.robust, "robust"),
            esc(m.arch or "\u2013"),
            _source(m.source),
            esc(", ".join(m.tags)),
            _pct(m.clean_accuracy),
            _pct(m.robust_accuracy) + (" (reported)" if _reported(m) else ""),
            _status(m),
        ]
        for m in results.models
    ]
    classes = ["" if m.done else "failed" for m in results.models]
    done = len(results.done_models)
    left_out = len(results.models) - done
    note = f", {left_out} not (left out of the statistics and figures)" if left_out else ""
    head = f"<p>{len(results.models)} models, {done} finished{note}.</p>"
    table = _table(
        ["model", "group", "architecture", "source", "tags", "clean acc.", "robust acc.", "status"],
        rows,
        numeric={5, 6},
        row_class=classes,
    )
    return f'<h2 id="models">The models</h2>{head}{table}'


def answer_section(stats: StudyStatistics) -> str:
    """The first lines of the page: the answer in plain words, and links."""
    sentences = "".join(f"<li>{esc(s)}</li>" for s in stats.answer)
    links = (
        '<a href="#statistics">statistics</a> \u00b7 <a href="#confounds">confounds</a> \u00b7 '
        '<a href="#per-image">per image</a> \u00b7 <a href="#figures">figures</a>'
    )
    return f'<h2 id="answer">The answer</h2><ul class="verdict">{sentences}</ul><p>{links}</p>'


def _p(value: float) -> str:
    return _num(value, ".2g")


def _rho_ci(c: Correlation) -> str:
    return f"{_num(c.rho, '+.2f')} {esc(c.interval.text())}"


def _partial(e: MetricEffect) -> str:
    if e.partial.reason is not None:
        return f"\u2014 ({esc(e.partial.reason)})"
    ci = e.partial.interval.text() if e.partial.interval else ""
    return f"{_num(e.partial.rho, '+.2f')} {esc(ci)}"


def _images(o: OpStatistics) -> str:
    if o.images.interval is None:
        return f"\u2014 ({esc(o.images.reason)})"
    return esc(o.images.interval.text())


def _dose(d: DoseResponse) -> str:
    if d.reason is not None:
        return f"\u2014 ({esc(d.reason)})"
    return f"{d.slope / 255:+.4f} [{d.low / 255:+.4f}, {d.high / 255:+.4f}]"


def confounds_section(stats: StudyStatistics) -> str:
    """The collinearity of clean and robust accuracy, then per op and metric rho with robust and with clean
    accuracy, the partial correlation where it exists, and per op whether AM follows clean accuracy."""
    rows = []
    for o in stats.ops:
        for i, e in enumerate(o.effects):
            rows.append(
                [
                    esc(o.op) if i == 0 else "",
                    esc(e.metric),
                    f"{_num(e.robust.rho, '+.2f')} (Holm p {_p(e.robust.p_holm)})",
                    f"{_num(e.clean.rho, '+.2f')} (Holm p {_p(e.clean.p_holm)})",
                    _partial(e),
                    esc(o.confound_verdict) if i == 0 else "",
                ]
            )
    table = _table(
        ["op", "metric", "rho with robust acc.", "rho with clean acc.", "partial rho", "clean accuracy?"],
        rows,
        numeric={2, 3},
    )
    c = stats.collinearity
    collinear = (
        f"Across the {c.n} models with both accuracies, clean and robust accuracy have Spearman rho = "
        f"{_num(c.rho, '+.2f')} ({c.test.p_text()}). When AM follows clean accuracy at least as closely as "
        "robust accuracy (|rho with clean| >= |rho with robust|), these models cannot tell which of the two "
        "AM goes with. The partial rank correlation controlling for clean accuracy is given only where none "
        "of the three correlations it is made of is undefined or \u00b11. The scale-free variants "
        "(relative aliasing, alias energy fraction) do not grow with the activations' scale."
    )
    return f'<h3 id="confounds">Confounds: clean accuracy</h3><p>{esc(collinear)}</p>{table}'


def per_image_section(stats: StudyStatistics) -> str:
    """Per model and op: rho between an image's AM and its logit margin, with its interval and count."""
    ops = [o for o in stats.ops if o.within]
    head = '<h3 id="per-image">Within models, per image</h3>'
    if not ops:
        return f"{head}<p>Not available: no model's result file holds per-image results.</p>"
    models = list(dict.fromkeys(c.model for o in ops for c in o.within))
    cells = {(c.model, o.op): c for o in ops for c in o.within}
    rows = []
    for name in models:
        row = [esc(name)]
        for o in ops:
            c = cells.get((name, o.op))
            row.append(
                "\u2013" if c is None else f"{_num(c.rho, '+.2f')} {esc(c.interval.text())} ({c.n_images})"
            )
        rows.append(row)
    text = (
        "Spearman's rho between an attacked image's AM in the op and its logit margin (correct logit minus "
        "the largest other, at the strongest image the attack found), over the attacked images the model "
        "classified correctly when clean (their number in brackets), with a percentile bootstrap interval "
        "over those images. Under the hypothesis rho is negative: more aliasing, smaller margin."
    )
    table = _table(["model", *(esc(o.op) for o in ops)], rows, numeric=set(range(1, len(ops) + 1)))
    return f"{head}<p>{esc(text)}</p>{table}"


def statistics_section(stats: StudyStatistics) -> str:
    """Per op: n, rho(AM, robust accuracy) with its interval, exact and Holm p, rho(AM, clean accuracy),
    the partial rho, the image-bootstrap interval and the dose slope; then confounds and per image."""
    level = f"{100 * stats.level:g}%"
    rows = []
    for o in stats.ops:
        c, e = o.correlation, o.am
        rows.append(
            [
                esc(o.op),
                str(c.n),
                _rho_ci(c),
                esc(c.test.p_text()),
                f'<span class="{"" if c.clear else "weak"}">{_p(c.p_holm)}</span>',
                f"{_num(e.clean.rho, '+.2f')} (p {_p(e.clean.p)})",
                _partial(e),
                _images(o),
                _dose(e.dose),
            ]
        )
    table = _table(
        [
            "op",
            "n",
            f"rho(AM, robust acc.) [{level} CI]",
            "permutation p",
            "Holm p",
            "rho(AM, clean acc.)",
            "partial rho",
            f"image bootstrap {level} CI",
            f"dose slope of log AM per 1/255 eps [{level} CI]",
        ],
        rows,
        numeric={1, 2, 3, 4, 5},
    )
    method = (
        "Spearman's rho between an op's AM and robust accuracy over the models that have both, its "
        "two-sided permutation p-value (exact over all orderings of up to 8 models, else 20,000 random "
        f"orderings) and its Holm-adjusted p over the study's ops; clear means a Holm p below {ALPHA:g}, "
        f"nothing else. The {level} model-bootstrap interval ({stats.n_resamples} resamples, seed "
        f"{stats.seed}) is descriptive and given only where rho is defined in at least "
        f"{100 * MIN_DEFINED:g}% of the resamples. The image bootstrap resamples the measured images, the "
        "same for every model, and so includes attack and measurement noise. The dose slope is the OLS "
        "slope of log AM against the training eps (models as replicates, t interval). Models of one study "
        "are few and chosen, not a random sample."
    )
    return (
        f'<h2 id="statistics">Statistics</h2>{table}<p>{esc(method)}</p>{confounds_section(stats)}'
        f"{per_image_section(stats)}"
    )


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def figures_section(figures: dict[str, list[Path]], html_dir: Path) -> str:
    """Each figure's PNG embedded, with its caption and a link to the SVG beside it."""
    parts = ['<h2 id="figures">Figures</h2>']
    for name, paths in figures.items():
        kind = FIGURES[name]
        pngs = [p for p in paths if p.suffix == ".png"]
        if not pngs:
            continue
        parts.append(f"<h3>{esc(kind.title)}</h3>")
        for png in pngs:
            svg = png.with_suffix(".svg")
            link = Path(os.path.relpath(svg, html_dir)).as_posix()
            parts.append(
                f'<figure><img src="{_data_uri(png)}" alt="{esc(kind.title)}: {esc(png.stem)}">'
                f'<figcaption>{esc(kind.caption)} (<a href="{esc(link)}">SVG</a>)</figcaption></figure>'
            )
    if len(parts) == 1:
        parts.append("<p>No figure: no finished model has measurements to plot.</p>")
    return "".join(parts)


#: The per-op table's columns on the page (results.csv has all): (row key, heading); variants follow.
TABLE_COLUMNS = [
    ("op", "op"),
    ("model", "model"),
    ("robust", "group"),
    ("robust_accuracy", "robust acc."),
    ("kind", "kind"),
    ("factor", "factor"),
    ("aliasing", "AM"),
    ("aliasing_std", "std"),
    ("aliasing_count", "count"),
]
_FIXED_KEYS = {*dict(TABLE_COLUMNS), "tags", "arch", "clean_accuracy", "layer_group"}


def table_section(rows: list[dict[str, Any]]) -> str:
    """The per-(model, op) table, grouped by op in forward order: AM, its std and count, the variants."""
    if not rows:
        return '<h2 id="table">Per-op table</h2><p>No finished model.</p>'
    columns = TABLE_COLUMNS + [(k, k) for k in rows[0] if k not in _FIXED_KEYS]
    order = list(dict.fromkeys(r["op"] for r in rows))
    ordered = sorted(rows, key=lambda r: order.index(r["op"]))
    cells = [[_cell(r[key], key) for key, _ in columns] for r in ordered]
    numeric = {
        i for i, (key, _) in enumerate(columns) if key not in ("op", "model", "robust", "kind", "factor")
    }
    return (
        '<h2 id="table">Per-op table</h2><p>One row per (model, op). results.csv and results.json beside '
        "this page hold the same rows with every column (tags, arch, clean accuracy, layer group).</p>"
        + _table([heading for _, heading in columns], cells, numeric=numeric)
    )


def _cell(value: Any, column: str) -> str:
    if value is None:
        return "\u2013"
    if column == "robust":
        return '<span class="robust">robust</span>' if value else '<span class="standard">standard</span>'
    if column.endswith("accuracy") and isinstance(value, float):
        return _pct(value)
    if isinstance(value, float):
        return _num(value)
    return esc(value)


def provenance_section(results: StudyResults, report_meta: dict[str, Any]) -> str:
    """Config, commands, versions, git state and timings of the study and of this report."""
    run = results.run
    git = run.get("git") or {}
    versions = [
        [esc(k), esc(run.get(k))]
        for k in ("package", "version", "torch", "cuda", "numpy", "python", "platform", "timestamp")
        if k in run
    ]
    versions.append(["git commit", esc(f"{git.get('commit')} (dirty: {git.get('dirty')})")])
    config_path = results.config_path or "CONFIG"
    commands = (
        f"cnn-aliasing study {config_path}\n"
        f"cnn-aliasing report {results.root}    # rebuilds this page from the result files"
    )
    timing_keys = list(dict.fromkeys(k for m in results.models for k in m.timings))
    timings = _table(
        ["model", *timing_keys],
        [[esc(m.name), *(_num(m.timings.get(k), ".1f") for k in timing_keys)] for m in results.models],
        numeric=set(range(1, len(timing_keys) + 1)),
    )
    wall = _num(results.wall_seconds, ".1f")
    report_git = (report_meta.get("git") or {}).get("commit")
    return (
        '<h2 id="provenance">How it was produced</h2>'
        f"<p>Study <strong>{esc(results.name)}</strong>, results folder <code>{esc(results.root)}</code>, "
        f"wall time {wall} s. Commands:</p><pre>{esc(commands)}</pre>"
        f"<h3>Run</h3>{_table(['', 'value'], versions)}"
        f"<h3>Timings (seconds)</h3>{timings}"
        f"<h3>Resolved config</h3><pre>{esc(json.dumps(results.config, indent=2, sort_keys=True))}</pre>"
        f"<p>This page was built from the result files alone by cnn-aliasing "
        f"{esc(report_meta.get('version'))} (git {esc(report_git)}) at {esc(report_meta.get('timestamp'))}."
        "</p>"
    )


def render_html(
    results: StudyResults,
    stats: StudyStatistics,
    figures: dict[str, list[Path]],
    rows: list[dict[str, Any]],
    html_dir: Path,
    report_meta: dict[str, Any],
) -> str:
    """The whole page as text."""
    title = f"Aliasing and adversarial robustness: {results.name}"
    nav = " \u00b7 ".join(
        f'<a href="#{anchor}">{label}</a>'
        for anchor, label in (
            ("answer", "answer"),
            ("question", "question"),
            ("models", "models"),
            ("statistics", "statistics"),
            ("figures", "figures"),
            ("table", "table"),
            ("provenance", "how it was produced"),
        )
    )
    body = "".join(
        [
            f"<h1>{esc(title)}</h1><p>{nav}</p>",
            answer_section(stats),
            question_section(results),
            models_section(results),
            statistics_section(stats),
            figures_section(figures, html_dir),
            table_section(rows),
            provenance_section(results, report_meta),
        ]
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{esc(title)}</title>'
        f"<style>{STYLE}</style></head><body>{body}</body></html>\n"
    )
