"""Tests of the `cnn-aliasing` command line, mostly in-process through main(), on a tiny fake CIFAR-10."""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import subprocess
import sys
import types
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import cnn_aliasing
from cifar_fixtures import make_layout
from cnn_aliasing import cli, data, find_downsamplers, zoo
from cnn_aliasing import measure as measure_aliasing
from cnn_aliasing.clean_accuracy import clean_accuracy
from cnn_aliasing.cli import measure as measure_command
from cnn_aliasing.identity import data_sha256, model_identity
from cnn_aliasing.models import create_model, load_checkpoint, model_descriptions, save_checkpoint

N_TEST = 24
N_IMAGES = 20
PREACT = ["--model", "preact_resnet18", "--model-arg", "width=8"]
WRN = ["--model", "wrn_28_10", "--model-arg", "depth=10", "--model-arg", "widen_factor=1"]
# forward order: each block runs its shortcut before conv1
PREACT_OPS = [
    "layer2.0.shortcut.0",
    "layer2.0.conv1",
    "layer3.0.shortcut.0",
    "layer3.0.conv1",
    "layer4.0.shortcut.0",
    "layer4.0.conv1",
]
PREACT_CHANNELS = [16, 16, 32, 32, 64, 64]


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fake CIFAR-10 layout with 24 test images."""
    root = tmp_path_factory.mktemp("cifar")
    make_layout(root, train_sizes=(2, 2, 2, 2, 2), test_size=N_TEST)
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Weights of a width-8 PreAct ResNet-18 (seed 7, not the CLI's default seed)."""
    torch.manual_seed(7)
    path = tmp_path_factory.mktemp("weights") / "preact.pt"
    save_checkpoint(create_model("preact_resnet18", width=8), path)
    return path


ZOO_MODEL = "Sehwag2021Proxy_R18"  # a full-size ResNet-18: the cheapest zoo architecture to run


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A RobustBench model folder holding only ZOO_MODEL's checkpoint (seed 5)."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(5)
    save_checkpoint(zoo.zoo_entry(ZOO_MODEL).build(), zoo.checkpoint_path(ZOO_MODEL, root))
    return root


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """main(argv) in-process: (exit code, stdout, stderr); argparse exits become their code."""
    try:
        code = cli.main(list(argv))
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def measure_args(cifar_dir: Path, out: Path, *extra: str, model: list[str] = PREACT) -> list[str]:
    """A quiet `measure` on 20 fake images in batches of 8 (the last one partial)."""
    return [
        "measure",
        *model,
        "--data-dir",
        str(cifar_dir),
        "--n-images",
        str(N_IMAGES),
        "--batch-size",
        "8",
        "--device",
        "cpu",
        "--quiet",
        "--out",
        str(out),
        *extra,
    ]


def assert_one_error_line(err: str, *needles: str) -> str:
    """stderr is exactly one `cnn-aliasing: error:` line, without traceback, containing every needle."""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("cnn-aliasing: error: ") and "Traceback" not in err
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


