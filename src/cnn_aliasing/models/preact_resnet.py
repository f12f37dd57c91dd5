"""PreAct ResNet with RobustBench's state-dict keys and forward pass (``PreActResNet18`` there)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cnn_aliasing.antialias import AntialiasSlot
from cnn_aliasing.models.normalization import NormalizeSpec, make_normalizer, pool_to_features
from cnn_aliasing.models.registry import register_model


class PreActBlock(nn.Module):
    """Pre-activation basic block: ``conv2(relu(bn2(conv1(relu(bn1(x)))))) + shortcut``.

    The shortcut is the identity, or a strided 1x1 conv (``shortcut.0``) when the stride or channel count
    changes. That conv reads the raw input ``x`` (RobustBench ``PreActBlock``) or, with
    ``shortcut_from_preact=True``, the pre-activated ``relu(bn1(x))`` (RobustBench ``PreActBlockV2``).
    ``conv1_antialias`` is conv1's :class:`AntialiasSlot`.
    """

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, shortcut_from_preact: bool = False
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.conv1_antialias: nn.Module = AntialiasSlot("conv1")
        self.shortcut_from_preact = shortcut_from_preact
        self.shortcut: nn.Sequential | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        if self.shortcut is None:
            shortcut = x
        else:
            shortcut = self.shortcut(out if self.shortcut_from_preact else x)
        out = self.conv1(out)
        out = self.conv2(self.conv1_antialias(F.relu(self.bn2(out))))
        return out + shortcut


class PreActResNet(nn.Module):
    """PreAct ResNet for 32x32 images in [0, 1]: conv1, layer1..layer4 (strides 1, 2, 2, 2), linear.

    ``width`` is the channel count of conv1 and layer1; layer2..layer4 have 2, 4 and 8 times as many.
    ``bn_before_fc`` adds ``relu(bn(.))`` before the final 4x4 average pool.
    """

    def __init__(
        self,
        num_blocks: Sequence[int] = (2, 2, 2, 2),
        num_classes: int = 10,
        width: int = 64,
        bn_before_fc: bool = False,
        shortcut_from_preact: bool = False,
        normalize: NormalizeSpec = None,
    ) -> None:
        super().__init__()
        if len(num_blocks) != 4 or width < 1:
            raise ValueError(f"PreActResNet needs 4 block counts and width >= 1, got {num_blocks}, {width}")
        self.normalize = make_normalizer(normalize)
        self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        in_planes = width
        stages = []
        for i, blocks in enumerate(num_blocks):
            planes = width * 2**i
            strides = [1 if i == 0 else 2] + [1] * (blocks - 1)
            stage = []
            for stride in strides:
                stage.append(PreActBlock(in_planes, planes, stride, shortcut_from_preact))
                in_planes = planes
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn = nn.BatchNorm2d(in_planes) if bn_before_fc else None
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.normalize(x))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        if self.bn is not None:
            out = F.relu(self.bn(out))
        return self.linear(pool_to_features(out, 4, x))


@register_model
def preact_resnet18(
    num_classes: int = 10,
    width: int = 64,
    bn_before_fc: bool = False,
    shortcut_from_preact: bool = False,
    normalize: NormalizeSpec = None,
) -> nn.Module:
    """PreAct ResNet-18 with RobustBench keys; width scales all channels (64 = full size)."""
    return PreActResNet((2, 2, 2, 2), num_classes, width, bn_before_fc, shortcut_from_preact, normalize)
