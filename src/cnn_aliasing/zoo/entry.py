"""A zoo entry: a RobustBench model as a registered architecture, its reported accuracies, its source."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from types import MappingProxyType
from typing import Any, Literal, get_args

from torch import nn

from cnn_aliasing.models import create_model

DATASET = "cifar10"
THREAT_MODEL = "Linf"
EPS = "8/255"
Training = Literal["robust", "standard"]
"""How a zoo model was trained: adversarially (``robust``) or not (``standard``)."""
TRAININGS: tuple[Training, ...] = get_args(Training)
ROBUST: Training = "robust"
STANDARD: Training = "standard"
WRN_28_10, PREACT_RESNET_18, RESNET_18 = "wrn-28-10", "preact-resnet-18", "resnet-18"


@dataclass(frozen=True)
class Paper:
    """Where a zoo model comes from."""

    title: str
    venue: str
    url: str


@dataclass(frozen=True)
class ZooEntry:
    """One zoo model: how to build it, what RobustBench reports for it, and where its weights are.

    ``checkpoint_key`` names the item of the checkpoint file that holds the state dict (when the file holds
    several, e.g. ``{"last": ..., "best": ...}``); ``ignore_keys`` are shell patterns of checkpoint keys
    that are not weights of the model (aliases saved by the training code) and are dropped when loading.
    """

    name: str
    arch: str
    arch_args: Mapping[str, Any]
    family: str
    training: Training
    clean_acc: float
    autoattack_acc: float
    extra_data: bool
    paper: Paper
    gdrive_id: str
    checkpoint_key: str | None = None
    ignore_keys: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "arch_args", MappingProxyType(dict(self.arch_args)))  # read-only

    def __hash__(self) -> int:  # entries are unique by name (the generated hash fails on arch_args)
        return hash(self.name)

    @property
    def tags(self) -> tuple[str, ...]:
        """Robust or standard, the architecture family, and the registered architecture name."""
        return (self.training, self.family, self.arch)

    @property
    def normalization(self) -> str:
        """The input normalisation inside the model (a preset name, or "none")."""
        return str(self.arch_args.get("normalize") or "none")

    @property
    def relative_path(self) -> PurePosixPath:
        """The checkpoint's place in RobustBench's layout: ``cifar10/Linf/<name>.pt``."""
        return PurePosixPath(DATASET, THREAT_MODEL, f"{self.name}.pt")

    @property
    def download_url(self) -> str:
        """The checkpoint's Google Drive download address."""
        return f"https://drive.google.com/uc?id={self.gdrive_id}"

    def build(self) -> nn.Module:
        """The architecture with its arguments and freshly initialised weights."""
        return create_model(self.arch, **self.arch_args)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description (architecture, reported accuracies, paper, checkpoint source)."""
        return {
            "name": self.name,
            "arch": self.arch,
            "arch_args": dict(self.arch_args),
            "tags": list(self.tags),
            "dataset": DATASET,
            "threat_model": THREAT_MODEL,
            "eps": EPS,
            "reported": {"clean_acc": self.clean_acc, "autoattack_acc": self.autoattack_acc},
            "extra_data": self.extra_data,
            "paper": {"title": self.paper.title, "venue": self.paper.venue, "url": self.paper.url},
            "download_url": self.download_url,
        }