# ------------------------------------------------------------------------------------------------- measure
def test_measure_writes_report_csv_and_table(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    cifar_dir: Path,
    checkpoint: Path,
    device: torch.device,
) -> None:
    out, table = tmp_path / "new" / "folder" / "report.json", tmp_path / "other" / "table.csv"
    argv = measure_args(cifar_dir, out, "--checkpoint", str(checkpoint), "--csv", str(table))
    argv[argv.index("--device") + 1] = str(device)
    code, stdout, stderr = run_cli(capsys, *argv)
    assert (code, stderr) == (0, "")

    report = json.loads(out.read_text())
    names = [op["name"] for op in report["ops"]]
    model = load_checkpoint(create_model("preact_resnet18", width=8), checkpoint)
    assert names == PREACT_OPS == [d.name for d in find_downsamplers(model, torch.rand(1, 3, 32, 32))]
    assert [op["channels"] for op in report["ops"]] == PREACT_CHANNELS
    assert [op["count"] for op in report["ops"]] == [N_IMAGES * c for c in PREACT_CHANNELS]
    assert report["n_images"] == N_IMAGES and report["nyquist"] == "zero"

    images, labels = data.load_cifar10(cifar_dir, n_images=N_IMAGES)
    direct = measure_aliasing(model, data.iterate_batches(images, labels, 8), device=device, progress=False)
    assert [op["aliasing"] for op in report["ops"]] == pytest.approx(
        [o.aliasing for o in direct.ops], rel=1e-4
    )

    meta = report["meta"]
    assert meta["run"]["version"] == cnn_aliasing.__version__
    assert meta["run"]["torch"] == torch.__version__ and "numpy" in meta["run"] and "git" in meta["run"]
    assert meta["checkpoint"] == {
        "path": str(checkpoint.resolve()),
        "sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
    }
    assert meta["model"] == {"name": "preact_resnet18", "args": {"width": 8}}
    assert meta["data"] == {
        "dir": str(cifar_dir.resolve()),
        "split": "test",
        "n_images": N_IMAGES,
        "sha256": data_sha256(images, labels),
    }
    assert meta["model_identity"] == model_identity(model)
    assert meta["config"]["n_images"] == N_IMAGES and meta["config"]["batch_size"] == 8
    assert meta["config"]["out"] == str(out) and meta["device"] == str(device)
    assert 0 < meta["measure_s"] <= meta["elapsed_s"]

    with table.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["op"] for r in rows] == PREACT_OPS
    assert [int(r["count"]) for r in rows] == [op["count"] for op in report["ops"]]

    lines = stdout.splitlines()
    assert lines[0].startswith("aliasing of 6 down-sampling ops of preact_resnet18 over 20 CIFAR-10 test")
    assert lines[1].split()[:4] == ["op", "kind", "factor", "aliasing"]
    assert [line.split()[0] for line in lines[2:8]] == PREACT_OPS
    assert str(out) in lines[-1] and str(table) in lines[-1]


def test_wide_resnet_ops_match_find_downsamplers(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, cifar_dir: Path
) -> None:
    out = tmp_path / "wrn.json"
    code, _, _ = run_cli(capsys, *measure_args(cifar_dir, out, model=WRN))
    assert code == 0
    ops = json.loads(out.read_text())["ops"]
    model = create_model("wrn_28_10", depth=10, widen_factor=1)
    found = find_downsamplers(model, torch.rand(1, 3, 32, 32))
    assert [op["name"] for op in ops] == [d.name for d in found]
    assert [op["count"] for op in ops] == [N_IMAGES * d.channels for d in found]


def test_selection_metrics_per_channel_and_nyquist(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, cifar_dir: Path
) -> None:
    out = tmp_path / "r.json"
    extra = ["--include", "layer2.*", "layer3.*", "--exclude", "*shortcut*", "--nyquist", "keep_negative"]
    extra += ["--metric", "relative_aliasing", "--metric", "alias_energy_fraction", "--per-channel"]
    code, _, _ = run_cli(capsys, *measure_args(cifar_dir, out, *extra))
    assert code == 0
    report = json.loads(out.read_text())
    assert [op["name"] for op in report["ops"]] == ["layer2.0.conv1", "layer3.0.conv1"]
    assert report["nyquist"] == "keep_negative"
    assert report["metrics"] == ["aliasing", "relative_aliasing", "alias_energy_fraction"]
    for op in report["ops"]:
        assert set(op["metrics"]) == set(report["metrics"])
        assert len(op["metrics"]["aliasing"]["per_channel"]) == op["channels"]


def test_same_seed_gives_the_same_random_model(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, cifar_dir: Path
) -> None:
    results = []
    for name in ("a.json", "b.json"):
        assert run_cli(capsys, *measure_args(cifar_dir, tmp_path / name, "--seed", "3"))[0] == 0
        results.append([op["aliasing"] for op in json.loads((tmp_path / name).read_text())["ops"]])
    assert results[0] == results[1]


