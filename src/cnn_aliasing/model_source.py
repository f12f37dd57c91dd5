"""Where a model comes from, and loading it from there: the one resolver of the command line and the study.

A source is a zoo model (:class:`ZooSource`), a registered architecture with arguments and optional
weights (:class:`ArchSource`) or a run of ``cnn-aliasing train`` (:class:`RunSource`). Each loads into an
eval-mode model and its description: ``{"model": ..., "checkpoint": {"path", "sha256"} or None}``.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from cnn_aliasing import models, training, zoo
from cnn_aliasing.errors import UnknownNameError
from cnn_aliasing.provenance import sha256_of

SourceMeta = dict[str, Any]


@dataclass(frozen=True)
class LoadOptions:
    """What loading may need besides the source: the zoo's checkpoint folder, downloading, progress."""

    model_dir: Path = zoo.DEFAULT_MODEL_DIR
    download: bool = False
    progress: bool = True


class ModelSource(abc.ABC):
    """Where one model comes from."""

    @abc.abstractmethod
    def load(self, options: LoadOptions) -> tuple[nn.Module, SourceMeta]:
        """The model in eval mode and its ``{"model": ..., "checkpoint": ...}`` description."""


def checkpoint_meta(path: Path | None) -> dict[str, str] | None:
    """A weights file as recorded in results: its absolute path and sha256 (None: no file)."""
    return None if path is None else {"path": os.fspath(path.resolve()), "sha256": sha256_of(path)}


def check_architecture(name: str) -> str:
    """``name`` if it is a registered architecture; else an error listing the valid ones."""
    if name not in models.list_models():
        raise UnknownNameError(
            f"unknown architecture {name!r}; valid architectures: {', '.join(models.list_models())}"
        )
    return name


@dataclass(frozen=True)
class ZooSource(ModelSource):
    """A zoo model by name (its weights read from, or downloaded into, the options' ``model_dir``)."""

    name: str

    def load(self, options: LoadOptions) -> tuple[nn.Module, SourceMeta]:
        entry = zoo.zoo_entry(self.name)
        module = zoo.load_zoo_model(
            entry.name, options.model_dir, download=options.download, progress=options.progress
        )
        described = {
            "name": entry.name,
            "args": dict(entry.arch_args),
            "arch": entry.arch,
            "zoo": entry.to_dict(),
        }
        path = zoo.checkpoint_path(entry.name, options.model_dir)
        return module, {"model": described, "checkpoint": checkpoint_meta(path)}


@dataclass(frozen=True)
class ArchSource(ModelSource):
    """A registered architecture with factory arguments, its weights from ``checkpoint`` (None: random)."""

    arch: str
    args: Mapping[str, Any] = field(default_factory=dict)
    checkpoint: Path | None = None

    def load(self, options: LoadOptions) -> tuple[nn.Module, SourceMeta]:
        module = models.create_model(check_architecture(self.arch), **self.args)
        if self.checkpoint is not None:
            models.load_checkpoint(module, self.checkpoint)
        described = {"name": self.arch, "args": dict(self.args)}
        return module.eval(), {"model": described, "checkpoint": checkpoint_meta(self.checkpoint)}


@dataclass(frozen=True)
class RunSource(ModelSource):
    """A run of ``cnn-aliasing train``: its folder, or its model.safetensors with model.json beside it."""

    path: Path

    def load(self, options: LoadOptions) -> tuple[nn.Module, SourceMeta]:
        module = training.load_trained_model(self.path)
        sidecar = training.read_sidecar(self.path)
        described = {
            **sidecar["model"],
            "trained": {k: sidecar[k] for k in ("recipe", "objective", "robust", "seed", "epochs_done")},
        }
        return module, {"model": described, "checkpoint": checkpoint_meta(training.weights_file(self.path))}
