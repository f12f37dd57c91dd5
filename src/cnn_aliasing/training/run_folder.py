"""A training run's folder: the weights, the JSON sidecar telling their story, and the resume state.

``OUT/model.safetensors`` holds the weights after the last finished epoch, ``OUT/model.json`` the
sidecar (recipe, model, seed, epochs done, per-epoch metrics, warnings, data, device, provenance) and
``OUT/state.pt`` what resuming needs (weights, optimiser state, history, recipe, the training images'
hash), loadable with ``torch.load(..., weights_only=True)``. After every epoch each file is replaced
atomically, in the order state, weights, sidecar, and all three carry the same commit token (epochs done
and the weights' hash):

- the state is self-contained, so resuming always starts from it; weights or a sidecar that do not carry
  its token (a kill between the writes) are rewritten from it before training goes on (:func:`publish`);
- the sidecar is the commit point for readers of the weights: :func:`load_trained_model` refuses weights
  whose token differs from the sidecar's, and a run counts as finished only when its sidecar says so and
  the weights carry the sidecar's token (:func:`is_finished`).

A recipe with ``snapshots`` also keeps the weights after each of those epochs in
``OUT/epoch-NNN.safetensors``, written before the epoch's state (so a kill in between repeats the epoch and
rewrites the same file); the epoch's history row records the snapshot's commit token, which
:func:`load_snapshot` checks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import safetensors
import torch
from torch import nn

from cnn_aliasing.errors import CheckpointError
from cnn_aliasing.identity import weights_sha256
from cnn_aliasing.models import create_model, load_checkpoint
from cnn_aliasing.models.checkpoint import cpu_state_dict, save_state_dict
from cnn_aliasing.provenance import JsonFileError, StrPath, atomic_file, read_json_object, write_json_atomic

WEIGHTS = "model.safetensors"
SIDECAR = "model.json"
STATE = "state.pt"
SCHEMA = 1
COMMIT = "commit"  # the key of the commit token in the sidecar, the state and the weights' metadata


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
        sidecar = read_json_object(file)
    except JsonFileError as error:
        raise CheckpointError(f"cannot read the training sidecar: {error}") from None
    if sidecar.get("schema") != SCHEMA:
        raise CheckpointError(f"training sidecar {file} is not of schema {SCHEMA}")
    return sidecar


def weights_file(path: StrPath) -> Path:
    """The weights of a run: ``path`` itself if it is a file, else ``path/model.safetensors``."""
    path = Path(path).expanduser()
    return path if path.is_file() else path / WEIGHTS


def weights_commit(path: StrPath) -> str | None:
    """The commit token in a weights file's metadata (None: no file, or written without one)."""
    try:
        with safetensors.safe_open(weights_file(path), framework="pt") as f:
            return (f.metadata() or {}).get(COMMIT)
    except (OSError, safetensors.SafetensorError):
        return None


def is_finished(path: StrPath, sidecar: dict[str, Any]) -> bool:
    """Whether the run in ``path`` is complete: its sidecar says so and its weights carry its token."""
    return bool(sidecar.get("complete")) and weights_commit(path) == sidecar.get(COMMIT)


def load_trained_model(path: StrPath) -> nn.Module:
    """The model of a training run (its folder or ``model.safetensors``), built from the sidecar's
    architecture and arguments with :func:`cnn_aliasing.models.create_model`, weights loaded, eval mode.

    Weights that are not the ones the sidecar describes (a run killed while writing them) are refused.
    """
    sidecar = read_sidecar(path)
    if weights_commit(path) != sidecar.get(COMMIT):
        raise CheckpointError(
            f"the weights in {run_folder(path)} are not those its {SIDECAR} describes (the run was "
            f"interrupted while writing epoch {sidecar.get('epochs_done', 0) + 1}); run the same training "
            "command again to repair it"
        )
    model = create_model(sidecar["model"]["name"], **sidecar["model"]["args"])
    return load_checkpoint(model, weights_file(path)).eval()


def snapshot_file(path: StrPath, epoch: int) -> Path:
    """Where a run keeps its weights after ``epoch`` (1-based) when its recipe asks for that snapshot."""
    return run_folder(path) / f"epoch-{epoch:03d}.safetensors"


def write_snapshot(out_dir: Path, epoch: int, model: nn.Module) -> str:
    """Write the weights after ``epoch`` to :func:`snapshot_file`; return their commit token."""
    weights = cpu_state_dict(model)
    token = commit_token(epoch, weights)
    save_state_dict(weights, snapshot_file(out_dir, epoch), metadata={COMMIT: token})
    return token


def load_snapshot(path: StrPath, epoch: int) -> nn.Module:
    """The model of a training run after ``epoch`` (a snapshot its recipe asked for), in eval mode.

    The run must have finished that epoch, and the snapshot must carry the token its history records.
    """
    sidecar = read_sidecar(path)
    row = next((r for r in sidecar.get("history", []) if r.get("epoch") == epoch), None)
    file = snapshot_file(path, epoch)
    if row is None or "snapshot" not in row:
        kept = [r["epoch"] for r in sidecar.get("history", []) if "snapshot" in r]
        raise CheckpointError(
            f"the run in {run_folder(path)} has no snapshot of epoch {epoch} (snapshots kept: "
            f"{', '.join(map(str, kept)) or 'none'}; the recipe's snapshots field chooses them)"
        )
    if weights_commit(file) != row["snapshot"]:
        raise CheckpointError(
            f"{file} is not the snapshot of epoch {epoch} that {run_folder(path) / SIDECAR} records; run the "
            "training again to repair it"
        )
    model = create_model(sidecar["model"]["name"], **sidecar["model"]["args"])
    return load_checkpoint(model, file).eval()


def commit_token(epochs_done: int, weights: dict[str, torch.Tensor]) -> str:
    """The token that ties the state, weights and sidecar of one epoch together."""
    return f"epoch {epochs_done} sha256 {weights_sha256(weights)}"


def write_run(
    out_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    sidecar: dict[str, Any],
) -> None:
    """Write the resume state, then the weights and the sidecar (the commit point) of the epochs done."""
    weights = cpu_state_dict(model)
    sidecar[COMMIT] = commit_token(sidecar["epochs_done"], weights)
    state = {
        "epochs_done": sidecar["epochs_done"],
        "model": weights,
        "optimizer": optimizer.state_dict(),
        "history": json.dumps(sidecar["history"]),
        "warnings": json.dumps(sidecar["warnings"]),
        "recipe": json.dumps(sidecar["recipe"]),
        "data_sha256": sidecar["data"]["sha256"],
        COMMIT: sidecar[COMMIT],
    }
    with atomic_file(out_dir / STATE) as tmp:
        torch.save(state, tmp)
    publish(out_dir, weights, sidecar)


def publish(out_dir: Path, weights: dict[str, torch.Tensor], sidecar: dict[str, Any]) -> None:
    """Write the weights (tagged with the sidecar's commit token), then the sidecar."""
    save_state_dict(weights, out_dir / WEIGHTS, metadata={COMMIT: sidecar[COMMIT]})
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
    for key in ("history", "warnings", "recipe"):
        state[key] = json.loads(state[key]) if key in state else None  # states before 0.2 lack the recipe
    if state.get(COMMIT) is None:
        state[COMMIT] = commit_token(state["epochs_done"], state["model"])
    return state
