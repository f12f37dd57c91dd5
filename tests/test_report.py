"""The report from result files: loading and validation, the table, report.html and `cnn-aliasing report`."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from cnn_aliasing import cli, measure
from cnn_aliasing.files import write_json_atomic
from cnn_aliasing.report import ResultsError, build_report, load_results
from cnn_aliasing.report.html import render_html
from cnn_aliasing.report.results import table_rows
from cnn_aliasing.report.statistics import compute_statistics
from cnn_aliasing.study.config import ReportConfig
from test_report_fixtures import FAILED, MODELS, OPS, SPECTRUM_MODEL, TRAINED, WRN, WRN_OPS, make_results

SECTIONS = ["answer", "question", "models", "statistics", "figures", "table", "provenance"]
EVIL = "<script>alert('x')</script>&co"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic results folder with its report built once (figures take a few seconds)."""
    root = make_results(tmp_path_factory.mktemp("study"))
    build_report(root, progress=False)
    return root


# ------------------------------------------------------------------------------------------ loading
def test_load_results_reads_every_model(built: Path) -> None:
    results = load_results(built)
    assert [m.name for m in results.models] == [*MODELS, WRN, FAILED]
    assert [m.name for m in results.done_models] == [*MODELS, WRN]
    failed = results.models[-1]
    assert failed.status == "failed" and "checkpoint not found" in (failed.error or "") and failed.ops == []
    wrn = results.models[-2]
    assert wrn.robust_accuracy is None and wrn.clean_accuracy == 0.9 and [o.name for o in wrn.ops] == WRN_OPS
    trained = next(m for m in results.models if m.name == TRAINED)
    assert [r.epoch for r in trained.training] == [1, 2, 3]
    assert trained.training[1].pgd_accuracy is None and trained.training[2].aliasing[OPS[0]] == 1.0 / 3
    assert [s.model for s in results.spectra] == [SPECTRUM_MODEL]
    assert results.spectra[0].full.shape == (16, 16) and results.spectra[0].actual.shape == (8, 8)
    assert results.op_names == OPS + WRN_OPS and results.variant_names == ["relative_aliasing"]
    assert results.highlight == [*MODELS, WRN]  # few models: all named
    assert results.wall_seconds == 42.0 and results.config_path == "/abs/configs/synthetic.toml"


def test_table_rows_match_the_files(built: Path) -> None:
    rows = table_rows(load_results(built))
    assert len(rows) == len(MODELS) * len(OPS) + len(WRN_OPS)  # the failed model has no rows
    raw = json.loads((built / "models" / "robust-b.json").read_text())
    row = next(r for r in rows if r["model"] == "robust-b" and r["op"] == OPS[1])
    op = raw["aliasing"]["ops"][1]
    assert row == {
        "model": "robust-b",
        "tags": "robust;preact_resnet18",
        "robust": True,
        "arch": "preact_resnet18",
        "clean_accuracy": raw["clean_accuracy"]["accuracy"],
        "robust_accuracy": raw["robust_accuracy"]["robust_accuracy"],
        "op": OPS[1],
        "layer_group": "layer2",
        "kind": "conv",
        "factor": "2x2",
        "aliasing": op["aliasing"],
        "aliasing_std": op["std"],
        "aliasing_count": op["count"],
        "relative_aliasing": op["metrics"]["relative_aliasing"]["mean"],
    }
    wrn = [r for r in rows if r["model"] == WRN]
    assert [r["layer_group"] for r in wrn] == ["block2", "block3"] and wrn[0]["robust_accuracy"] is None


def test_results_csv_and_json_hold_the_rows(built: Path) -> None:
    rows = table_rows(load_results(built))
    with (built / "results.csv").open(newline="") as fh:
        from_csv = list(csv.DictReader(fh))
    assert len(from_csv) == len(rows) and list(from_csv[0]) == list(rows[0])
    assert float(from_csv[0]["aliasing"]) == rows[0]["aliasing"]
    assert json.loads((built / "results.json").read_text()) == rows


def test_statistics_json_holds_every_statistic(built: Path) -> None:
    data = json.loads((built / "statistics.json").read_text())
    expected = compute_statistics(load_results(built), n_resamples=500).to_dict()
    assert data == json.loads(json.dumps(expected))
    first = data["ops"][0]
    assert first["op"] == OPS[0] and first["metrics"][0]["metric"] == "aliasing"
    robust = first["metrics"][0]["robust"]
    assert {"rho", "p", "p_holm", "exact", "n_orderings", "mc_se", "interval"} <= set(robust)
    assert set(robust["interval"]) == {"low", "high", "level", "defined", "undefined", "n_resamples"}
    assert first["image_bootstrap"]["n_measured"] == 10 and len(first["per_image"]) == 6
    assert data["ops"][3]["metrics"][0]["partial"] == {
        "rho": None,
        "interval": None,
        "reason": "only 0 models, a partial correlation needs 4",
    }


