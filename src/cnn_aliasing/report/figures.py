"""The report's figures, made from :class:`StudyResults` alone (matplotlib, Agg backend).

Each figure function takes the results and an output folder and returns the paths it wrote (a PNG and
an SVG per figure; none when the results hold nothing to show). :data:`FIGURES` registers them with a
title and a caption for the report.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator
from tqdm.auto import tqdm

from cnn_aliasing.files import atomic_file
from cnn_aliasing.report.results import ModelResult, SpectrumResult, StudyResults
from cnn_aliasing.report.statistics import (
    permutation_test,
    within_model_correlations,
)

ROBUST_COLOUR = "#1f77b4"
STANDARD_COLOUR = "#d62728"
MARKERS = "osD^vP*Xh<>"
FigureFormat = Literal["png", "svg"]
FORMATS: tuple[FigureFormat, ...] = get_args(FigureFormat)
DPI = 110
#: log10 magnitudes below the largest minus this many decades are drawn as the floor colour.
SPECTRUM_DECADES = 6.0


def _colour(model: ModelResult) -> str:
    return ROBUST_COLOUR if model.robust else STANDARD_COLOUR


def _group_legend(ax: plt.Axes) -> None:
    for label, colour in (("robust", ROBUST_COLOUR), ("standard", STANDARD_COLOUR)):
        ax.scatter([], [], color=colour, label=label)
    ax.legend(loc="best", fontsize="small", frameon=False)


def save(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    """Write ``fig`` as ``out_dir/stem.png`` and ``.svg`` (atomically) and close it."""
    paths = []
    for fmt in FORMATS:
        path = out_dir / f"{stem}.{fmt}"
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=DPI, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def _grid(n_panels: int, columns: int, panel_size: tuple[float, float]) -> tuple[Figure, list[plt.Axes]]:
    """A figure with ``n_panels`` axes on a grid (unused cells hidden)."""
    cols = min(columns, n_panels)
    rows = math.ceil(n_panels / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(panel_size[0] * cols, panel_size[1] * rows), squeeze=False, layout="constrained"
    )
    flat = list(axes.ravel())
    for ax in flat[n_panels:]:
        ax.set_visible(False)
    return fig, flat[:n_panels]


# -------------------------------------------------------------------- robust accuracy against AM
def robust_accuracy_vs_aliasing(results: StudyResults, out_dir: Path) -> list[Path]:
    """The study's Figs. 4 and 5: robust accuracy against AM, one panel per op, robust and standard models
    coloured apart, the chosen models named."""
    models = [m for m in results.done_models if m.robust_accuracy is not None]
    ops = [op for op in results.op_names if any(m.op(op) for m in models)]
    if not ops:
        return []
    highlight = set(results.highlight)
    fig, axes = _grid(len(ops), 3, (4.2, 3.4))
    for ax, op in zip(axes, ops, strict=True):
        for model in models:
            measured = model.op(op)
            if measured is None or model.robust_accuracy is None:
                continue
            ax.scatter(measured.aliasing, 100 * model.robust_accuracy, color=_colour(model), zorder=3)
            if model.name in highlight:
                ax.annotate(
                    model.name,
                    (measured.aliasing, 100 * model.robust_accuracy),
                    xytext=(4, 3),
                    textcoords="offset points",
                    fontsize="x-small",
                )
        ax.set_title(op, fontsize="medium")
        ax.set_xlabel("AM")
        ax.set_ylabel("robust accuracy (%)")
        ax.grid(alpha=0.3)
    _group_legend(axes[0])
    return save(fig, out_dir, "robust_accuracy_vs_aliasing")


# ---------------------------------------------------------------------------------------- AM per op
def aliasing_per_op(results: StudyResults, out_dir: Path) -> list[Path]:
    """AM of every op in forward order, one line per model, one panel per architecture."""
    by_arch: dict[str, list[ModelResult]] = {}
    for model in results.done_models:
        if model.ops:
            by_arch.setdefault(model.arch or "unknown architecture", []).append(model)
    if not by_arch:
        return []
    widest = max(len({o.name for m in models for o in m.ops}) for models in by_arch.values())
    fig, axes = _grid(len(by_arch), 2, (max(5.5, 0.9 * widest) + 2.0, 3.8))
    for ax, (arch, models) in zip(axes, by_arch.items(), strict=True):
        ops = [op for op in results.op_names if any(m.op(op) for m in models)]
        positions = {op: i for i, op in enumerate(ops)}
        for i, model in enumerate(models):
            xs = [positions[o.name] for o in model.ops]
            ys = [o.aliasing for o in model.ops]
            style = "-" if model.robust else "--"
            marker = MARKERS[i % len(MARKERS)]
            ax.plot(xs, ys, style, marker=marker, color=_colour(model), label=model.name, alpha=0.85)
        ax.set_xticks(range(len(ops)), ops, rotation=35, ha="right", fontsize="small")
        ax.set_ylim(bottom=0)
        ax.set_ylabel("AM")
        ax.set_title(arch)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small", ncols=2, frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return save(fig, out_dir, "aliasing_per_op")


# ---------------------------------------------------------------------------------------- spectra
def _log_magnitude(spec: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log10(np.abs(np.fft.fftshift(spec)))


def _extent(shape: tuple[int, ...], scale: tuple[int, int]) -> tuple[float, float, float, float]:
    """imshow extent in cycles per full-resolution pixel of an fftshifted (h, w) grid of a map that is
    ``scale`` times coarser than full resolution."""
    h, w = shape
    fy = np.fft.fftshift(np.fft.fftfreq(h)) / scale[0]
    fx = np.fft.fftshift(np.fft.fftfreq(w)) / scale[1]
    dy, dx = 1.0 / (h * scale[0]), 1.0 / (w * scale[1])
    return (fx[0] - dx / 2, fx[-1] + dx / 2, fy[-1] + dy / 2, fy[0] - dy / 2)


def spectrum_figure(spectrum: SpectrumResult, out_dir: Path, stem: str) -> list[Path]:
    """The study's Figs. 2 and 3 for one map: log10 |X| with the new Nyquist band marked, |Z|, |Y| and
    |Y - Z| on one colour scale (they share units: Y and Z are sums of bins of X)."""
    s, t = spectrum.factor
    panels = [
        ("|X|: full resolution (box: new Nyquist)", spectrum.full, (1, 1)),
        ("|Z|: alias-free", spectrum.alias_free, (s, t)),
        ("|Y|: actual (down-sampled)", spectrum.actual, (s, t)),
        ("|Y - Z|: aliasing", spectrum.actual - spectrum.alias_free, (s, t)),
    ]
    logs = [_log_magnitude(p[1]) for p in panels]
    top = max(float(np.max(v[np.isfinite(v)], initial=-np.inf)) for v in logs)
    top = top if math.isfinite(top) else 0.0
    fig, axes = plt.subplots(1, 4, figsize=(15, 4.0), layout="constrained")
    image = None
    for ax, (title, spec, scale), values in zip(axes, panels, logs, strict=True):
        shown = np.where(np.isfinite(values), values, top - SPECTRUM_DECADES)
        image = ax.imshow(
            shown,
            extent=_extent(spec.shape, scale),
            vmin=top - SPECTRUM_DECADES,
            vmax=top,
            cmap="magma",
            interpolation="nearest",
        )
        ax.set_title(title, fontsize="medium")
        ax.set_xlabel("cycles / pixel (horizontal)")
    axes[0].set_ylabel("cycles / pixel (vertical)")
    ny, nx = 0.5 / s, 0.5 / t
    axes[0].add_patch(
        Rectangle((-nx, -ny), 2 * nx, 2 * ny, fill=False, edgecolor="cyan", linestyle="--", linewidth=1.2)
    )
    assert image is not None  # four panels, each drawn
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="log10 magnitude")
    fig.suptitle(
        f"{spectrum.model}, op {spectrum.op}, image {spectrum.image}, channel {spectrum.channel}, "
        f"factor {s}x{t}: sum |Y - Z| = {spectrum.aliasing:.4g}"
    )
    return save(fig, out_dir, stem)


def spectra(results: StudyResults, out_dir: Path) -> list[Path]:
    """One spectrum figure per spectrum file of the study."""
    paths = []
    for spectrum in results.spectra:
        paths += spectrum_figure(spectrum, out_dir, f"spectrum_{Path(spectrum.file).stem}")
    return paths


# ---------------------------------------------------------------------------------------- training
def training_history(results: StudyResults, out_dir: Path) -> list[Path]:
    """For each trained model: AM of each op per evaluated epoch, and clean and PGD accuracy per epoch."""
    trained = [
        m for m in results.done_models if any(r.aliasing or r.pgd_accuracy is not None for r in m.training)
    ]
    if not trained:
        return []
    fig, axes = plt.subplots(
        len(trained), 2, figsize=(11, 3.4 * len(trained)), squeeze=False, layout="constrained"
    )
    for (ax_am, ax_acc), model in zip(axes, trained, strict=True):
        ops = list(dict.fromkeys(op for r in model.training for op in r.aliasing))
        for op in ops:
            points = [(r.epoch, r.aliasing[op]) for r in model.training if op in r.aliasing]
            ax_am.plot(*zip(*points, strict=True), marker="o", label=op)
        ax_am.set_title(f"{model.name}: AM per epoch")
        ax_am.set_xlabel("epoch")
        ax_am.set_ylabel("AM")
        ax_am.legend(fontsize="x-small", frameon=False, ncols=2)
        for field, label in (("clean_accuracy", "clean"), ("pgd_accuracy", "PGD (robust)")):
            points = [
                (r.epoch, 100 * getattr(r, field)) for r in model.training if getattr(r, field) is not None
            ]
            if points:
                ax_acc.plot(*zip(*points, strict=True), marker="o", label=label)
        ax_acc.set_title(f"{model.name}: accuracy per epoch")
        ax_acc.set_xlabel("epoch")
        ax_acc.set_ylabel("accuracy (%)")
        ax_acc.legend(fontsize="small", frameon=False)
        for ax in (ax_am, ax_acc):
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return save(fig, out_dir, "training_history")


# ---------------------------------------------------------------------------------------- collinearity
def collinearity(results: StudyResults, out_dir: Path) -> list[Path]:
    """Clean against robust accuracy across the models, rho and its permutation p in the title: when they
    are (anti-)ranked alike, AM's link to one cannot be told from its link to the other."""
    models = [
        m for m in results.done_models if m.robust_accuracy is not None and m.clean_accuracy is not None
    ]
    if len(models) < 2:
        return []
    clean = np.array([m.clean_accuracy for m in models], dtype=np.float64)
    robust = np.array([m.robust_accuracy for m in models], dtype=np.float64)
    test = permutation_test(clean, robust)
    highlight = set(results.highlight)
    fig, ax = plt.subplots(figsize=(5.2, 4.2), layout="constrained")
    for model, x, y in zip(models, clean, robust, strict=True):
        ax.scatter(100 * x, 100 * y, color=_colour(model), zorder=3)
        if model.name in highlight:
            ax.annotate(
                model.name, (100 * x, 100 * y), xytext=(4, 3), textcoords="offset points", fontsize="x-small"
            )
    rho = f"{test.rho:+.2f}" if math.isfinite(test.rho) else "undefined"
    ax.set_title(f"clean vs robust accuracy: rho = {rho}, {test.p_text()}", fontsize="medium")
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel("robust accuracy (%)")
    ax.grid(alpha=0.3)
    _group_legend(ax)
    return save(fig, out_dir, "collinearity")


