"""Strided slices whose spatial axes are known, and those whose are not: a LeViT-style subsample of a
channels-last view, a Swin-style patch merge of strided slices on dims 1 and 2, and slices on other axes,
which are refused with a warning (never measured on the wrong axes). Each measured op's AM is checked
against the plain-sum DFT reference of test_probe_any_model on the stand-in's own full-resolution map."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from cnn_aliasing import find_downsamplers, measure
from test_probe_any_model import am_reference, measured_output, unmeasurable_warnings


class LeViTSubsample(nn.Module):
    """LeViT's Subsample: tokens (B, H*W, C) viewed as (B, H, W, C), every second row and column kept."""

    def __init__(self, resolution: tuple[int, int]) -> None:
        super().__init__()
        self.resolution = resolution
        self.proj = nn.Linear(3, 5)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The (B, H*W, C) tokens the subsample sees."""
        return self.proj(x.flatten(2).transpose(1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.tokens(x)
        b, _, c = t.shape
        return t.view(b, *self.resolution, c)[:, ::2, ::2].reshape(b, -1, c)


class SwinPatchMerging(nn.Module):
    """Swin's PatchMerging: the four 2x2 phases of a channels-last (B, H, W, C) map, concatenated."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        x0 = x[:, 0::2, 0::2, :]
        x1 = x[:, 1::2, 0::2, :]
        x2 = x[:, 0::2, 1::2, :]
        x3 = x[:, 1::2, 1::2, :]
        return self.norm(torch.cat([x0, x1, x2, x3], -1))


class WrongAxes(nn.Module):
    """Stepped slices of 4-D tensors whose spatial axes are unknown: channels of an (N, C, H, W) map, and
    rows of a channels-last one without their columns; plus an ordinary spatial slice."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        every_other_channel = x[:, ::2]
        rows_of_channels_last = x.permute(0, 2, 3, 1)[:, ::2]
        spatial = x[..., ::2, ::2]
        return every_other_channel.sum() + rows_of_channels_last.sum() + spatial.sum()


def _images(n: int = 2, h: int = 8, w: int = 8) -> torch.Tensor:
    return torch.rand(n, 3, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def test_levit_subsample_of_a_channels_last_view_is_measured_on_its_spatial_axes() -> None:
    net = LeViTSubsample((8, 4)).double().eval()  # not square, so that H and W cannot be confused
    x = _images(h=8, w=4)
    found = find_downsamplers(net, x)
    assert [(d.kind, d.factor, d.full_shape) for d in found] == [("strided_slice_nhwc", (2, 2), (2, 5, 8, 4))]
    with torch.no_grad():
        expected = net(x)
        full = net.tokens(x).view(2, 8, 4, 5).permute(0, 3, 1, 2)  # (B, C, H, W): the map it subsamples
    report, outputs = measured_output(net, [x])
    torch.testing.assert_close(outputs[0], expected, rtol=0, atol=0)
    per_map = am_reference(full, 2, 2)
    (op,) = report.ops
    assert op.count == per_map.size == 10 and op.full_size == (8, 4)
    assert op.aliasing == pytest.approx(per_map.mean(), rel=1e-9)


def test_swin_patch_merging_measures_each_phase_on_its_offset_map() -> None:
    net = SwinPatchMerging().double().eval()
    x = _images(h=6, w=4)
    found = find_downsamplers(net, x)
    assert [(d.kind, d.factor) for d in found] == [("strided_slice_nhwc", (2, 2))] * 4
    with torch.no_grad():
        expected = net(x)
    report, outputs = measured_output(net, [x])
    torch.testing.assert_close(outputs[0], expected, rtol=0, atol=0)
    for op, (a, b) in zip(report.ops, [(0, 0), (1, 0), (0, 1), (1, 1)], strict=True):
        full = x[:, :, a:, b:]  # the channels-last slice without its steps, as (B, C, H, W) maps
        assert op.full_size == (6 - a, 4 - b)
        assert op.aliasing == pytest.approx(am_reference(full, 2, 2).mean(), rel=1e-9), op.name


def test_slices_whose_spatial_axes_are_unknown_are_refused_with_a_warning() -> None:
    net = WrongAxes().eval()
    x = _images().float()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = find_downsamplers(net, x)
    assert [(d.kind, d.factor) for d in found] == [("strided_slice", (2, 2))]  # only the spatial one
    messages = unmeasurable_warnings(caught)
    assert len(messages) == 2
    assert "steps (2) over dims [1] of a tensor of shape (2, 3, 8, 8)" in messages[0]
    assert "steps (2) over dims [1] of a tensor of shape (2, 8, 8, 3)" in messages[1]
    assert all("spatial axes are not known" in m for m in messages)
    with torch.no_grad():
        expected = net(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = measure(net, [x], progress=False)
        with torch.no_grad():
            assert torch.equal(net(x), expected)
    assert [op.kind for op in report.ops] == ["strided_slice"]
    assert report.ops[0].aliasing == pytest.approx(am_reference(x, 2, 2).mean(), rel=1e-5)
