"""The one check of an int-or-pair argument (``validation.is_int_pair``) and of a tensor of maps
(``runtime.check_maps``), and the places that use them: the spectral functions' factor, the anti-aliasing
layers' factor and stride, a declared down-sampler's ``downsampling_factor``."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from cnn_aliasing import downsamplers, spectral
from cnn_aliasing.antialias import FLCPool, blur_pool
from cnn_aliasing.errors import CnnAliasingError
from cnn_aliasing.validation import is_int_pair


@pytest.mark.parametrize(
    ("value", "expected"), [(2, (2, 2)), ((3, 4), (3, 4)), ([1, 5], (1, 5)), (torch.Size([2, 3]), (2, 3))]
)
def test_an_int_or_a_pair_becomes_a_pair(value: Any, expected: tuple[int, int]) -> None:
    pair = is_int_pair(1)(value, "stride")
    assert pair == expected and all(type(v) is int for v in pair)


@pytest.mark.parametrize("value", [0, True, (2, True), (2,), (2, 2, 2), (0, 2), 2.0, "22", None])
def test_anything_else_is_an_error_naming_the_argument(value: Any) -> None:
    with pytest.raises(CnnAliasingError, match=r"^stride must be an int or a pair of ints >= 1, got "):
        is_int_pair(1)(value, "stride")


def test_the_bounds_are_inclusive_and_named() -> None:
    assert is_int_pair(0)((0, 3), "padding") == (0, 3)
    assert is_int_pair(1, 32)(32, "factor") == (32, 32)
    with pytest.raises(
        CnnAliasingError, match=r"factor must be an int or a pair of ints in 1\.\.32, got int 33"
    ):
        is_int_pair(1, 32)(33, "factor")


class Declared(nn.Module):
    """A module declaring itself a down-sampler with a given factor."""

    def __init__(self, factor: Any) -> None:
        super().__init__()
        self.downsampling_factor = factor

    def full_resolution_forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_every_user_refuses_what_the_check_refuses() -> None:
    with pytest.raises(CnnAliasingError, match=r"^factor must be an int or a pair of ints in 1\.\.32"):
        spectral.aliasing_per_map(torch.zeros(4, 4), True)
    with pytest.raises(CnnAliasingError, match=r"^factor must be an int or a pair of ints >= 1, got tuple"):
        FLCPool((2, 0))
    with pytest.raises(CnnAliasingError, match=r"^Declared\.downsampling_factor must be an int or a pair"):
        downsamplers.module_may_downsample(Declared((2, 0)))
    assert downsamplers.module_may_downsample(Declared([2, 1]))
    assert not downsamplers.module_may_downsample(Declared(1))


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (torch.zeros(4), r"shape \(\.\.\., H, W\) with H, W > 0, got \(4,\)"),
        (torch.zeros(3, 0, 4), r"shape \(\.\.\., H, W\) with H, W > 0, got \(3, 0, 4\)"),
        ([[0.0]], "got list"),
        (torch.zeros(4, 4, dtype=torch.int64), "real floating-point maps, got dtype torch.int64"),
        (torch.zeros(4, 4, dtype=torch.complex64), "real floating-point maps, got dtype torch.complex64"),
    ],
)
def test_maps_must_be_real_floating_point_and_two_dimensional(x: Any, message: str) -> None:
    with pytest.raises(CnnAliasingError, match=rf"^x: expected .*{message}"):
        spectral.per_map_metrics(x, 2)
    with pytest.raises(CnnAliasingError, match=rf"^blur_pool: expected .*{message}"):
        blur_pool(x)
