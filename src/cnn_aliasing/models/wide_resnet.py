"""Wide ResNet with RobustBench's state-dict keys, forward pass and initialisation (TRADES lineage)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cnn_aliasing.antialias import AntialiasSlot
from cnn_aliasing.models.normalization import NormalizeSpec, make_normalizer, pool_to_features
from cnn_aliasing.models.registry import register_model


class BasicBlock(nn.Module):
    """Pre-activation WRN block; ``convShortcut`` (1x1, strided) exists when the channel count changes.

    As in RobustBench, a block that changes channels feeds ``relu1(bn1(x))`` to both conv1 and the
    shortcut conv; a block that keeps them adds the raw ``x``. ``conv1_antialias`` is conv1's
    :class:`AntialiasSlot`.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU()
        self.conv1_antialias: nn.Module = AntialiasSlot("conv1")
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.dropout = dropout
        self.convShortcut: nn.Conv2d | None = None
        if in_planes != out_planes:
            self.convShortcut = nn.Conv2d(
                in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu1(self.bn1(x))
        out = self.conv1_antialias(self.relu2(self.bn2(self.conv1(pre))))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        out = self.conv2(out)
        return out + (x if self.convShortcut is None else self.convShortcut(pre))


class NetworkBlock(nn.Module):
    """``layer``: a Sequential of ``num_layers`` blocks, the first with the given stride."""

    def __init__(
        self, num_layers: int, in_planes: int, out_planes: int, stride: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *(
                BasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, dropout)
                for i in range(num_layers)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def robustbench_init(model: nn.Module) -> None:
    """RobustBench's WRN init for every layer of ``model``: He-normal convs (fan-out), BN weight 1 and
    bias 0, zero linear biases."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor`` for 32x32 images in [0, 1].

    conv1, block1..block3 (strides 1, 2, 2), relu(bn1), 8x8 average pool, fc. ``sub_block1`` adds a copy
    of block1 that is in the state dict (some RobustBench checkpoints hold it) but unused in forward.
    """

    def __init__(
        self,
        depth: int = 28,
        num_classes: int = 10,
        widen_factor: int = 10,
        sub_block1: bool = False,
        dropout: float = 0.0,
        bias_last: bool = True,
        normalize: NormalizeSpec = None,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0 or widen_factor < 1:
            raise ValueError(
                f"WideResNet needs depth = 6n + 4 (10, 16, 22, 28, 34, ...) and widen_factor >= 1, "
                f"got depth={depth}, widen_factor={widen_factor}"
            )
        n = (depth - 4) // 6
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.normalize = make_normalizer(normalize)
        self.conv1 = nn.Conv2d(3, channels[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, channels[0], channels[1], 1, dropout)
        if sub_block1:
            self.sub_block1 = NetworkBlock(n, channels[0], channels[1], 1, dropout)
        self.block2 = NetworkBlock(n, channels[1], channels[2], 2, dropout)
        self.block3 = NetworkBlock(n, channels[2], channels[3], 2, dropout)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU()
        self.fc = nn.Linear(channels[3], num_classes, bias=bias_last)
        self._init_weights()

    def _init_weights(self) -> None:
        robustbench_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.normalize(x))
        out = self.block3(self.block2(self.block1(out)))
        out = self.relu(self.bn1(out))
        return self.fc(pool_to_features(out, 8, x))


@register_model
def wrn_28_10(
    num_classes: int = 10,
    depth: int = 28,
    widen_factor: int = 10,
    sub_block1: bool = False,
    dropout: float = 0.0,
    bias_last: bool = True,
    normalize: NormalizeSpec = None,
) -> nn.Module:
    """Wide ResNet with RobustBench keys, WRN-28-10 by default (depth, widen_factor adjustable)."""
    return WideResNet(depth, num_classes, widen_factor, sub_block1, dropout, bias_last, normalize)
