"""report.html renders in a real headless browser (Chromium): a non-blank screenshot, every image loaded."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from cnn_aliasing.report import build_report
from test_report_fixtures import make_results

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium) on the PATH"),
]


def chromium(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None  # the module is skipped without it
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={home}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)


def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    page = build_report(make_results(tmp_path / "study"), progress=False)
    shot = tmp_path / "shot.png"
    done = chromium(f"--screenshot={shot}", "--window-size=1200,3000", page.as_uri(), home=tmp_path / "p1")
    assert shot.is_file(), done.stderr[-2000:]
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    assert pixels.shape == (3000, 1200, 3)
    assert pixels.std() > 20  # text, tables and figures, not a blank page
    assert (pixels.min(axis=2) < 60).mean() > 0.005  # dark text drawn
    # the plots' colours are there: the robust blue of the figures and the model table
    blue = (np.abs(pixels - [31, 119, 180]).sum(axis=2) < 40).mean()
    assert blue > 1e-4

    dom = chromium("--dump-dom", page.as_uri(), home=tmp_path / "p2").stdout
    assert '<h2 id="figures">' in dom and '<h2 id="provenance">' in dom
    images = re.findall(r'<img src="(data:image/png;base64,[^"]+)"', dom)
    pngs = sorted((page.parent / "figures").glob("*.png"))
    assert len(images) == len(pngs) == 6  # every figure embedded, the collinearity and per-image ones too