def test_progress_bar_unless_quiet(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, cifar_dir: Path
) -> None:
    argv = measure_args(cifar_dir, tmp_path / "r.json")
    argv.remove("--quiet")
    code, _, err = run_cli(capsys, *argv)
    assert code == 0 and "measuring aliasing" in err


def test_models_lists_architectures_and_the_zoo(capsys: pytest.CaptureFixture[str], zoo_dir: Path) -> None:
    code, out, _ = run_cli(capsys, "models", "--model-dir", str(zoo_dir))
    assert code == 0
    lines = out.splitlines()
    descriptions = model_descriptions()
    assert lines[0] == "architectures:"
    for line, (name, description) in zip(lines[1:], descriptions.items(), strict=False):
        assert line.split()[0] == name and line.endswith(description)
    table = lines[len(descriptions) + 2 :]
    assert table[0].startswith("zoo (RobustBench CIFAR-10 Linf") and str(zoo_dir) in table[0]
    assert table[1].split() == [
        "name",
        "architecture",
        "training",
        "family",
        "clean",
        "autoattack",
        "checkpoint",
    ]
    rows = {row.split()[0]: row.split() for row in table[2:]}
    assert list(rows) == [entry.name for entry in zoo.select()]
    assert rows["Carmon2019Unlabeled"] == [
        "Carmon2019Unlabeled",
        "wrn_28_10",
        "robust",
        "wrn-28-10",
        "89.69",
        "59.53",
        "missing",
    ]
    assert rows["Standard"][2] == "standard" and rows[ZOO_MODEL][-1] == "present"


