"""The real `cnn-aliasing` command, run as a subprocess on bad input for every subcommand: exit status 2
and exactly one line on stderr that names the offending thing, with no traceback (``--debug`` shows it).

Command-line syntax errors found by argparse are one line too (``PROG: error: MESSAGE (see PROG
--help)``), not argparse's usage block. Every case fails before any work (no model is trained, attacked
or measured), so nothing is printed on stdout and no progress bar on stderr. The cases run concurrently,
a subprocess per CPU core: each one starts Python and imports torch (about 2 s of CPU).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cifar_fixtures import make_layout

N_TEST = 4
MODEL = ["--model", "preact_resnet18", "--model-arg", "width=4"]
DATA = ["--data-dir", "data", "--quiet"]
RECIPE = ["train", "--recipe", "small-standard"]
ERROR_LINE = re.compile(r"cnn-aliasing( [a-z]+)?: error: \S")

# name: (arguments, texts the error line must contain)
CASES: dict[str, tuple[list[str], tuple[str, ...]]] = {
    "measure unknown model": (
        ["measure", "--model", "resnet9000", *DATA, "--out", "m1.json"],
        ("unknown model 'resnet9000'", "preact_resnet18", "zoo models: Standard"),
    ),
    "measure missing data dir": (
        ["measure", *MODEL, "--data-dir", "nowhere", "--out", "m2.json"],
        ("CIFAR-10 not found in nowhere", "--download"),
    ),
    "measure n-images 0": (
        ["measure", *MODEL, *DATA, "--n-images", "0", "--out", "m3.json"],
        ("cnn-aliasing measure: error: argument --n-images", "the value must be an integer >= 1, got int 0"),
    ),
    "measure n-images -1": (
        ["measure", *MODEL, *DATA, "--n-images", "-1", "--out", "m4.json"],
        ("argument --n-images", "the value must be an integer >= 1, got int -1"),
    ),
    "measure n-images abc": (
        ["measure", *MODEL, *DATA, "--n-images", "abc", "--out", "m5.json"],
        ("argument --n-images", "the value must be an integer >= 1, got str 'abc'"),
    ),
    "measure checkpoint that is no checkpoint": (
        ["measure", *MODEL, *DATA, "--checkpoint", "junk.pt", "--out", "m6.json"],
        ("cannot read checkpoint junk.pt",),
    ),
    "measure unknown device": (
        ["measure", *MODEL, *DATA, "--device", "tpu9", "--out", "m7.json"],
        ("--device 'tpu9' is not a device name",),
    ),
    "measure include matching nothing, with progress bars": (
        [
            "measure",
            *MODEL,
            "--data-dir",
            "data",
            "--n-images",
            "4",
            "--include",
            "nothing*",
            "--out",
            "m8.json",
        ],
        ("no down-sampling op of preact_resnet18 is left after --include 'nothing*'", "layer2.0.conv1"),
    ),
    "evaluate unknown attack": (
        ["evaluate", *MODEL, *DATA, "--attack", "apgd-xx"],
        ("unknown attack 'apgd-xx'", "valid presets: apgd-ce, apgd-ce+apgd-t, rand, standard", "fab-t"),
    ),
    "evaluate eps 8/0": (
        ["evaluate", *MODEL, *DATA, "--attack", "fgsm", "--eps", "8/0"],
        ("eps must be a number >= 0 or a fraction such as \"8/255\", got str '8/0'",),
    ),
    "evaluate eps -1": (
        ["evaluate", *MODEL, *DATA, "--attack", "fgsm", "--eps", "-1"],
        ("eps must be a number >= 0 or a fraction such as \"8/255\", got str '-1'",),
    ),
    "evaluate Linf eps 8": (
        ["evaluate", *MODEL, *DATA, "--attack", "fgsm", "--eps", "8"],
        ("a Linf eps of 8 covers the whole pixel range", "did you mean 8/255 (0.03137)?"),
    ),
    "evaluate eps 0": (
        ["evaluate", *MODEL, *DATA, "--attack", "fgsm", "--eps", "0"],
        ("eps must be above 0, got 0", "8/255"),
    ),
    "evaluate L2 eps above the diameter": (
        ["evaluate", *MODEL, *DATA, "--n-images", "2", "--attack", "apgd-ce", "--norm", "L2", "--eps", "128"],
        ("an L2 eps of 128 is above 55.43", "shape (3, 32, 32)", "did you mean 128/255"),
    ),
    "train unknown recipe": (
        ["train", "--recipe", "small-standrd", "--dry-run"],
        ("argument --recipe: invalid choice: 'small-standrd'", "small-standard"),
    ),
    "train set out of range": (
        [*RECIPE, "--set", "epochs=0", "--dry-run"],
        ("field epochs must be an integer >= 1, got int 0",),
    ),
    "train missing data dir": (
        [*RECIPE, "--data-dir", "nowhere", "--out", "t1", "--quiet"],
        ("CIFAR-10 not found in nowhere",),
    ),
    "study square n_queries 0": (
        ["study", "square.toml", "--dry-run"],
        ("square.toml: [attack]", "attack 'square' option n_queries must be an integer >= 1, got int 0"),
    ),
    "study fab unknown option": (
        ["study", "fab.toml", "--dry-run"],
        ("fab.toml: [attack]", "attack 'fab-t': unknown option 'bogus'", "valid options: n_target_classes"),
    ),
    "study square n_queries 0 without dry-run": (
        ["study", "square.toml", "--quiet"],
        ("attack 'square' option n_queries",),
    ),
    "study not TOML": (["study", "broken.toml", "--dry-run"], ("broken.toml: not valid TOML",)),
    "study unknown device": (
        ["study", "good.toml", "--dry-run", "--device", "tpu9"],
        ('--device must be "auto" or a torch device name', "got str 'tpu9'"),
    ),
    "report missing folder": (["report", "nowhere"], ("nowhere: not a folder", "study.json")),
    "models unknown tag": (["models", "--tag", "wrn-99"], ("unknown zoo tag 'wrn-99'", "wrn-28-10")),
}
DEBUG = ["--debug", "study", "square.toml", "--dry-run"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working folder with tiny CIFAR-10 data, a file that is no checkpoint and study configs."""
    root = tmp_path_factory.mktemp("cli-errors")
    make_layout(root / "data", train_sizes=(2, 2, 2, 2, 2), test_size=N_TEST)
    (root / "junk.pt").write_bytes(b"\x80\x02 this is no checkpoint")
    (root / "folder").mkdir()
    models = '[[models]]\ncheckpoint = "w.pt"\narch = "preact_resnet18"\nrobust = false\n'
    (root / "square.toml").write_text(f"[attack]\noptions = {{square = {{n_queries = 0}}}}\n{models}")
    (root / "fab.toml").write_text(
        f'[attack]\nname = "standard"\n[attack.options.fab-t]\nbogus = 1\n{models}'
    )
    (root / "good.toml").write_text(models)
    (root / "broken.toml").write_text("name = [unclosed\n")
    return root


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "HOME": str(cwd), "CUDA_VISIBLE_DEVICES": ""}
    if "PYTHONPATH" in os.environ:  # the package under test, where it is not the installed one
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    command = [sys.executable, "-m", "cnn_aliasing", *argv]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def finished(workdir: Path) -> dict[str, subprocess.CompletedProcess[str]]:
    """Every case's finished process (and the --debug one's under "debug"), run a few at a time."""
    runs = {**{name: argv for name, (argv, _) in CASES.items()}, "debug": DEBUG}
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        futures = {name: pool.submit(_run, argv, workdir) for name, argv in runs.items()}
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_exit_status_2(
    finished: dict[str, subprocess.CompletedProcess[str]], case: str
) -> None:
    done = finished[case]
    assert (done.returncode, done.stdout) == (2, ""), done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and ERROR_LINE.match(lines[0]), done.stderr
    for needle in CASES[case][1]:
        assert needle in lines[0]


def test_debug_shows_the_traceback_then_the_line(
    finished: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    done = finished["debug"]
    assert done.returncode == 2 and done.stderr.startswith("Traceback (most recent call last):")
    assert "cnn_aliasing.errors.CnnAliasingError: square.toml: [attack]" in done.stderr
    assert done.stderr.splitlines()[-1] == (
        "cnn-aliasing: error: square.toml: [attack] attack 'square' option n_queries must be an integer "
        ">= 1, got int 0"
    )


def test_nothing_was_written_by_the_failed_commands(
    finished: dict[str, subprocess.CompletedProcess[str]], workdir: Path
) -> None:
    written = {p.name for p in workdir.iterdir()} - {"data", "junk.pt", "folder", ".config", ".cache"}
    assert written == {"square.toml", "fab.toml", "good.toml", "broken.toml"}
    assert not any((workdir / "folder").iterdir())
