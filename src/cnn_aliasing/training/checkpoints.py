"""A training run's folder: the weights, the JSON sidecar telling their story, and the resume state.

``OUT/model.safetensors`` holds the weights after the last finished epoch, ``OUT/model.json`` the
sidecar (recipe, model, seed, epochs done, per-epoch metrics, warnings, data, device, provenance) and
``OUT/state.pt`` what resuming needs (weights, optimiser state, history), loadable with
``torch.load(..., weights_only=True)``. All three are rewritten atomically after every epoch, state first,
so a kill at any moment leaves a run that resumes from its last finished epoch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnn_aliasing.errors import CheckpointError
from cnn_aliasing.models import create_model, load_checkpoint
from cnn_aliasing.models.checkpoint import cpu_state_dict, save_state_dict
from cnn_aliasing.provenance import atomic_file, write_json_atomic

StrPath = str | os.PathLike[str]
WEIGHTS = "model.safetensors"
SIDECAR = "model.json"
STATE = "state.pt"
SCHEMA = 1


def run_folder(path: StrPath) -> Path:
    """The run folder of ``path``: the folder of a weights file, else ``path`` itself."""
    path = Path(path).expanduser()
    return path.parent if path.is_file() else path


def has_sidecar(path: StrPath) -> bool:
    """True if ``path`` is a run folder or a weights file with a ``model.json`` beside it."""
    path = Path(path).expanduser()
    return path.exists() and (run_folder(path) / SIDECAR).is_file()


def read_sidecar(path: StrPath) -> dict[str, Any]:
    """The sidecar dict of a run (``path``: its folder, or its ``model.safetensors``)."""
    file = run_folder(path) / SIDECAR
    if not file.is_file():
        raise CheckpointError(f"no training sidecar {file}: {path} is not a cnn-aliasing training run")
    try:
        sidecar = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CheckpointError(f"cannot read the training sidecar {file}: {error}") from error
    if not isinstance(sidecar, dict) or sidecar.get("schema") != SCHEMA:
        raise CheckpointError(f"training sidecar {file} is not of schema {SCHEMA}")
    return sidecar


def weights_file(path: StrPath) -> Path:
    """The weights of a run: ``path`` itself if it is a file, else ``path/model.safetensors``."""
    path = Path(path).expanduser()
    return path if path.is_file() else path / WEIGHTS


def load_trained_model(path: StrPath) -> nn.Module:
    """The model of a training run (its folder or ``model.safetensors``), built from the sidecar's
    architecture and arguments with :func:`cnn_aliasing.models.create_model`, weights loaded, eval mode."""
    sidecar = read_sidecar(path)
    model = create_model(sidecar["model"]["name"], **sidecar["model"]["args"])
    return load_checkpoint(model, weights_file(path)).eval()


def write_run(
    out_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    sidecar: dict[str, Any],
) -> None:
    """Write the resume state, the weights and the sidecar of the epochs done so far (in that order)."""
    weights = cpu_state_dict(model)
    state = {
        "epochs_done": sidecar["epochs_done"],
        "model": weights,
        "optimizer": optimizer.state_dict(),
        "history": json.dumps(sidecar["history"]),
        "warnings": json.dumps(sidecar["warnings"]),
    }
    with atomic_file(out_dir / STATE) as tmp:
        torch.save(state, tmp)
    save_state_dict(weights, out_dir / WEIGHTS)
    write_json_atomic(out_dir / SIDECAR, sidecar)


def read_state(out_dir: Path) -> dict[str, Any] | None:
    """The resume state in ``out_dir`` (history and warnings decoded), or None if there is none."""
    file = out_dir / STATE
    if not file.is_file():
        return None
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(
            f"cannot read the resume state {file} ({type(error).__name__}); delete it or pass "
            "resume=False (--restart) to train from scratch"
        ) from error
    state["history"] = json.loads(state["history"])
    state["warnings"] = json.loads(state["warnings"])
    return state
