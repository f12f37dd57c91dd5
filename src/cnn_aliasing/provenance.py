"""Provenance of a run: the versions, platform, git state and time that every result file records
(:func:`run_metadata`; :func:`code_metadata` without torch, for the report). Writing and reading the files
themselves is :mod:`cnn_aliasing.files`."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

DISTRIBUTION = "cnn-aliasing"
_GIT_TIMEOUT_S = 5.0
_PACKAGE_DIR = Path(__file__).resolve().parent


def _package_version() -> str:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return str(getattr(sys.modules.get("cnn_aliasing"), "__version__", "unknown"))


def _git(folder: Path, *args: str) -> subprocess.CompletedProcess[str] | None:
    """Run git in `folder`; None if git is missing, hangs or cannot start."""
    try:
        return subprocess.run(
            ["git", "--no-optional-locks", *args],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None


def _git_state(folder: Path) -> dict[str, Any]:
    """{"commit": HEAD hash or None, "dirty": tracked changes (bool) or None} of the repo holding `folder`.

    Both are None when `folder` is not in a git checkout, git is missing, or `folder` is git-ignored
    there (a package installed into a virtualenv inside some repo is not that repo's code).
    """
    unknown: dict[str, Any] = {"commit": None, "dirty": None}
    head = _git(folder, "rev-parse", "--verify", "HEAD")
    if head is None or head.returncode != 0:
        return unknown
    ignored = _git(folder, "check-ignore", "-q", ".")
    if ignored is None or ignored.returncode == 0:
        return unknown
    status = _git(folder, "status", "--porcelain", "--untracked-files=no")
    dirty = None if status is None or status.returncode != 0 else bool(status.stdout.strip())
    return {"commit": head.stdout.strip(), "dirty": dirty}


def code_metadata() -> dict[str, Any]:
    """JSON-ready provenance of this code alone, without loading torch: package, version, git commit and
    dirty flag of this checkout, UTC time (what the report records of itself)."""
    return {
        "package": DISTRIBUTION,
        "version": _package_version(),
        "git": _git_state(_PACKAGE_DIR),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def run_metadata() -> dict[str, Any]:
    """JSON-ready provenance of a run: :func:`code_metadata` with the versions of torch, CUDA, numpy and
    python and the platform."""
    import torch  # here, not at the top: reading result files and building the report need no torch

    code = code_metadata()
    return {
        "package": code["package"],
        "version": code["version"],
        "torch": str(torch.__version__),
        "cuda": torch.version.cuda,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git": code["git"],
        "timestamp": code["timestamp"],
    }
