"""Zoo checkpoints in RobustBench's layout: finding them, downloading them safely, loading them.

A checkpoint lives at ``<model_dir>/cifar10/Linf/<Name>.pt``, exactly where RobustBench's ``load_model``
puts it, so an existing RobustBench model folder works as it is. A download goes to a private temporary
folder beside the target, is checked to load into the model, and only then renamed into place; a failed,
interrupted, partial or HTML-instead-of-weights download raises and leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from torch import nn

from cnn_aliasing.errors import CheckpointError, first_line
from cnn_aliasing.files import StrPath
from cnn_aliasing.models import load_checkpoint
from cnn_aliasing.zoo.entry import ZooEntry
from cnn_aliasing.zoo.registry import zoo_entry

Downloader = Callable[[str, Path], None]
"""``downloader(gdrive_id, destination)`` writes the Google Drive file to ``destination`` or raises."""

DEFAULT_MODEL_DIR = Path("models")
"""RobustBench's default ``model_dir``."""


def checkpoint_path(name: str, model_dir: StrPath = DEFAULT_MODEL_DIR) -> Path:
    """Where the checkpoint of zoo model ``name`` lives: ``<model_dir>/cifar10/Linf/<name>.pt``."""
    return Path(model_dir).expanduser() / zoo_entry(name).relative_path


def gdown_downloader(progress: bool = True) -> Downloader:
    """A downloader using the ``gdown`` package (the optional ``zoo`` extra), as RobustBench does."""
    try:
        import gdown
    except ImportError:
        raise CheckpointError(
            "downloading zoo checkpoints needs the gdown package: pip install 'cnn-aliasing[zoo]' "
            "(or pip install gdown)"
        ) from None

    def download(gdrive_id: str, destination: Path) -> None:
        gdown.download(id=gdrive_id, output=os.fspath(destination), quiet=not progress)

    return download


def load_weights(model: nn.Module, path: StrPath, entry: ZooEntry) -> nn.Module:
    """Load the checkpoint file ``path`` of ``entry`` into ``model`` (strictly; nothing runs code).

    Picks ``entry.checkpoint_key`` from the file if set and drops the keys matching ``entry.ignore_keys``;
    otherwise exactly :func:`cnn_aliasing.models.load_checkpoint` (prefix stripping, key and shape checks).
    """
    return load_checkpoint(model, path, item=entry.checkpoint_key, ignore_keys=entry.ignore_keys)


def download_checkpoint(
    name: str,
    model_dir: StrPath = DEFAULT_MODEL_DIR,
    *,
    downloader: Downloader | None = None,
    progress: bool = True,
) -> Path:
    """Download the checkpoint of zoo model ``name`` into ``model_dir`` unless it is there; return its path.

    ``downloader`` defaults to :func:`gdown_downloader`. The file is accepted only if it loads into the
    model; otherwise CheckpointError, and nothing is left in ``model_dir``.
    """
    entry = zoo_entry(name)
    path = checkpoint_path(name, model_dir)
    if path.is_file():
        return path
    download = downloader or gdown_downloader(progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", suffix=".download", dir=path.parent))
    source = f"{entry.name} from {entry.download_url}"
    try:
        part = staging / path.name
        try:
            download(entry.gdrive_id, part)
        except Exception as error:
            raise CheckpointError(
                f"download of {source} failed ({type(error).__name__}: {first_line(error, 'no details')}); "
                f"nothing was kept. Try again, or copy the file to {path} from a machine with internet"
            ) from error
        if not part.is_file():
            raise CheckpointError(f"download of {source} wrote no file; nothing was kept")
        try:
            load_weights(entry.build(), part, entry)
        except CheckpointError as error:
            raise CheckpointError(
                f"download of {source} is not a usable checkpoint (an interrupted download, or a web page "
                f"instead of the weights?) and was deleted: {error}"
            ) from error
        os.replace(part, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def load_zoo_model(
    name: str,
    model_dir: StrPath = DEFAULT_MODEL_DIR,
    *,
    download: bool = False,
    downloader: Downloader | None = None,
    progress: bool = True,
) -> nn.Module:
    """Zoo model ``name`` with its RobustBench weights from ``model_dir``, in eval mode.

    A missing checkpoint is downloaded when ``download`` is true (see :func:`download_checkpoint`);
    otherwise CheckpointError names the file looked for and how to get it.
    """
    entry = zoo_entry(name)
    path = checkpoint_path(name, model_dir)
    if not path.is_file():
        if not download:
            raise CheckpointError(
                f"no checkpoint for zoo model {name}: looked for {path} (RobustBench's layout "
                f"<model_dir>/cifar10/Linf/<name>.pt; an existing RobustBench model folder works as "
                f"model_dir). Allow the download (download=True, or --download-weights; needs internet "
                f"and pip install 'cnn-aliasing[zoo]') or copy the file there from {entry.download_url}"
            )
        download_checkpoint(name, model_dir, downloader=downloader, progress=progress)
    return load_weights(entry.build(), path, entry).eval()