def test_models_tag_filters_the_zoo(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run_cli(
        capsys, "models", "--tag", "resnet-18", "--tag", "robust", "--model-dir", str(tmp_path)
    )
    assert code == 0
    zoo_rows = out.split("zoo (")[1].splitlines()[2:]
    assert [row.split()[0] for row in zoo_rows] == [e.name for e in zoo.select("resnet-18")]
    code, out, err = run_cli(capsys, "models", "--tag", "wrn-34-10")
    assert code == 2 and out == ""
    assert_one_error_line(err, "'wrn-34-10'", "wrn-28-10")


# ------------------------------------------------------------------------------------------------ the zoo
def test_evaluate_a_zoo_model_beside_its_reported_accuracies(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, cifar_dir: Path, zoo_dir: Path
) -> None:
    out = tmp_path / "eval.json"
    argv = ["evaluate", "--model", ZOO_MODEL, "--model-dir", str(zoo_dir), "--data-dir", str(cifar_dir)]
    argv += ["--n-images", "4", "--batch-size", "3", "--device", "cpu", "--quiet", "--out", str(out)]
    code, stdout, stderr = run_cli(capsys, *argv)
    assert (code, stderr) == (0, "")

    images, labels = data.load_cifar10(cifar_dir, n_images=4)
    model = zoo.load_zoo_model(ZOO_MODEL, zoo_dir)
    expected = clean_accuracy(model, data.iterate_batches(images, labels, 4), progress=False)
    lines = stdout.splitlines()
    assert lines[0].startswith(
        f"clean accuracy of {ZOO_MODEL} on 4 CIFAR-10 test images: {expected} (device=cpu"
    )
    assert lines[1] == (
        "reported by RobustBench (full test set): clean 84.59%, AutoAttack 55.54% (Linf, eps 8/255)"
    )
    assert lines[2] == f"wrote {out}"
    result = json.loads(out.read_text())
    assert result["clean"] == expected.to_dict()
    assert result["reported"] == {"clean_acc": 84.59, "autoattack_acc": 55.54}
    meta = result["meta"]
    assert meta["model"]["name"] == ZOO_MODEL and meta["model"]["arch"] == "resnet18"
    checkpoint = zoo.checkpoint_path(ZOO_MODEL, zoo_dir)
    assert meta["checkpoint"] == {
        "path": str(checkpoint.resolve()),
        "sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
    }
    assert meta["data"]["n_images"] == 4 and meta["command"] == "evaluate"


def test_evaluate_an_architecture_with_a_checkpoint(
    capsys: pytest.CaptureFixture[str], cifar_dir: Path, checkpoint: Path
) -> None:
    argv = ["evaluate", *PREACT, "--checkpoint", str(checkpoint), "--data-dir", str(cifar_dir)]
    code, stdout, _ = run_cli(capsys, *argv, "--n-images", "3", "--quiet")
    assert code == 0
    [line] = stdout.splitlines()  # no reported accuracies, no file written
    assert line.startswith("clean accuracy of preact_resnet18 on 3 CIFAR-10 test images: ")


def test_evaluate_shows_progress_unless_quiet(
    capsys: pytest.CaptureFixture[str], cifar_dir: Path, zoo_dir: Path
) -> None:
    argv = ["evaluate", "--model", ZOO_MODEL, "--model-dir", str(zoo_dir), "--data-dir", str(cifar_dir)]
    code, _, err = run_cli(capsys, *argv, "--n-images", "1")
    assert code == 0 and "clean accuracy" in err


def test_measure_a_zoo_model(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, cifar_dir: Path, zoo_dir: Path
) -> None:
    out = tmp_path / "zoo.json"
    argv = measure_args(
        cifar_dir, out, "--n-images", "2", model=["--model", ZOO_MODEL, "--model-dir", str(zoo_dir)]
    )
    code, _, stderr = run_cli(capsys, *argv)
    assert (code, stderr) == (0, "")
    report = json.loads(out.read_text())
    found = find_downsamplers(zoo.load_zoo_model(ZOO_MODEL, zoo_dir), torch.rand(1, 3, 32, 32))
    assert [op["name"] for op in report["ops"]] == [d.name for d in found]
    assert report["meta"]["model"]["zoo"]["name"] == ZOO_MODEL
    assert report["meta"]["checkpoint"]["path"] == str(zoo.checkpoint_path(ZOO_MODEL, zoo_dir).resolve())


def test_download_weights_fetches_a_missing_zoo_checkpoint(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    cifar_dir: Path,
    zoo_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def download(*, id: str, output: str, quiet: bool) -> str:
        assert id == zoo.zoo_entry(ZOO_MODEL).gdrive_id and quiet
        Path(output).write_bytes(zoo.checkpoint_path(ZOO_MODEL, zoo_dir).read_bytes())
        return output

    monkeypatch.setitem(sys.modules, "gdown", types.SimpleNamespace(download=download))  # no network
    models_dir = tmp_path / "models"
    argv = ["evaluate", "--model", ZOO_MODEL, "--model-dir", str(models_dir), "--data-dir", str(cifar_dir)]
    code, stdout, _ = run_cli(capsys, *argv, "--n-images", "1", "--quiet", "--download-weights")
    assert code == 0 and stdout.startswith(f"clean accuracy of {ZOO_MODEL}")
    assert zoo.checkpoint_path(ZOO_MODEL, models_dir).is_file()


# ---------------------------------------------------------------------------------------------- help, parse
@pytest.mark.parametrize("command", [[], *([name] for name in cli.SUBCOMMANDS)])
def test_help_explains_with_an_example(capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    code, out, _ = run_cli(capsys, *command, "--help")
    assert code == 0 and "example" in out and "--debug" in out and "--quiet" in out
    if not command:
        assert all(name in out for name in cli.SUBCOMMANDS)


def test_measure_help_shows_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    flat = " ".join(run_cli(capsys, "measure", "--help")[1].split())
    for text in ("(default: 1000)", "(default: 250)", "(default: test)", "(default: zero)", "(default: 0)"):
        assert text in flat
    assert "(default: cuda if available, else cpu)" in flat


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and out.strip() == f"cnn-aliasing {cnn_aliasing.__version__}"


@pytest.mark.parametrize(
    ("argv", "quiet", "debug"),
    [
        (["models"], False, False),
        (["--quiet", "--debug", "models"], True, True),
        (["models", "--quiet"], True, False),
        (["--debug", "models", "--quiet"], True, True),
    ],
)
def test_global_options_before_or_after_the_subcommand(argv: list[str], quiet: bool, debug: bool) -> None:
    args = cli.build_parser().parse_args(argv)
    assert (args.quiet, args.debug) == (quiet, debug)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("16", 16),
        ("-2", -2),
        ("0.5", 0.5),
        ("1e-3", 1e-3),
        ("true", True),
        ("False", False),
        ("none", None),
        ("cifar10", "cifar10"),
        ("(1, 2)", (1, 2)),
        ("[[0.5, 0.5], [0.2, 0.2]]", [[0.5, 0.5], [0.2, 0.2]]),
    ],
)
def test_model_arg_values_are_parsed(text: str, value: Any) -> None:
    assert cli.parse_model_arg(f"key={text}") == ("key", value)


@pytest.mark.parametrize(
    ("model_args", "needle"),
    [
        (["width"], "KEY=VALUE"),
        (["=3"], "KEY=VALUE"),
        (["width="], "KEY=VALUE"),
        (["9x=1"], "KEY=VALUE"),
        (["normalize=(1,"], "cannot parse"),
        (["width=8", "width=4"], "'width' is given twice"),
    ],
)
def test_bad_model_arg_syntax_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, cifar_dir: Path, model_args: list[str], needle: str
) -> None:
    pairs = [token for arg in model_args for token in ("--model-arg", arg)]
    code, _, err = run_cli(
        capsys, *measure_args(cifar_dir, tmp_path / "r.json", *pairs, model=["--model", "preact_resnet18"])
    )
    assert code == 2 and needle in err and "--model-arg" in err and "Traceback" not in err