def test_missing_key_names_the_file_and_the_key(tmp_path: Path) -> None:
    root = make_results(tmp_path)
    path = root / "models" / "robust-b.json"
    raw = json.loads(path.read_text())
    del raw["aliasing"]["ops"][1]["metrics"]["aliasing"]["std"]
    path.write_text(json.dumps(raw))
    with pytest.raises(
        ResultsError, match=r"robust-b\.json: missing key 'aliasing\.ops\[1\]\.metrics\.aliasing\.std'"
    ):
        load_results(root)
    study = json.loads((root / "study.json").read_text())
    del study["models"][0]["file"]
    (root / "study.json").write_text(json.dumps(study))
    with pytest.raises(ResultsError, match=r"study\.json: missing key 'models\[0\]\.file'"):
        load_results(root)


def test_a_measured_report_round_trips_through_the_model_file(tmp_path: Path) -> None:
    root = make_results(tmp_path)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2)
    ).eval()
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    report = measure(net, [images], metrics=["relative_aliasing"], sample_channels=2, seed=1, progress=False)
    path = root / "models" / "robust-b.json"
    raw = json.loads(path.read_text())
    raw["aliasing"] = report.to_dict()
    del raw["per_image"]  # the attack's per-image results belong to the measurement replaced here
    write_json_atomic(path, raw)
    model = next(m for m in load_results(root).models if m.name == "robust-b")
    assert model.n_images == 3
    assert [(o.name, o.kind, o.factor, o.aliasing, o.std, o.count) for o in model.ops] == [
        (o.name, o.kind, o.factor, o.aliasing, o.std, o.count) for o in report.ops
    ]
    assert [o.variants for o in model.ops] == [
        {"relative_aliasing": o.metrics["relative_aliasing"].mean} for o in report.ops
    ]


def test_a_failed_model_needs_only_its_name_and_status(tmp_path: Path) -> None:
    root = make_results(tmp_path)
    (root / "models" / f"{FAILED}.json").write_text(
        json.dumps({"name": FAILED, "status": "failed", "error": "out of memory"})
    )
    failed = load_results(root).models[-1]
    assert (failed.name, failed.done, failed.error, failed.robust) == (FAILED, False, "out of memory", False)
    done = root / "models" / "robust-a.json"
    raw = json.loads(done.read_text())
    del raw["robust"]
    done.write_text(json.dumps(raw))
    with pytest.raises(ResultsError, match=r"robust-a\.json: missing key 'robust'"):
        load_results(root)


def test_unreadable_inputs_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match="not a folder"):
        load_results(tmp_path / "nowhere")
    with pytest.raises(ResultsError, match=r"study\.json: no such file"):
        load_results(tmp_path)
    (tmp_path / "study.json").write_text("{not json")
    with pytest.raises(ResultsError, match="not valid JSON"):
        load_results(tmp_path)


def test_a_model_without_its_file_is_listed_as_not_finished(tmp_path: Path) -> None:
    root = make_results(tmp_path)
    (root / "models" / "standard-c.json").unlink()
    results = load_results(root)
    missing = next(m for m in results.models if m.name == "standard-c")
    assert not missing.done and "no result file models/standard-c.json" in (missing.error or "")
    assert "standard-c" not in {r["model"] for r in table_rows(results)}


def test_highlight_comes_from_the_config(tmp_path: Path) -> None:
    root = make_results(tmp_path, config={"report": {"highlight": ["robust-a"]}})
    assert load_results(root).highlight == ["robust-a"]


def test_a_study_json_without_report_settings_gets_the_study_configs_defaults(tmp_path: Path) -> None:
    """The report's defaults are the ones the study's config fills in (one place: report_settings.py)."""
    settings = load_results(make_results(tmp_path, config={"name": "synthetic"})).settings
    study = ReportConfig()
    assert (settings.n_resamples, settings.seed) == (study.n_resamples, study.seed) == (2000, 0)
    assert settings.highlight is None and study.highlight == ()