# ---------------------------------------------------------------------------------------- per image
def per_image_correlation(results: StudyResults, out_dir: Path) -> list[Path]:
    """Within each model, rho between an image's AM and its logit margin, with its bootstrap interval: one
    column per op, one marker per model (robust blue, standard red)."""
    settings = results.settings
    within = within_model_correlations(results, n_resamples=settings.n_resamples, seed=settings.seed)
    ops = [op for op, found in within.items() if found]
    if not ops:
        return []
    names = list(dict.fromkeys(c.model for op in ops for c in within[op]))
    fig, ax = plt.subplots(figsize=(max(5.5, 1.1 * len(ops)) + 1.5, 4.0), layout="constrained")
    for x, op in enumerate(ops):
        for c in within[op]:
            offset = 0.6 * ((names.index(c.model) + 0.5) / len(names) - 0.5)
            colour = ROBUST_COLOUR if c.robust else STANDARD_COLOUR
            if c.interval.defined:
                ax.plot([x + offset] * 2, [c.interval.low, c.interval.high], color=colour, alpha=0.6)
            marker = MARKERS[names.index(c.model) % len(MARKERS)]
            ax.scatter(x + offset, c.rho, color=colour, marker=marker, zorder=3)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(ops)), ops, rotation=35, ha="right", fontsize="small")
    ax.set_ylim(-1.05, 1.05)
    ax.set_ylabel("rho(AM of the image, its margin)")
    ax.set_title("within models, per image (under the hypothesis below 0)", fontsize="medium")
    ax.grid(alpha=0.3)
    _group_legend(ax)
    return save(fig, out_dir, "per_image_correlation")