def test_one_line_joins_a_multi_line_message() -> None:
    assert cli.one_line("checkpoint x does not match:\n  2 missing keys: a, b\n  1 unexpected key: c\n") == (
        "checkpoint x does not match: 2 missing keys: a, b; 1 unexpected key: c"
    )


# ----------------------------------------------------------------------------------------------- errors
def _garbage_checkpoint(tmp_path: Path) -> list[str]:
    path = tmp_path / "broken.pt"
    path.write_bytes(b"\x80\x02 this is no checkpoint")
    return ["--checkpoint", str(path)]


def _file_as_folder(tmp_path: Path) -> list[str]:
    (tmp_path / "plain").write_text("x")
    return ["--out", str(tmp_path / "plain" / "r.json")]


ERROR_CASES: dict[str, tuple[Callable[[Path], list[str]], tuple[str, ...]]] = {
    "unknown model": (
        lambda _: ["--model", "resnet9000"],
        ("'resnet9000'", "preact_resnet18", "wrn_28_10", "zoo models: Standard, Carmon2019Unlabeled"),
    ),
    "zoo checkpoint missing": (
        lambda tmp: ["--model", "Carmon2019Unlabeled", "--model-dir", str(tmp / "zoo")],
        (str(Path("zoo", "cifar10", "Linf", "Carmon2019Unlabeled.pt")), "--download-weights"),
    ),
    "model argument for a zoo model": (
        lambda _: ["--model", "Standard", "--model-arg", "depth=16"],
        ("zoo model Standard", "--model wrn_28_10 with --checkpoint"),
    ),
    "unknown model argument": (lambda _: ["--model-arg", "depth=3"], ("'depth'", "width")),
    "bad model argument value": (
        lambda _: ["--model", "preact_resnet18", "--model-arg", "width=0"],
        ("cannot build model", "width=0"),
    ),
    "missing data folder": (
        lambda tmp: ["--data-dir", str(tmp / "nowhere")],
        ("nowhere", "--download", "make_cifar10.py"),
    ),
    "corrupt checkpoint": (_garbage_checkpoint, ("broken.pt",)),
    "missing checkpoint": (lambda tmp: ["--checkpoint", str(tmp / "gone.pt")], ("gone.pt",)),
    "too many images": (lambda _: ["--n-images", "1000"], ("n_images=1000", "24")),
    "output is a folder": (lambda tmp: ["--out", str(tmp)], ("is a folder",)),
    "output folder is a file": (_file_as_folder, ("plain",)),
    "bad device": (lambda _: ["--device", "nonsense"], ("'nonsense'", "not a device")),
    "include matches nothing": (lambda _: ["--include", "nothing*"], ("nothing*", "layer2.0.conv1")),
}


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_user_errors_are_one_line_with_exit_code_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, cifar_dir: Path, case: str, debug: bool
) -> None:
    make_args, needles = ERROR_CASES[case]
    extra = make_args(tmp_path)
    model = [] if "--model" in extra else PREACT  # a case naming the model replaces the default one
    argv = measure_args(cifar_dir, tmp_path / "out" / "r.json", *extra, model=model)
    code, out, err = run_cli(capsys, *(["--debug"] if debug else []), *argv)
    assert code == 2 and out == ""
    if debug:
        assert "Traceback (most recent call last)" in err
        err = err.splitlines()[-1]
    assert_one_error_line(err, *needles)


