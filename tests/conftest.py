"""Shared fixtures: the devices to run on (CPU always, CUDA where present); torch's threads shared out
among pytest-xdist workers."""

from __future__ import annotations

import os

import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:  # each worker gets its share of the cores instead of all of them
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _WORKERS))


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    """Every test taking ``device`` runs once per available device."""
    return torch.device(request.param)
