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

Resuming (:func:`resume_point`, on rank 0 only): a run of the same recipe already finished is returned as it
is; otherwise the state is read, and a state or sidecar of another recipe, or (:func:`check_same_data`) a
state of other training images, is refused by :func:`cnn_aliasing.resume.check_identity`;
:func:`continue_from` brings a new sidecar (:func:`new_sidecar`) to where the state stands.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import safetensors
import torch
from torch import nn

from cnn_aliasing import distributed
from cnn_aliasing.errors import CheckpointError, CnnAliasingError
from cnn_aliasing.files import JsonFileError, StrPath, atomic_file, read_json_object, write_json_atomic
from cnn_aliasing.identity import data_sha256, weights_sha256
from cnn_aliasing.models import create_model, load_checkpoint
from cnn_aliasing.models.checkpoint import cpu_state_dict, save_state_dict
from cnn_aliasing.provenance import run_metadata
from cnn_aliasing.resume import check_identity
from cnn_aliasing.training.objectives import attack_step, get_objective
from cnn_aliasing.training.recipes import Recipe

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


def new_sidecar(
    recipe: Recipe,
    data_dir: StrPath,
    images: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device,
    context: distributed.Context,
    sync_batchnorm: bool,
    autocast_bf16: bool,
) -> dict[str, Any]:
    """The sidecar of a run of ``recipe`` on ``images`` that has trained no epoch yet."""
    objective = get_objective(recipe.objective)
    return {
        "schema": SCHEMA,
        "recipe": recipe.to_dict(),
        "model": {"name": recipe.arch, "args": recipe.to_dict()["arch_args"]},
        "objective": recipe.objective,
        "robust": objective.robust,
        "attack": (
            {"norm": "Linf", "eps": recipe.eps, "step": attack_step(recipe), "steps": recipe.attack_steps}
            if objective.robust
            else None
        ),
        "seed": recipe.seed,
        "epochs": recipe.epochs,
        "epochs_done": 0,
        "complete": False,
        "history": [],
        "warnings": [],
        "data": {
            "dir": os.fspath(Path(data_dir).expanduser().resolve()),
            "split": "train",
            "n_train": len(images),
            "sha256": data_sha256(images, labels),
            "subset_seed": recipe.subset_seed if recipe.n_train is not None else None,
            "eval_split": "test",
            "eval_images": recipe.eval_images if recipe.eval_every else 0,
        },
        "device": str(device),
        **context.meta(),
        "sync_batchnorm": sync_batchnorm and context.world_size > 1,
        "autocast_bf16": autocast_bf16,
        "run": run_metadata(),
    }


_RESTART = "resume=False, --restart"


def _check_same_recipe(out_dir: Path, stored: dict[str, Any], recipe: Recipe) -> None:
    """An error if ``stored`` (a recipe dict found in ``out_dir``) is not ``recipe``."""
    check_identity(
        f"the run in {out_dir}",
        {"recipe": stored},
        {"recipe": recipe.to_dict()},
        f"choose another output folder, or restart it ({_RESTART}) to replace that run",
    )


def check_same_data(out_dir: Path, state: dict[str, Any], wanted: str) -> None:
    """An error if the run in ``out_dir`` (its resume ``state``) was trained on other images than
    ``wanted`` (their hash); states written before the hash was recorded pass."""
    if state.get("data_sha256") is not None:
        check_identity(
            f"the run in {out_dir}",
            {"data_sha256": state["data_sha256"]},
            {"data_sha256": wanted},
            f"it was trained on other images: pass the data it was trained on, or restart it ({_RESTART})",
        )


def _existing_run(out_dir: Path, recipe: Recipe) -> dict[str, Any] | None:
    """The sidecar already in ``out_dir`` if it is of ``recipe``; an error if it is of another recipe."""
    if not (out_dir / SIDECAR).is_file():
        return None
    sidecar = read_sidecar(out_dir)
    _check_same_recipe(out_dir, sidecar["recipe"], recipe)
    return sidecar


def resume_point(out_dir: Path, recipe: Recipe, resume: bool) -> tuple[dict[str, Any] | None, Any]:
    """Rank 0's view of ``out_dir``, the same on every rank: ``(finished sidecar or None, resume state or
    None)``; without ``resume`` the run there is deleted first. Only rank 0 reads and deletes (the run
    folder need only exist on its node); the others receive what it found."""

    def look() -> tuple[dict[str, Any] | None, Any]:
        if resume:
            existing = _existing_run(out_dir, recipe)
            if existing is not None and is_finished(out_dir, existing):
                return existing, None
        else:
            for name in (STATE, SIDECAR, WEIGHTS):
                (out_dir / name).unlink(missing_ok=True)
        state = read_state(out_dir) if resume else None
        if state is not None and state["recipe"] is not None:
            _check_same_recipe(out_dir, state["recipe"], recipe)
        return None, state

    found: Any = None
    if distributed.is_main():
        try:
            found = look()
        except CnnAliasingError as error:
            found = error  # every rank raises it
    found = distributed.broadcast_object(found)
    if isinstance(found, CnnAliasingError):
        raise found
    return found


def _is_published(out_dir: Path, commit: str) -> bool:
    """Whether the weights and the sidecar in ``out_dir`` are those of the state with token ``commit``."""
    if weights_commit(out_dir) != commit or not (out_dir / SIDECAR).is_file():
        return False
    return read_sidecar(out_dir).get(COMMIT) == commit


def continue_from(out_dir: Path, state: dict[str, Any], sidecar: dict[str, Any], *, repair: bool) -> None:
    """Bring a new ``sidecar`` to where the resume ``state`` stands (epochs done, history, warnings, commit
    token); with ``repair`` (rank 0) rewrite the weights and sidecar in ``out_dir`` if a kill between the
    writes left them behind the state."""
    sidecar.update(
        epochs_done=state["epochs_done"],
        complete=state["epochs_done"] == sidecar["epochs"],
        history=state["history"],
        warnings=state["warnings"],
    )
    sidecar[COMMIT] = state[COMMIT]
    if repair and not _is_published(out_dir, state[COMMIT]):
        publish(out_dir, state["model"], sidecar)
