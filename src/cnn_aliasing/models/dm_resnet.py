"""DeepMind-style Wide ResNet and PreAct ResNet (RobustBench's ``DMWideResNet`` and ``DMPreActResNet``).

These are the architectures of Gowal et al. (2020, 2021), Rebuffi et al. (2021) and the models trained with
their code. They differ from the TRADES-lineage WRN and the PreAct ResNet-18 of :mod:`wide_resnet` and
:mod:`preact_resnet` in their state-dict keys, their activation (Swish, i.e. SiLU, in all published
checkpoints), the mean/std normalisation inside the model, and their TensorFlow-style "SAME" padding: a
strided 3x3 convolution has no padding of its own and reads ``F.pad(x, (0, 1, 0, 1))``, so its
full-resolution (stride-1) output is odd-sized (31x31 for a 32x32 input) and its real output is that map
at the even positions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cnn_aliasing.antialias import AntialiasSlot
from cnn_aliasing.errors import UnknownNameError
from cnn_aliasing.models.normalization import NormalizeSpec, make_normalizer, pool_to_features
from cnn_aliasing.models.registry import register_model

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "silu": nn.SiLU}
"""Activation names; DeepMind's "swish" is x * sigmoid(x), which is ``silu``."""


def make_activation(name: str) -> nn.Module:
    """The activation module named ``name`` (a key of :data:`ACTIVATIONS`)."""
    if name not in ACTIVATIONS:
        raise UnknownNameError(
            f"unknown activation {name!r}; valid activations: {', '.join(ACTIVATIONS)} (swish is silu)"
        )
    return ACTIVATIONS[name]()


def same_pad(x: torch.Tensor, stride: int) -> torch.Tensor:
    """TensorFlow "SAME" padding for an unpadded 3x3 convolution: 1 on every side, or (0, 1) for stride 2."""
    return F.pad(x, (1, 1, 1, 1) if stride == 1 else (0, 1, 0, 1))


def _check_stride(stride: int) -> None:
    if stride not in (1, 2):
        raise ValueError(f"DeepMind-style blocks support stride 1 or 2, got {stride}")


