"""Shared fixtures: the devices to run on (CPU always, CUDA where present)."""

from __future__ import annotations

import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    """Every test taking ``device`` runs once per available device."""
    return torch.device(request.param)