def test_image_size_the_model_cannot_take(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, cifar_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def load_64x64(*args: Any, n_images: int, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        n = n_images
        return torch.randint(0, 256, (n, 3, 64, 64), dtype=torch.uint8), torch.zeros(n, dtype=torch.int64)

    monkeypatch.setattr(data, "load_cifar10", load_64x64)
    argv = measure_args(cifar_dir, tmp_path / "r.json")
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert_one_error_line(err, "(64, 64)", "32x32")
    code, _, err = run_cli(capsys, "--debug", *argv)
    assert code == 2 and "Traceback" in err and "ModelInputError" in err
    assert not (tmp_path / "r.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, cifar_dir: Path
) -> None:
    argv = measure_args(cifar_dir, tmp_path / "r.json", "--device", "cuda")
    assert_one_error_line(run_cli(capsys, *argv)[2], "CUDA is not available", "--device cpu")


def test_keyboard_interrupt_exits_130(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, cifar_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(measure_command, "measure", interrupted)
    code, _, err = run_cli(capsys, *measure_args(cifar_dir, tmp_path / "r.json"))
    assert (code, err) == (130, "cnn-aliasing: interrupted\n")


def test_warnings_are_shown_as_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, cifar_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def warning_measure(*args: Any, **kwargs: Any) -> cnn_aliasing.AliasingReport:
        warnings.warn("first part\n  second part", UserWarning, stacklevel=1)
        return measure_aliasing(*args, **kwargs)

    monkeypatch.setattr(measure_command, "measure", warning_measure)
    code, _, err = run_cli(capsys, *measure_args(cifar_dir, tmp_path / "r.json"))
    assert (code, err) == (0, "cnn-aliasing: warning: first part; second part\n")


def test_missing_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys)
    assert code == 2 and "COMMAND" in err


def test_registering_a_name_twice_is_refused() -> None:
    class Again(cli.Subcommand):
        name = "models"
        help = description = example = ""

        def add_arguments(self, parser: argparse.ArgumentParser) -> None:
            """Nothing."""

        def run(self, args: argparse.Namespace) -> int:
            return 0

    with pytest.raises(ValueError, match="already registered"):
        cli.register_subcommand(Again)


# ------------------------------------------------------------------------------------------- installed
@pytest.mark.parametrize(
    "command",
    [[str(Path(sys.executable).with_name("cnn-aliasing"))], [sys.executable, "-m", "cnn_aliasing"]],
    ids=["entry point", "python -m"],
)
def test_installed_command_help(command: list[str]) -> None:
    if not Path(command[0]).exists():
        pytest.fail(f"{command[0]} is missing: install the package (pip install -e .)")
    done = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: cnn-aliasing") and "measure" in done.stdout


def test_evaluate_with_attack_writes_robust_accuracy_and_resumes(tmp_path: Path, capsys) -> None:
    root = tmp_path / "data"
    make_layout(root, test_size=6)
    out, state = tmp_path / "aa.json", tmp_path / "aa.state.json"
    argv = [
        "evaluate", "--model", "preact_resnet18", "--model-arg", "width=4", "--data-dir", str(root),
        "--n-images", "6", "--batch-size", "3", "--attack", "fgsm", "--eps", "8/255", "--state", str(state),
        "--out", str(out), "--quiet",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    first = json.loads(out.read_text())
    robust = first["robust"]
    assert robust["attack"] == "fgsm" and robust["eps"] == pytest.approx(8 / 255)
    assert robust["robust_accuracy"] <= robust["clean_accuracy"] == first["clean"]["accuracy"]
    assert [a["attack"] for a in robust["per_attack"]] == ["fgsm"]
    assert "robust accuracy under fgsm (Linf, eps 8/255)" in capsys.readouterr().out
    assert state.exists()
    assert cli.main(argv) == 0  # the saved state is complete: the rerun reads it and agrees
    assert json.loads(out.read_text())["robust"]["robust_accuracy"] == robust["robust_accuracy"]
    identity = first["meta"]["model_identity"]
    assert robust["model"] == identity and identity["parameters"] == 44446
    assert robust["data_sha256"] == first["meta"]["data"]["sha256"]
    other = [a if a != "width=4" else "width=8" for a in argv]  # another model, the same state file
    code, _, err = run_cli(capsys, *other)
    assert code == 2 and "written for model.parameters=44446, this run has model.parameters=" in err
    assert len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------------ train
def test_train_dry_run_prints_the_resolved_recipe(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "--recipe", "small-fgsm-rs", "--set", "epochs=3", "--set", "eps=4/255"]
    code, out, _ = run_cli(
        capsys, *argv, "--set", "arch_args.width=8", "--set", "milestones=[1,2]", "--dry-run"
    )
    shown = json.loads(out)
    assert code == 0 and shown["name"] == "small-fgsm-rs" and shown["epochs"] == 3
    assert shown["eps"] == pytest.approx(4 / 255) and shown["attack_step_used"] == pytest.approx(
        1.25 * 4 / 255
    )
    assert shown["arch_args"] == {"width": 8, "normalize": "cifar10"} and shown["milestones"] == [1, 2]
    code, _, err = run_cli(capsys, "train", "--recipe", "small-standard", "--set", "epoch=3", "--dry-run")
    assert code == 2 and "unknown field 'epoch'; valid fields: name" in err
    code, _, err = run_cli(capsys, "train", "--recipe", "small-standard")
    assert code == 2 and "train needs --data-dir and --out" in err


def test_train_then_measure_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, run = tmp_path / "data", tmp_path / "run"
    make_layout(root, train_sizes=(8, 8, 8, 4, 4), test_size=6)
    settings = ["epochs=2", "n_train=none", "batch_size=16", "eval_images=6", "eval_pgd_steps=1"]
    argv = ["train", "--recipe", "small-standard", "--data-dir", str(root), "--out", str(run), "--quiet"]
    argv += [arg for s in [*settings, "arch_args.width=4"] for arg in ("--set", s)]
    threads = torch.get_num_threads()
    try:
        code, out, _ = run_cli(capsys, *argv, "--threads", "1")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert code == 0 and "epoch   2" in out and "pgd" in out and f"wrote {run / 'model.safetensors'}" in out
    sidecar = json.loads((run / "model.json").read_text())
    assert sidecar["complete"] and sidecar["model"]["args"] == {"width": 4, "normalize": "cifar10"}
    report = tmp_path / "r.json"
    code, _, _ = run_cli(capsys, *measure_args(root, report, model=["--model", str(run)]), "--n-images", "6")
    meta = json.loads(report.read_text())["meta"]
    assert code == 0 and meta["model"]["name"] == "preact_resnet18"
    assert meta["model"]["trained"]["recipe"]["name"] == "small-standard"
    assert meta["checkpoint"]["path"] == str((run / "model.safetensors").resolve())
    code, _, err = run_cli(
        capsys, *measure_args(root, report, "--checkpoint", "x.pt", model=["--model", str(run)])
    )
    assert code == 2 and "do not apply to the trained run" in err
