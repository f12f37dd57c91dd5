"""Loading and saving model weights without ever running code from a file.

Reads ``.safetensors`` files or torch files with ``torch.load(..., weights_only=True)``; accepts a raw
state dict or one wrapped under "state_dict", "model_state_dict" or "model", with "module." / "model."
prefixes (DataParallel, wrappers) stripped.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase
from pathlib import Path

import safetensors.torch
import torch
from torch import nn

from cnn_aliasing.errors import CheckpointError, first_line
from cnn_aliasing.files import StrPath, atomic_file

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
_PREFIXES = ("module.", "model.")
_MAX_LISTED = 10
# torch's weights-only unpickler messages for pickles that would import or call something
_CODE_NEEDED = re.compile(r"GLOBAL (\S+)|call reduce|create new object|Can only build")


def load_checkpoint(
    model: nn.Module,
    path: StrPath,
    *,
    strict: bool = True,
    item: str | None = None,
    ignore_keys: Sequence[str] = (),
) -> nn.Module:
    """Load the weights in ``path`` into ``model`` (in place) and return ``model``.

    ``item`` picks one entry of a file that stores several (e.g. ``"last"`` of ``{"last", "best"}``);
    keys matching a shell pattern in ``ignore_keys`` are dropped (copies that training code saved beside
    the weights). With ``strict=False`` missing and unexpected keys are allowed; mis-shaped keys never
    are. Nothing is copied into the model unless the whole checkpoint fits.
    """
    path = Path(path)
    stored = _read(path)
    if item is not None:
        if not isinstance(stored, Mapping) or item not in stored:
            found = list(stored)[:_MAX_LISTED] if isinstance(stored, Mapping) else type(stored).__name__
            raise CheckpointError(f"checkpoint {path} has no item {item!r}; it holds {found}")
        stored = stored[item]
    state = _strip_prefixes(_find_state_dict(stored, path), model)
    state = {k: v for k, v in state.items() if not any(fnmatchcase(k, p) for p in ignore_keys)}
    _check_compatible(state, model, path, strict=strict)
    model.load_state_dict(state, strict=strict)
    return model


def save_checkpoint(model: nn.Module, path: StrPath) -> None:
    """Save ``model.state_dict()`` to ``path`` atomically: safetensors for ``.safetensors``, else torch."""
    save_state_dict(cpu_state_dict(model), path)


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A contiguous CPU copy of ``model.state_dict()`` (safetensors refuses tensors in another memory
    format, such as a channels_last model's weights)."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def save_state_dict(
    state: dict[str, torch.Tensor], path: StrPath, *, metadata: dict[str, str] | None = None
) -> None:
    """Save a state dict of contiguous CPU tensors to ``path`` atomically: safetensors for
    ``.safetensors`` (with ``metadata`` in its header), else torch."""
    path = Path(path)
    with atomic_file(path) as tmp:
        if path.suffix == ".safetensors":
            safetensors.torch.save_file(state, tmp, metadata={"format": "pt", **(metadata or {})})
        else:
            torch.save(state, tmp)


def _read(path: Path) -> object:
    """The object stored in ``path``; CheckpointError if it is missing, unreadable or would run code."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    with path.open("rb") as f:
        head = f.read(512).lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")):
        raise CheckpointError(
            f"checkpoint {path} is an HTML/XML page, not weights (a failed or login-walled download?)"
        )
    try:
        if path.suffix == ".safetensors":
            return safetensors.torch.load_file(path, device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        code = _CODE_NEEDED.search(str(err))
        if code is None:
            raise CheckpointError(f"cannot read checkpoint {path}: it is not a valid torch file") from err
        what = f" (it references {code.group(1)})" if code.group(1) else ""
        raise CheckpointError(
            f"refused to load checkpoint {path}: loading it would execute code{what}; a checkpoint must "
            "hold only tensors and plain containers. If you trust the file, load it once in a trusted "
            "environment with torch.load(path, weights_only=False) and re-save just the state dict, e.g. "
            "torch.save(model.state_dict(), 'weights.pt') or safetensors.torch.save_file(...)."
        ) from err
    except Exception as err:
        raise CheckpointError(
            f"cannot read checkpoint {path}: the file is corrupt, truncated or not a checkpoint "
            f"({type(err).__name__}: {first_line(err, 'no details')})"
        ) from err


def _find_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """Unwrap ``{"state_dict": ...}``-style containers until a mapping of names to tensors remains."""
    while isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        wrapper = next((k for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if wrapper is None:
            found = ", ".join(repr(k) for k in list(obj)[:_MAX_LISTED])
            raise CheckpointError(
                f"checkpoint {path} holds no state dict: expected a mapping of names to tensors or one "
                f"under {', '.join(map(repr, _WRAPPER_KEYS))}; its keys are {found}"
            )
        obj = obj[wrapper]
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(
            f"checkpoint {path} holds {type(obj).__name__}, not a non-empty state dict (names to tensors)"
        )
    return {str(k): v for k, v in obj.items()}


def _strip_prefixes(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Strip leading "module." / "model." (repeatedly) shared by all keys, unless the model's keys have it."""
    model_keys = list(model.state_dict())
    while True:
        prefix = next(
            (
                p
                for p in _PREFIXES
                if all(k.startswith(p) for k in state) and not all(k.startswith(p) for k in model_keys)
            ),
            None,
        )
        if prefix is None:
            return state
        state = {k[len(prefix) :]: v for k, v in state.items()}


def _check_compatible(state: dict[str, torch.Tensor], model: nn.Module, path: Path, *, strict: bool) -> None:
    """Raise CheckpointError listing missing, unexpected and mis-shaped keys."""
    expected = model.state_dict()
    # torch fills in a missing BatchNorm counter (checkpoints from before PyTorch 0.4.1 lack it)
    missing = [k for k in expected if k not in state and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    misshaped = [
        f"{k} (checkpoint {tuple(v.shape)}, model {tuple(expected[k].shape)})"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    problems = [_listing("mis-shaped", misshaped)]
    if strict:
        problems += [_listing("missing", missing), _listing("unexpected", unexpected)]
    problems = [p for p in problems if p]
    if problems:
        hint = " (strict=False allows missing and unexpected keys)" if strict and not misshaped else ""
        raise CheckpointError(f"checkpoint {path} does not match the model{hint}:\n" + "\n".join(problems))


def _listing(kind: str, keys: list[str]) -> str:
    if not keys:
        return ""
    shown = ", ".join(keys[:_MAX_LISTED])
    more = f", ... and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else ""
    return f"  {len(keys)} {kind} key{'s' if len(keys) != 1 else ''}: {shown}{more}"