class DMWideBlock(nn.Module):
    """Pre-activation WRN block; ``shortcut`` (1x1, strided) exists when the channel count changes.

    conv_0 reads the padded pre-activation; the shortcut conv reads the (unpadded) pre-activation, the
    identity shortcut the raw input. ``conv_0_antialias`` is conv_0's :class:`AntialiasSlot`.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, activation: str) -> None:
        super().__init__()
        _check_stride(stride)
        self.stride = stride
        self.batchnorm_0 = nn.BatchNorm2d(in_planes)
        self.relu_0 = make_activation(activation)
        self.conv_0 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(out_planes)
        self.relu_1 = make_activation(activation)
        self.conv_0_antialias: nn.Module = AntialiasSlot("conv_0")
        self.conv_1 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Conv2d | None = None
        if in_planes != out_planes:
            self.shortcut = nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)
        elif stride != 1:
            raise ValueError("a strided DeepMind WRN block must change the channel count")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu_0(self.batchnorm_0(x))
        out = self.conv_0(same_pad(pre, self.stride))
        out = self.conv_1(self.conv_0_antialias(self.relu_1(self.batchnorm_1(out))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class DMBlockGroup(nn.Module):
    """``block``: a Sequential of ``num_blocks`` WRN blocks, the first with the given stride."""

    def __init__(
        self, num_blocks: int, in_planes: int, out_planes: int, stride: int, activation: str
    ) -> None:
        super().__init__()
        self.block = nn.Sequential(
            *(
                DMWideBlock(
                    in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, activation
                )
                for i in range(num_blocks)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class DMWideResNet(nn.Module):
    """DeepMind WRN-``depth``-``width`` for 32x32 images in [0, 1].

    normalise, init_conv, layer.0..layer.2 (strides 1, 2, 2), activation(batchnorm), 8x8 average pool,
    logits.
    """

    def __init__(
        self,
        depth: int = 28,
        width: int = 10,
        num_classes: int = 10,
        activation: str = "silu",
        normalize: NormalizeSpec = "cifar10",
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0 or width < 1:
            raise ValueError(
                f"DMWideResNet needs depth = 6n + 4 (10, 16, 22, 28, ...) and width >= 1, "
                f"got depth={depth}, width={width}"
            )
        n = (depth - 4) // 6
        channels = [16, 16 * width, 32 * width, 64 * width]
        self.normalize = make_normalizer(normalize)
        self.init_conv = nn.Conv2d(3, channels[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.layer = nn.Sequential(
            *(DMBlockGroup(n, channels[i], channels[i + 1], 1 if i == 0 else 2, activation) for i in range(3))
        )
        self.batchnorm = nn.BatchNorm2d(channels[3])
        self.relu = make_activation(activation)
        self.logits = nn.Linear(channels[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer(self.init_conv(self.normalize(x)))
        out = self.relu(self.batchnorm(out))
        return self.logits(pool_to_features(out, 8, x))


class DMPreActBlock(nn.Module):
    """Pre-activation block; ``shortcut`` is a 3x3 conv (on the padded raw input) when shape changes.

    ``conv_2d_1_antialias`` is conv_2d_1's :class:`AntialiasSlot`.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, activation: str) -> None:
        super().__init__()
        _check_stride(stride)
        self.stride = stride
        self.batchnorm_0 = nn.BatchNorm2d(in_planes)
        self.relu_0 = make_activation(activation)
        self.conv_2d_1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(out_planes)
        self.relu_1 = make_activation(activation)
        self.conv_2d_1_antialias: nn.Module = AntialiasSlot("conv_2d_1")
        self.conv_2d_2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Conv2d | None = None
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Conv2d(
                in_planes, out_planes, kernel_size=3, stride=stride, padding=0, bias=False
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu_0(self.batchnorm_0(x))
        shortcut = x if self.shortcut is None else self.shortcut(same_pad(x, self.stride))
        out = self.conv_2d_1(same_pad(out, self.stride))
        out = self.conv_2d_2(self.conv_2d_1_antialias(self.relu_1(self.batchnorm_1(out))))
        return out + shortcut


class DMPreActResNet(nn.Module):
    """DeepMind PreAct ResNet for 32x32 images in [0, 1].

    normalise, conv_2d, layer_0..layer_3 (strides 1, 2, 2, 2), activation(batchnorm), 4x4 average pool,
    logits. ``width`` is the channel count of the first stage (64 in all published models).
    """

    def __init__(
        self,
        num_blocks: Sequence[int] = (2, 2, 2, 2),
        num_classes: int = 10,
        width: int = 64,
        activation: str = "silu",
        normalize: NormalizeSpec = "cifar10",
    ) -> None:
        super().__init__()
        if len(num_blocks) != 4 or width < 1:
            raise ValueError(f"DMPreActResNet needs 4 block counts and width >= 1, got {num_blocks}, {width}")
        self.normalize = make_normalizer(normalize)
        self.conv_2d = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        in_planes = width
        stages = []
        for i, blocks in enumerate(num_blocks):
            planes = width * 2**i
            stage = []
            for j in range(blocks):
                stage.append(DMPreActBlock(in_planes, planes, 2 if i > 0 and j == 0 else 1, activation))
                in_planes = planes
            stages.append(nn.Sequential(*stage))
        self.layer_0, self.layer_1, self.layer_2, self.layer_3 = stages
        self.batchnorm = nn.BatchNorm2d(in_planes)
        self.relu = make_activation(activation)
        self.logits = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_2d(self.normalize(x))
        out = self.layer_3(self.layer_2(self.layer_1(self.layer_0(out))))
        out = self.relu(self.batchnorm(out))
        return self.logits(pool_to_features(out, 4, x))


@register_model
def dm_wrn_28_10(
    num_classes: int = 10,
    depth: int = 28,
    width: int = 10,
    activation: str = "silu",
    normalize: NormalizeSpec = "cifar10",
) -> nn.Module:
    """DeepMind-style Wide ResNet (RobustBench DMWideResNet keys), WRN-28-10 by default."""
    return DMWideResNet(depth, width, num_classes, activation, normalize)


@register_model
def dm_preact_resnet18(
    num_classes: int = 10, width: int = 64, activation: str = "silu", normalize: NormalizeSpec = "cifar10"
) -> nn.Module:
    """DeepMind-style PreAct ResNet-18 (RobustBench DMPreActResNet keys); width scales all channels."""
    return DMPreActResNet((2, 2, 2, 2), num_classes, width, activation, normalize)
