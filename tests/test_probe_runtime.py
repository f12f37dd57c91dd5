"""Ops found while the model runs, where torch.fx cannot trace a module's own forward: a TF-style
"same"-padding conv (an ``if`` on the input's size, then ``F.pad`` and ``F.conv2d``), and a model whose
top-level forward branches on its data and down-samples functionally (``F.max_pool2d`` with indices, a
strided slice) around children that are module ops and traced graphs. Every op is found once, under the
names tracing would give, its AM equals the plain-sum DFT reference on the stand-in's own full-resolution
output, and the outputs are unchanged."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnn_aliasing import find_downsamplers
from test_probe_any_model import am_reference, measured_output


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF's "SAME" padding of one axis: (before, after)."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """timm's Conv2dSame: the padding depends on the input's size, behind an ``if`` fx cannot trace."""

    def pads(self, x: torch.Tensor) -> tuple[int, int, int, int]:
        top, bottom = same_padding(x.shape[-2], self.kernel_size[0], self.stride[0])
        left, right = same_padding(x.shape[-1], self.kernel_size[1], self.stride[1])
        return left, right, top, bottom

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % self.stride[1]:  # a branch on the input's size
            x = F.pad(x, self.pads(x))
        else:
            x = F.pad(x, self.pads(x))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class EfficientNetLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = Conv2dSame(3, 8, 3, stride=2)
        self.dw = Conv2dSame(8, 8, 5, stride=2, groups=8)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dw(F.relu(self.stem(x))).mean(dim=(-2, -1)))


class Pooled(nn.Module):
    """A traceable child with its own functional down-sampling."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 2)


class DataDependent(nn.Module):
    """Untraceable at the top: a branch on the data, functional pooling with indices and a strided slice
    in its own code, around a module op (a strided conv) and a traced child (``pooled``)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.pooled = Pooled()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if x.sum() > 0:
            x = x + 1
        values, indices = F.max_pool2d(x, 2, return_indices=True)
        y = self.pooled(values)[..., ::2, ::2]
        return y.sum(dim=(-2, -1)) + indices.float().mean()


def _images(h: int = 17, w: int = 15) -> torch.Tensor:
    return torch.rand(2, 3, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(3))


def test_same_padding_convs_behind_a_size_branch_are_found_and_measured() -> None:
    torch.manual_seed(0)
    net = EfficientNetLike().double().eval()
    x = _images()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is left out: no warning
        found = find_downsamplers(net, x)
    assert [(d.name, d.kind, d.factor) for d in found] == [
        ("stem:conv2d", "conv2d", (2, 2)),
        ("dw:conv2d", "conv2d", (2, 2)),
    ]
    with torch.no_grad():
        expected = net(x)
        stem_in = F.pad(x, net.stem.pads(x))
        stem_full = F.conv2d(stem_in, net.stem.weight, net.stem.bias)  # stride 1, everything else the same
        dw_x = F.relu(net.stem(x))
        dw_full = F.conv2d(F.pad(dw_x, net.dw.pads(dw_x)), net.dw.weight, net.dw.bias, groups=8)
    report, outputs = measured_output(net, [x])
    torch.testing.assert_close(outputs[0], expected, rtol=1e-12, atol=1e-12)
    for op, full in zip(report.ops, [stem_full, dw_full], strict=True):
        per_map = am_reference(full, 2, 2)
        assert op.count == per_map.size and op.full_size == tuple(full.shape[-2:])
        assert op.aliasing == pytest.approx(per_map.mean(), rel=1e-9), op.name


def test_an_untraceable_forward_finds_its_own_calls_once_beside_module_ops_and_traced_children() -> None:
    torch.manual_seed(0)
    net = DataDependent().double().eval()
    x = _images(16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        found = find_downsamplers(net, x)
    assert [(d.name, d.kind, d.factor) for d in found] == [
        ("conv", "conv2d", (2, 2)),
        ("max_pool2d", "max_pool2d", (2, 2)),
        ("pooled:avg_pool2d", "avg_pool2d", (2, 2)),
        ("getitem", "strided_slice", (2, 2)),
    ]
    with torch.no_grad():
        expected = net(x)
        conv = net.conv(x) + 1 if net.conv(x).sum() > 0 else net.conv(x)
        values = F.max_pool2d(conv, 2)
        fulls = {
            "conv": F.conv2d(x, net.conv.weight, net.conv.bias, 1, 1),
            "max_pool2d": F.max_pool2d(conv, 2, stride=1),
            "pooled:avg_pool2d": F.avg_pool2d(values, 2, stride=1),
            "getitem": F.avg_pool2d(values, 2),
        }
    report, outputs = measured_output(net, [x])
    torch.testing.assert_close(outputs[0], expected, rtol=1e-12, atol=1e-12)
    assert [op.name for op in report.ops] == list(fulls)
    for op in report.ops:
        per_map = am_reference(fulls[op.name], 2, 2)
        assert op.count == per_map.size
        assert op.aliasing == pytest.approx(per_map.mean(), rel=1e-9), op.name
    excluded, _ = measured_output(net, [x], exclude=["max_pool2d", "getitem"])
    assert [op.name for op in excluded.ops] == ["conv", "pooled:avg_pool2d"]
