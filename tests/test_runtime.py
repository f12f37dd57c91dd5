"""runtime.resolve_device (the one place that turns a device setting into a usable torch device) and
errors.first_line."""

from __future__ import annotations

import pytest
import torch

from cnn_aliasing.errors import CnnAliasingError, first_line
from cnn_aliasing.runtime import resolve_device


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


def test_first_line_of_an_error() -> None:
    assert first_line(ValueError("bad value\n  details")) == "bad value"
    assert first_line(ValueError("  ")) == "ValueError"
    assert first_line(OSError(), "no details") == "no details"
