"""The report is made from result files alone and needs no torch: in a fresh interpreter, importing
``cnn_aliasing.report`` and rebuilding a report from a results folder load no module of torch. And the
package's public names, imported on first use, are the functions and classes themselves."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import cnn_aliasing
from test_report_fixtures import FAILED, make_results

REBUILD = """
import json, sys
from cnn_aliasing import AliasingReport
from cnn_aliasing.report import make_report
report = make_report(sys.argv[1], progress=False)
print(json.dumps({
    "html": str(report.html),
    "models": sorted(m.name for m in report.results.done_models),
    "first_op": report.results.done_models[0].ops[0].name,
    "types": AliasingReport.__module__,
    "torch": sorted(name for name in sys.modules if name.split(".")[0] == "torch"),
}))
"""


def test_rebuilding_a_report_loads_no_torch(tmp_path: Path) -> None:
    root = make_results(tmp_path / "results")
    done = subprocess.run(
        [sys.executable, "-c", REBUILD, str(root)], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.splitlines()[-1])
    assert found["torch"] == []
    assert Path(found["html"]) == root / "report.html" and (root / "report.html").stat().st_size > 1000
    assert len(found["models"]) == 7 and FAILED not in found["models"]  # the synthetic folder's finished ones
    assert found["first_op"] == "layer2.0.shortcut.0"
    assert found["types"] == "cnn_aliasing.aliasing_report"


def test_the_package_gives_its_public_names_on_first_use() -> None:
    importlib.import_module("cnn_aliasing.cli.measure")  # the subcommand imports measure()'s module first
    from cnn_aliasing import AliasingReport, measure
    from cnn_aliasing.aliasing_report import AliasingReport as defined_report
    from cnn_aliasing.measurement import measure as defined_measure

    assert measure is defined_measure and cnn_aliasing.measure is defined_measure
    assert AliasingReport is defined_report
    assert all(getattr(cnn_aliasing, name) is not None for name in cnn_aliasing.__all__)
    assert set(cnn_aliasing.__all__) <= set(dir(cnn_aliasing))
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        cnn_aliasing.no_such_name  # noqa: B018