# ------------------------------------------------------------------------------------------- html
def test_report_html_has_every_section_and_model(built: Path) -> None:
    page = (built / "report.html").read_text()
    for section in SECTIONS:
        assert f'<h2 id="{section}">' in page
    for name in [*MODELS, WRN, FAILED]:
        assert f"<td>{name}</td>" in page
    assert "checkpoint not found: /nowhere/w.pt" in page
    assert "cnn-aliasing study /abs/configs/synthetic.toml" in page
    assert f"cnn-aliasing report {built}" in page
    assert "abc123" in page
    body = page.split("<body>")[1]
    assert body.index('<h2 id="answer">') < body.index('<h2 id="question">')  # the answer comes first
    answer = body.split('<h2 id="answer">The answer</h2>')[1].split("</ul>")[0]
    assert answer.startswith('<ul class="verdict"><li>These models cannot separate AM&#x27;s link')
    assert "<li>AM is clearly rank-correlated with robust accuracy" in answer
    assert (
        f"<li>{OPS[0]}: AM falls as robust accuracy rises (rho = -0.94, exact p = 0.017, Holm p = 0.05"
        in answer
    )
    assert "not clear after correcting for 3 ops" in answer and "clear (" not in answer
    for section in ("confounds", "per-image"):
        assert f'<h3 id="{section}">' in page
    assert (
        "Across the 6 models with both accuracies, clean and robust accuracy have Spearman rho = -0.88"
        in page
    )
    statistics = body.split('<h2 id="statistics">')[1].split("</table>")[0]
    assert statistics.count("<tr>") == 1 + len(load_results(built).op_names)  # heading and one row per op
    assert "\u2014 (only 0 models, a partial correlation needs 4)" in statistics


def test_report_html_is_self_contained(built: Path) -> None:
    page = (built / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<script" not in page and "<link" not in page and "@import" not in page
    sources = re.findall(r'<img src="([^"]*)"', page)
    assert len(sources) == 6  # robust vs AM, AM per op, one spectrum, collinearity, per image, training
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    svg_links = re.findall(r'<a href="([^"#]*)"', page)
    assert svg_links and all((built / link).is_file() for link in svg_links)


def test_report_html_escapes_names(tmp_path: Path) -> None:
    results = load_results(make_results(tmp_path, rename={"robust-b": EVIL}))
    page = render_html(
        results, compute_statistics(results, n_resamples=10), {}, table_rows(results), tmp_path, {}
    )
    assert EVIL not in page and "<script" not in page
    escaped = "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;&amp;co"
    assert page.count(escaped) == 6  # the models, 3 rows of the per-op table, per image, the timings


# -------------------------------------------------------------------------------------------- cli
def test_cli_report_rebuilds_and_prints_a_summary(
    built: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = shutil.copytree(built, tmp_path / "copy")
    for made in ("report.html", "results.csv", "results.json", "statistics.json"):
        (copy / made).unlink()
    shutil.rmtree(copy / "figures")
    page = tmp_path / "elsewhere" / "page.html"
    assert cli.main(["report", str(copy), "--out", str(page), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {page}" in out and "8 models, 7 finished" in out
    lines = out.splitlines()
    assert lines[2].startswith("These models cannot separate AM's link to robustness")  # collinear fixture
    assert lines[3].startswith("AM is clearly rank-correlated with robust accuracy")
    assert lines[4].startswith(f"{OPS[0]}: AM falls as robust accuracy rises (rho = -0.94, exact p = 0.017")
    assert "clean vs robust accuracy across 6 models: rho = -0.88, exact p = 0.1" in lines
    line = next(x for x in lines if x.startswith(f"{OPS[0]}: n = "))
    assert re.fullmatch(
        rf"{re.escape(OPS[0])}: n = 6, rho = -0\.94, exact p = 0\.017, Holm p = 0\.05; rho with clean "
        r"accuracy = \+0\.88 \(exact p = 0\.1\); partial: -0\.75 "
        r"\(interval undefined in 276 of 500 resamples\)",
        line,
    )
    assert any(x.startswith(f"per image, {OPS[0]}: rho(AM, margin)") for x in lines)
    assert not (copy / "report.html").exists() and (copy / "results.csv").is_file()
    assert (copy / "statistics.json").is_file()
    assert len(list((copy / "figures").glob("*.svg"))) == 6
    links = re.findall(r'<a href="([^"#]*)"', page.read_text())  # the SVGs, relative to the page
    assert len(links) == 6 and all((page.parent / link).resolve().is_file() for link in links)


def test_cli_report_error_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "study.json: no such file" in capsys.readouterr().err


@pytest.mark.parametrize(("key", "value"), [("n_resamples", 0), ("n_resamples", "abc"), ("seed", -1)])
def test_cli_report_refuses_bad_report_settings_in_one_line(
    built: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str, value: object
) -> None:
    copy = shutil.copytree(built, tmp_path / "copy")
    study = json.loads((copy / "study.json").read_text())
    study["config"].setdefault("report", {})[key] = value
    (copy / "study.json").write_text(json.dumps(study))
    assert cli.main(["report", str(copy), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"study.json: report.{key} must be an integer >= " in err
