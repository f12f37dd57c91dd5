"""Accuracy of a classifier over a stream of labelled batches (clean accuracy; attacks add theirs beside)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cnn_aliasing import distributed
from cnn_aliasing.errors import CnnAliasingError
from cnn_aliasing.runtime import evaluation_mode, model_device, model_dtype, progress_bar, run_model


@dataclass(frozen=True)
class AccuracyResult:
    """How many of ``total`` images a model classified correctly."""

    correct: int
    total: int

    @property
    def accuracy(self) -> float:
        """The fraction classified correctly, in [0, 1]."""
        return self.correct / self.total

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: correct, total, accuracy."""
        return {"correct": self.correct, "total": self.total, "accuracy": self.accuracy}

    def __str__(self) -> str:
        return f"{100 * self.accuracy:.2f}% ({self.correct}/{self.total})"


def clean_accuracy(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    progress: bool = True,
    total_images: int | None = None,
    across_ranks: bool = False,
) -> AccuracyResult:
    """Top-1 accuracy of ``model`` on (images in [0, 1], labels) batches, on the model's device.

    Runs in eval mode under ``torch.inference_mode`` and gives every module its training flag back.
    ``total_images`` sizes the progress bar when ``batches`` has no length. ``across_ranks``: under
    ``torchrun``, ``batches`` are this rank's share of the images (it may have none) and the counts are
    summed over the ranks, so every rank returns the accuracy of all images; only rank 0 shows progress.
    """
    context = distributed.current() if across_ranks else distributed.SINGLE
    device, dtype = model_device(model), model_dtype(model)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    total = 0
    with (
        progress_bar(
            show=progress, context=context, total=total_images, desc="clean accuracy", unit="img", leave=False
        ) as bar,
        torch.inference_mode(),
        evaluation_mode(model),
    ):
        for images, labels in batches:
            logits = run_model(model, images.to(device, dtype=dtype))
            correct += (logits.argmax(dim=1) == labels.to(device)).sum()  # no host sync per batch
            total += len(labels)
            bar.update(len(labels))
    if context.world_size > 1:
        counts = distributed.all_reduce_sum(torch.stack([correct.cpu(), torch.tensor(total)]))
        correct, total = counts[0], int(counts[1])
    if total == 0:
        raise CnnAliasingError("clean_accuracy() got no images: the batches iterable was empty")
    return AccuracyResult(int(correct), total)
