"""The one model-source resolver behind `--model` and the study's `[[models]]` kinds."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from cnn_aliasing import models
from cnn_aliasing.errors import UnknownNameError
from cnn_aliasing.model_source import ArchSource, LoadOptions, check_architecture

ARGS = {"width": 4, "normalize": "cifar10"}


def test_arch_source_loads_its_checkpoint_in_eval_mode_and_describes_it(tmp_path: Path) -> None:
    torch.manual_seed(1)
    reference = models.create_model("preact_resnet18", **ARGS)
    path = tmp_path / "w.pt"
    torch.save(reference.state_dict(), path)
    module, meta = ArchSource("preact_resnet18", ARGS, path).load(LoadOptions())
    assert not module.training
    for (name, got), want in zip(module.state_dict().items(), reference.state_dict().values(), strict=True):
        assert torch.equal(got, want), name
    assert meta == {
        "model": {"name": "preact_resnet18", "args": ARGS},
        "checkpoint": {"path": str(path.resolve()), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()},
    }


def test_arch_source_without_checkpoint_has_none() -> None:
    _, meta = ArchSource("preact_resnet18", ARGS).load(LoadOptions())
    assert meta["checkpoint"] is None and meta["model"]["args"] == ARGS


def test_unknown_architecture_lists_the_valid_ones() -> None:
    assert check_architecture("wrn_28_10") == "wrn_28_10"
    with pytest.raises(
        UnknownNameError, match=r"^unknown architecture 'vgg'; valid architectures: .*preact_resnet18"
    ):
        ArchSource("vgg").load(LoadOptions())
