"""runtime: resolve_device (the one place that turns a device setting into a usable torch device, for
measure() and robust_accuracy() too), channels_last, rank-0 progress bars, the input checks
check_unit_range and check_finite_weights, and errors.first_line."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnn_aliasing import distributed
from cnn_aliasing.attacks import robust_accuracy
from cnn_aliasing.errors import CnnAliasingError, first_line
from cnn_aliasing.measurement import measure
from cnn_aliasing.runtime import (
    check_finite_weights,
    check_unit_range,
    is_channels_last,
    on_device,
    progress_bar,
    resolve_device,
)


def test_none_is_cuda_where_available_else_cpu() -> None:
    assert resolve_device(None) == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu") == resolve_device(torch.device("cpu"))


def test_errors_name_the_setting() -> None:
    with pytest.raises(CnnAliasingError, match=r"^--device 'gpu0' is not a device name; e\.g\. cpu"):
        resolve_device("gpu0", option="--device")
    with pytest.raises(CnnAliasingError, match=r"^device 'gpu0' is not a device name"):
        resolve_device("gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(CnnAliasingError, match="CUDA is not available on this machine; use device cpu"):
        resolve_device("cuda")


def _strided_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def _measure_on(device: str) -> object:
    return measure(_strided_model(), [torch.rand(2, 3, 8, 8)], device=device, progress=False)


def _attack_on(device: str) -> object:
    images, labels = torch.rand(2, 3, 8, 8), torch.tensor([0, 1])
    return robust_accuracy(_strided_model(), images, labels, 1 / 255, device=device, progress=False)


BAD_DEVICES = [("gpu0", r"^device 'gpu0' is not a device name; e\.g\. cpu, cuda, cuda:1$")]
if not torch.cuda.is_available():
    BAD_DEVICES.append(("cuda", r"^device cuda: CUDA is not available on this machine; use device cpu$"))


@pytest.mark.parametrize("job", [_measure_on, _attack_on], ids=["measure", "robust_accuracy"])
@pytest.mark.parametrize(("device", "message"), BAD_DEVICES)
def test_measure_and_robust_accuracy_refuse_a_bad_device_with_the_one_error(job, device, message) -> None:
    with pytest.raises(CnnAliasingError, match=message):
        job(device)


def test_is_channels_last_and_on_device_give_a_model_its_layout_back() -> None:
    x = torch.rand(2, 3, 4, 4)
    assert not is_channels_last(x) and is_channels_last(x.contiguous(memory_format=torch.channels_last))
    assert not is_channels_last(torch.rand(2, 1, 4, 4).contiguous(memory_format=torch.channels_last))
    conv = nn.Conv2d(8, 8, 3)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), conv)  # the first weight fits both layouts
    with on_device(model, torch.device("cpu"), channels_last=True):
        assert is_channels_last(conv.weight)
    assert conv.weight.is_contiguous()
    model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    with on_device(model, torch.device("cpu"), channels_last=True):
        pass
    assert is_channels_last(conv.weight)


def test_progress_bars_show_on_rank_0_only_and_not_when_silenced() -> None:
    rank0, rank1 = distributed.Context(0, 2), distributed.Context(1, 2)
    assert not progress_bar(show=True, context=rank0, total=3).disable
    assert progress_bar(show=True, context=rank1, total=3).disable
    assert progress_bar(show=False, context=rank0, total=3).disable
    assert list(progress_bar(range(3), show=False)) == [0, 1, 2]


def test_first_line_of_an_error() -> None:
    assert first_line(ValueError("bad value\n  details")) == "bad value"
    assert first_line(ValueError("  ")) == "ValueError"
    assert first_line(OSError(), "no details") == "no details"


def test_check_unit_range_messages() -> None:
    check_unit_range(torch.tensor([0.0, 1.0]))
    check_unit_range(torch.empty(0, 3))
    with pytest.raises(
        CnnAliasingError, match=r"^images must lie in \[0, 1\] .*got values in \[-0\.5, 0\.25\]$"
    ):
        check_unit_range(torch.tensor([-0.5, 0.25]))
    half = torch.tensor([0.25, float("nan"), float("nan"), float("inf")], dtype=torch.float16)
    with pytest.raises(
        CnnAliasingError,
        match=r"^images of batch 7 .*got 2 NaN and 1 Inf values \(finite values: \[0\.25, 0\.25\]\)$",
    ):
        check_unit_range(half, batch=7)
    with pytest.raises(CnnAliasingError, match=r"got 1 NaN and 0 Inf values \(finite values: none\)$"):
        check_unit_range(torch.tensor([float("nan")]))


def test_check_finite_weights_names_every_bad_tensor() -> None:
    linear, norm = nn.Linear(2, 3), nn.BatchNorm1d(3)
    model = nn.Sequential(linear, norm)
    check_finite_weights(model)  # the integer buffer num_batches_tracked is not looked at
    check_finite_weights(nn.ReLU())
    assert norm.running_mean is not None
    with torch.no_grad():
        linear.bias[1] = float("-inf")
        norm.running_mean[:] = float("nan")
    with pytest.raises(
        CnnAliasingError,
        match=r"^the model's weights hold NaN or Inf: 0\.bias \(0 NaN, 1 Inf of 3 values\), "
        r"1\.running_mean \(3 NaN, 0 Inf of 3 values\); measuring needs finite weights$",
    ):
        check_finite_weights(model)
