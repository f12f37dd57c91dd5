"""Clean accuracy: counts, eval mode and inference mode, progress bar, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnn_aliasing.clean_accuracy import AccuracyResult, clean_accuracy
from cnn_aliasing.errors import CnnAliasingError


class ReadsLabel(nn.Module):
    """Predicts the class written into pixel (0, 0, 0) as label / 10; records the modes it ran in."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((self.training, torch.is_inference_mode_enabled()))
        return F.one_hot((x[:, 0, 0, 0] * 10).round().long(), 10).float()


def batches(
    labels: torch.Tensor, predicted: torch.Tensor, size: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    images = torch.zeros(len(labels), 3, 4, 4)
    images[:, 0, 0, 0] = predicted.float() / 10
    return [(images[i : i + size], labels[i : i + size]) for i in range(0, len(labels), size)]


def test_counts_correct_predictions_in_eval_and_inference_mode(device: torch.device) -> None:
    labels = torch.arange(10).repeat(3)  # 30 images
    predicted = labels.clone()
    predicted[::4] = (predicted[::4] + 1) % 10  # 8 wrong
    model = ReadsLabel().to(device).train()
    result = clean_accuracy(model, batches(labels, predicted, 7), progress=False)
    assert result == AccuracyResult(correct=22, total=30)
    assert result.accuracy == pytest.approx(22 / 30)
    assert result.to_dict() == {"correct": 22, "total": 30, "accuracy": result.accuracy}
    assert str(result) == "73.33% (22/30)"
    assert model.seen == [(False, True)] * 5 and model.training and model.bn.training


def test_progress_bar_and_no_images(capsys: pytest.CaptureFixture[str]) -> None:
    labels = torch.arange(4)
    clean_accuracy(ReadsLabel(), batches(labels, labels, 2), total_images=4)
    assert "clean accuracy" in capsys.readouterr().err
    with pytest.raises(CnnAliasingError, match="no images"):
        clean_accuracy(ReadsLabel(), [], progress=False)


def test_the_former_module_name_still_imports_the_same_objects() -> None:
    from cnn_aliasing import clean_accuracy as module
    from cnn_aliasing.evaluation import AccuracyResult as former_result
    from cnn_aliasing.evaluation import clean_accuracy as former

    assert former is module.clean_accuracy and former_result is module.AccuracyResult
