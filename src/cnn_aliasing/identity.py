"""What a state or result file belongs to: fingerprints of a model's weights and of a set of images.

Every resumable state and every result file records these, so a state written for one model or one set of
images is refused for another instead of being silently continued.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().cpu().contiguous()
    if flat.dtype == torch.bfloat16:  # numpy has no bfloat16: hash its bits
        flat = flat.view(torch.int16)
    return flat.numpy().tobytes()


def weights_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over every entry of a state dict: its name, dtype, shape and values (in key order).

    The memory format and device do not change it: a channels_last or CUDA copy hashes the same.
    """
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name]
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


def model_identity(model: nn.Module) -> dict[str, Any]:
    """``{"class", "parameters", "weights_sha256"}`` of a model: its type, its parameter count and the hash
    of its state dict (parameters and buffers)."""
    cls = type(model)
    return {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "parameters": sum(p.numel() for p in model.parameters()),
        "weights_sha256": weights_sha256(model.state_dict()),
    }


def data_sha256(images: torch.Tensor, labels: torch.Tensor) -> str:
    """SHA-256 of a set of images (their values) and their labels (as int64)."""
    digest = hashlib.sha256(_tensor_bytes(images))
    digest.update(_tensor_bytes(labels.to(torch.int64)))
    return digest.hexdigest()