# ---------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class FigureKind:
    """A figure of the report: the function that makes it, its title and its caption."""

    make: Callable[[StudyResults, Path], list[Path]]
    title: str
    caption: str


FIGURES: dict[str, FigureKind] = {
    "robust_accuracy_vs_aliasing": FigureKind(
        robust_accuracy_vs_aliasing,
        "Robust accuracy against aliasing (the study's Figures 4 and 5)",
        "Each point is a model; one panel per down-sampling op. x: AM of that op (mean over all feature "
        "maps of sum |Y - Z|); y: robust accuracy under the study's attack. Blue: adversarially trained "
        "(robust) models; red: standard models. If the hypothesis holds, points fall from the upper left "
        "to the lower right.",
    ),
    "aliasing_per_op": FigureKind(
        aliasing_per_op,
        "AM of every down-sampling op",
        "AM of each down-sampling op, in forward order (early ops on the left), one line per model; "
        "solid blue lines are robust models, dashed red ones standard models. Where the blue lines lie "
        "below the red ones, robust models alias less at that depth.",
    ),
    "spectra": FigureKind(
        spectra,
        "Spectra of one feature map (the study's Figures 2 and 3)",
        "Log10 magnitude of the spectra of one feature map, centred on frequency 0 (axes in cycles per "
        "full-resolution pixel). From the left: X, the spectrum of the full-resolution output (the dashed "
        "box is the band below the new Nyquist frequency); Z, the alias-free down-sampled spectrum (X "
        "inside the box); Y, the spectrum of the actual down-sampled output (all replicas of X folded "
        "together); and |Y - Z|, the aliases, whose sum over bins is this map's aliasing. One colour scale "
        "for all four; black is at least 6 decades below the largest magnitude.",
    ),
    "collinearity": FigureKind(
        collinearity,
        "Clean against robust accuracy",
        "Each point is a model with an attack result: x its clean accuracy, y its robust accuracy; the "
        "title gives Spearman's rho across the models and its permutation p-value. When the models' clean "
        "and robust accuracies are ranked alike (or exactly opposite), a correlation of AM with robust "
        "accuracy cannot be told apart from one with clean accuracy.",
    ),
    "per_image_correlation": FigureKind(
        per_image_correlation,
        "Within models: aliasing and margin per image",
        "For each op (x) and each model with per-image results (one marker each; blue robust, red "
        "standard): Spearman's rho between an attacked image's AM in that op and its logit margin, over "
        "the images the model classified correctly when clean, with its percentile bootstrap interval "
        "over those images (a line; none where the statistic is undefined in more than 5% of the "
        "resamples). Under the hypothesis the points lie below 0: more aliasing, smaller margin.",
    ),
    "training_history": FigureKind(
        training_history,
        "Aliasing and accuracy during training",
        "For each model trained by the study: left, AM of each evaluated down-sampling op after each "
        "evaluated epoch; right, clean and PGD (robust) accuracy on the evaluation images after each epoch.",
    ),
}


def make_figures(results: StudyResults, out_dir: Path, *, progress: bool = True) -> dict[str, list[Path]]:
    """Every registered figure into ``out_dir``; maps each figure's name to the paths it wrote."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in tqdm(FIGURES, desc="figures", disable=not progress, leave=False):
        written[name] = FIGURES[name].make(results, out_dir)
    return written
