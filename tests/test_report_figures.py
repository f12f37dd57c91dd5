"""Each figure of the report is made from a results folder alone: non-empty PNG and SVG, no model code."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cnn_aliasing.report import load_results
from cnn_aliasing.report.figures import FIGURES, spectrum_figure
from test_report_fixtures import make_results

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_results(tmp_path_factory.mktemp("study"))


def check_pair(paths: list[Path], stem: str) -> None:
    """A PNG and an SVG named ``stem``, both real images of some size."""
    assert sorted(p.name for p in paths) == [f"{stem}.png", f"{stem}.svg"]
    png, svg = sorted(paths)
    data = png.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 300 and height > 200
    text = svg.read_text()
    assert "<svg" in text and len(text) > 10_000


@pytest.mark.parametrize("name", list(FIGURES))
def test_each_figure_writes_png_and_svg(name: str, results_dir: Path, tmp_path: Path) -> None:
    paths = FIGURES[name].make(load_results(results_dir), tmp_path)
    stem = "spectrum_standard-a" if name == "spectra" else name
    check_pair(paths, stem)


def test_figures_with_nothing_to_show_write_nothing(results_dir: Path, tmp_path: Path) -> None:
    results = load_results(results_dir)
    for model in results.models:
        model.robust_accuracy = None
        model.training = []
    results.spectra = []
    for name in ("robust_accuracy_vs_aliasing", "training_history", "spectra"):
        assert FIGURES[name].make(results, tmp_path) == []
    assert list(tmp_path.iterdir()) == []


def test_spectrum_figure_with_an_all_zero_difference(results_dir: Path, tmp_path: Path) -> None:
    """A band-limited map (Y = Z): log of zero magnitudes must not break the colour scale."""
    spectrum = load_results(results_dir).spectra[0]
    flat = type(spectrum)(**{**spectrum.__dict__, "actual": spectrum.alias_free, "aliasing": 0.0})
    check_pair(spectrum_figure(flat, tmp_path, "flat"), "flat")


def test_report_imports_no_model_code() -> None:
    """In a fresh interpreter, the report package imports no model, zoo, attack, data
    or training code: figures and page come from the result files alone."""
    script = textwrap.dedent(
        """
        import json, sys
        import cnn_aliasing.report
        heavy = ("cnn_aliasing.models", "cnn_aliasing.zoo", "cnn_aliasing.attacks", "cnn_aliasing.training",
                 "cnn_aliasing.study", "cnn_aliasing.data", "cnn_aliasing.clean_accuracy")
        print(json.dumps(sorted(m for m in sys.modules if m.startswith(heavy))))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
