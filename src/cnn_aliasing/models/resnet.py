"""The plain (post-activation) ResNet with RobustBench's state-dict keys and forward (``ResNet18`` there)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cnn_aliasing.antialias import AntialiasSlot
from cnn_aliasing.models.normalization import NormalizeSpec, make_normalizer, pool_to_features
from cnn_aliasing.models.registry import register_model


class ResNetBlock(nn.Module):
    """Basic block: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    ``shortcut`` is empty (the identity) or a strided 1x1 conv and BatchNorm (``shortcut.0``,
    ``shortcut.1``) when the stride or channel count changes. ``conv1_antialias`` is conv1's
    :class:`AntialiasSlot`.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv1_antialias: nn.Module = AntialiasSlot("conv1")
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1_antialias(F.relu(self.bn1(self.conv1(x))))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet for 32x32 images in [0, 1]: relu(bn1(conv1)), layer1..layer4 (strides 1, 2, 2, 2), linear.

    ``width`` is the channel count of conv1 and layer1; layer2..layer4 have 2, 4 and 8 times as many.
    """

    def __init__(
        self,
        num_blocks: Sequence[int] = (2, 2, 2, 2),
        num_classes: int = 10,
        width: int = 64,
        normalize: NormalizeSpec = None,
    ) -> None:
        super().__init__()
        if len(num_blocks) != 4 or width < 1:
            raise ValueError(f"ResNet needs 4 block counts and width >= 1, got {num_blocks}, {width}")
        self.normalize = make_normalizer(normalize)
        self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        in_planes = width
        stages = []
        for i, blocks in enumerate(num_blocks):
            planes = width * 2**i
            stage = []
            for j in range(blocks):
                stage.append(ResNetBlock(in_planes, planes, 2 if i > 0 and j == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(pool_to_features(out, 4, x))


@register_model
def resnet18(num_classes: int = 10, width: int = 64, normalize: NormalizeSpec = None) -> nn.Module:
    """ResNet-18 (post-activation) with RobustBench keys; width scales all channels (64 = full size)."""
    return ResNet((2, 2, 2, 2), num_classes, width, normalize)
