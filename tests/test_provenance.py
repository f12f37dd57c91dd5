"""Tests of cnn_aliasing.provenance: run metadata and git state."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import torch

from cnn_aliasing import provenance
from cnn_aliasing.provenance import run_metadata

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def _git(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    done = subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository with one commit: a tracked `pkg/` and an ignored `venv/`."""
    _git(tmp_path, "init", "-q")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text("x = 1\n")
    (tmp_path / "venv" / "site").mkdir(parents=True)
    (tmp_path / ".gitignore").write_text("venv/\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "init")
    return tmp_path


def test_run_metadata_fields_and_json() -> None:
    meta = run_metadata()
    assert meta["package"] == "cnn-aliasing"
    assert isinstance(meta["version"], str) and meta["version"]
    assert meta["torch"] == str(torch.__version__)
    assert meta["numpy"] == np.__version__
    assert meta["python"].count(".") == 2
    assert isinstance(meta["platform"], str) and meta["platform"]
    assert set(meta["git"]) == {"commit", "dirty"}
    stamp = datetime.fromisoformat(meta["timestamp"])
    offset = stamp.utcoffset()
    assert offset is not None and offset.total_seconds() == 0
    assert abs((datetime.now(timezone.utc) - stamp).total_seconds()) < 60
    assert json.loads(json.dumps(meta)) == meta


def test_version_falls_back_when_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> str:
        raise provenance.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(provenance.importlib.metadata, "version", not_installed)
    import cnn_aliasing

    monkeypatch.setattr(cnn_aliasing, "__version__", "9.9.9", raising=False)
    assert run_metadata()["version"] == "9.9.9"
    monkeypatch.delattr(cnn_aliasing, "__version__")
    assert run_metadata()["version"] == "unknown"


@needs_git
def test_git_state_clean_dirty_and_untracked(repo: Path) -> None:
    head = _git(repo, "rev-parse", "HEAD")
    assert provenance._git_state(repo / "pkg") == {"commit": head, "dirty": False}
    (repo / "pkg" / "new.py").write_text("untracked files do not make it dirty\n")
    assert provenance._git_state(repo / "pkg") == {"commit": head, "dirty": False}
    (repo / "pkg" / "mod.py").write_text("x = 2\n")
    assert provenance._git_state(repo / "pkg") == {"commit": head, "dirty": True}


@needs_git
def test_git_state_unknown_outside_a_checkout(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    assert provenance._git_state(repo / "venv" / "site") == {"commit": None, "dirty": None}
    elsewhere = tmp_path_factory.mktemp("not-a-repo")
    (elsewhere / ".git").write_text("gitdir: /nonexistent\n")  # stop git from walking up to any repo above
    assert provenance._git_state(elsewhere) == {"commit": None, "dirty": None}
    empty = tmp_path_factory.mktemp("fresh-repo")
    _git(empty, "init", "-q")  # no commit yet: no HEAD
    assert provenance._git_state(empty) == {"commit": None, "dirty": None}


def test_git_state_unknown_without_git(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(repo / "no-bin-here"))
    assert provenance._git_state(repo) == {"commit": None, "dirty": None}


def test_git_state_unknown_when_git_hangs(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def hang(*args: object, **kwargs: object) -> None:
        raise subprocess.TimeoutExpired(cmd="git", timeout=provenance._GIT_TIMEOUT_S)

    monkeypatch.setattr(provenance.subprocess, "run", hang)
    assert provenance._git_state(repo) == {"commit": None, "dirty": None}


@needs_git
def test_run_metadata_reports_this_checkout() -> None:
    package_dir = Path(provenance.__file__).resolve().parent
    expected = provenance._git_state(package_dir)
    assert run_metadata()["git"] == expected
    if expected["commit"] is not None:
        assert len(expected["commit"]) == 40 and isinstance(expected["dirty"], bool)
