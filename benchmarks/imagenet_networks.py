"""Stand-ins for six ImageNet networks and a ViT-B/16 patch embedding, in plain ``torch.nn``.

timm and torchvision do not import beside the project's CPU torch, so :mod:`bench_measure_imagenet` times
``measure`` on these instead: random weights (initialised as torchvision does, so activations stay of
order one and no denormals slow either pass), eval mode, and the real models' layer structure, widths,
depths and down-sampling ops (kind, kernel, stride, padding, groups, channels), so that a forward pass
costs what the real one does and the probe finds the same strided ops. Module names follow the real
models' (``layer2.0.conv2``, ``features.2.0.block.1.0``, ``s1.b1.downsample.conv`` ...), so the op names
in a report are those the real model gives. Left out, as they cost nothing in eval mode: dropout and
stochastic depth.

``NETWORKS`` maps each name to its factory; each factory's docstring names the real model and the source
of its configuration.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

Activation = Callable[[], nn.Module]


def conv_norm_act(
    in_channels: int,
    out_channels: int,
    kernel: int,
    stride: int = 1,
    groups: int = 1,
    activation: Activation | None = nn.ReLU,
) -> nn.Sequential:
    """torchvision's ``Conv2dNormActivation`` with batch norm: conv (padding (k - 1) // 2, no bias), BN,
    and the activation (none when None); children named 0, 1, 2 as there."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
    ]
    if activation is not None:
        layers.append(activation())
    return nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation: the maps' means, a 1x1 conv down to ``squeeze`` channels, the activation, a
    1x1 conv back and the gate, which scales the maps (torchvision's ``SqueezeExcitation``, timm's
    ``SEModule``: the same layers, named fc1 and fc2 in both)."""

    def __init__(
        self, channels: int, squeeze: int, activation: Activation = nn.ReLU, gate: Activation = nn.Sigmoid
    ) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.activation = activation()
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.scale_activation = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc2(self.activation(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * self.scale_activation(scale)


class Classifier(nn.Module):
    """Global average pooling, flattening and the network's classifier layers."""

    def __init__(self, *layers: nn.Module) -> None:
        super().__init__()
        self.head = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.mean((2, 3)))


def init_weights(model: nn.Module, size: int = 224) -> nn.Module:
    """torchvision's initialisation (convolutions Kaiming-normal, fan out; linear layers N(0, 0.01); norms
    weight 1, bias 0; biases 0), then each batch norm's running statistics set to those of its input on 4
    random images of ``size`` x ``size``, so activations stay of order one as in a trained network; returned
    in eval mode."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
        elif isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
            nn.init.ones_(m.weight)
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.LayerNorm)) and m.bias is not None:
            nn.init.zeros_(m.bias)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average: after one batch, that batch's statistics
    with torch.no_grad():
        model.train()(torch.rand(4, 3, size, size))
    for norm in norms:
        norm.momentum = 0.1
    return model.eval()


# ---- ResNet-50 ------------------------------------------------------------------------------------------


class ResNetBottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck: 1x1, 3x3 (with the stride), 1x1 to 4x the width, BN after
    each; the shortcut a 1x1 conv with the stride and BN where the shape changes."""

    def __init__(self, in_channels: int, width: int, stride: int) -> None:
        super().__init__()
        out = 4 * width
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out, 1, stride, bias=False), nn.BatchNorm2d(out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


def resnet_stage(in_channels: int, width: int, depth: int, stride: int) -> nn.Sequential:
    """``depth`` bottlenecks of ``width``, the first with the stride."""
    blocks = [ResNetBottleneck(in_channels, width, stride)]
    blocks += [ResNetBottleneck(4 * width, width, 1) for _ in range(depth - 1)]
    return nn.Sequential(*blocks)


class ResNet50(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = resnet_stage(64, 64, 3, 1)
        self.layer2 = resnet_stage(256, 128, 4, 2)
        self.layer3 = resnet_stage(512, 256, 6, 2)
        self.layer4 = resnet_stage(1024, 512, 3, 2)
        self.fc = Classifier(nn.Linear(2048, 1000))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x)


def resnet50() -> nn.Module:
    """ResNet-50, torchvision ``resnet50`` (torchvision/models/resnet.py; v1.5: the stride on the 3x3)."""
    return init_weights(ResNet50())


# ---- EfficientNet-B0 and MobileNetV3-Large: inverted residuals ------------------------------------------


@dataclass(frozen=True)
class InvertedResidualConfig:
    """One inverted residual block: kernel, expanded and output channels, SE, activation and stride."""

    kernel: int
    expanded: int
    out: int
    squeeze: int  # SE channels; 0: no SE
    activation: Activation
    stride: int


class InvertedResidual(nn.Module):
    """MBConv / MobileNetV3 block as torchvision builds it: ``block`` = [1x1 expansion (where it widens)],
    depthwise k x k with the stride, [SE], 1x1 projection without activation; a residual where the shape
    is kept."""

    def __init__(self, in_channels: int, cfg: InvertedResidualConfig, gate: Activation) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if cfg.expanded != in_channels:
            layers.append(conv_norm_act(in_channels, cfg.expanded, 1, activation=cfg.activation))
        layers.append(
            conv_norm_act(
                cfg.expanded, cfg.expanded, cfg.kernel, cfg.stride, cfg.expanded, activation=cfg.activation
            )
        )
        if cfg.squeeze:
            se_activation = nn.SiLU if cfg.activation is nn.SiLU else nn.ReLU
            layers.append(SqueezeExcitation(cfg.expanded, cfg.squeeze, se_activation, gate))
        layers.append(conv_norm_act(cfg.expanded, cfg.out, 1, activation=None))
        self.block = nn.Sequential(*layers)
        self.residual = cfg.stride == 1 and in_channels == cfg.out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.residual else out


def inverted_residuals(
    in_channels: int, configs: Sequence[InvertedResidualConfig], gate: Activation
) -> list[InvertedResidual]:
    """The blocks of ``configs`` in turn, each one's input the previous one's output."""
    blocks = []
    for cfg in configs:
        blocks.append(InvertedResidual(in_channels, cfg, gate))
        in_channels = cfg.out
    return blocks


class FeaturesClassifier(nn.Module):
    """torchvision's layout for EfficientNet, MobileNetV3 and ConvNeXt: ``features`` then ``classifier``
    (after global average pooling)."""

    def __init__(self, features: Sequence[nn.Module], classifier: nn.Module) -> None:
        super().__init__()
        self.features = nn.Sequential(*features)
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


# (expand ratio, kernel, stride, output channels, blocks): torchvision/models/efficientnet.py, B0
EFFICIENTNET_B0_STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)


def efficientnet_b0() -> nn.Module:
    """EfficientNet-B0, torchvision ``efficientnet_b0`` (= timm ``efficientnet_b0``'s layers; the stage
    table of torchvision/models/efficientnet.py: SE on every block, squeezing to 1/4 of the block's input
    channels, SiLU)."""
    features: list[nn.Module] = [conv_norm_act(3, 32, 3, 2, activation=nn.SiLU)]
    channels = 32
    for expand, kernel, stride, out, blocks in EFFICIENTNET_B0_STAGES:
        configs = []
        for i in range(blocks):
            block_in = channels if i == 0 else out
            configs.append(
                InvertedResidualConfig(
                    kernel, block_in * expand, out, max(1, block_in // 4), nn.SiLU, stride if i == 0 else 1
                )
            )
        features.append(nn.Sequential(*inverted_residuals(channels, configs, nn.Sigmoid)))
        channels = out
    features.append(conv_norm_act(320, 1280, 1, activation=nn.SiLU))
    return init_weights(FeaturesClassifier(features, Classifier(nn.Linear(1280, 1000))))


def make_divisible(value: float, divisor: int = 8) -> int:
    """torchvision's ``_make_divisible``: the nearest multiple of ``divisor``, not below 90% of ``value``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


# (kernel, expanded, output, SE, hard-swish, stride): torchvision/models/mobilenetv3.py, "mobilenet_v3_large"
MOBILENET_V3_LARGE_BLOCKS = (
    (3, 16, 16, False, False, 1),
    (3, 64, 24, False, False, 2),
    (3, 72, 24, False, False, 1),
    (5, 72, 40, True, False, 2),
    (5, 120, 40, True, False, 1),
    (5, 120, 40, True, False, 1),
    (3, 240, 80, False, True, 2),
    (3, 200, 80, False, True, 1),
    (3, 184, 80, False, True, 1),
    (3, 184, 80, False, True, 1),
    (3, 480, 112, True, True, 1),
    (3, 672, 112, True, True, 1),
    (5, 672, 160, True, True, 2),
    (5, 960, 160, True, True, 1),
    (5, 960, 160, True, True, 1),
)


def mobilenet_v3_large() -> nn.Module:
    """MobileNetV3-Large, torchvision ``mobilenet_v3_large`` (its config table in
    torchvision/models/mobilenetv3.py: SE squeezing to make_divisible(expanded / 4) with a hard sigmoid,
    ReLU or hard-swish; one block per torchvision ``features`` entry)."""
    blocks = [
        InvertedResidualConfig(
            kernel,
            expanded,
            out,
            make_divisible(expanded / 4) if se else 0,
            nn.Hardswish if hard_swish else nn.ReLU,
            stride,
        )
        for kernel, expanded, out, se, hard_swish, stride in MOBILENET_V3_LARGE_BLOCKS
    ]
    features = [
        conv_norm_act(3, 16, 3, 2, activation=nn.Hardswish),
        *inverted_residuals(16, blocks, nn.Hardsigmoid),
        conv_norm_act(160, 960, 1, activation=nn.Hardswish),
    ]
    classifier = Classifier(nn.Linear(960, 1280), nn.Hardswish(), nn.Linear(1280, 1000))
    return init_weights(FeaturesClassifier(features, classifier))


# ---- ConvNeXt-T -----------------------------------------------------------------------------------------


class LayerNorm2d(nn.LayerNorm):
    """Layer norm over the channels of (N, C, H, W) maps, as torchvision's: permuted to channels last."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """torchvision's ``CNBlock``: 7x7 depthwise conv, then channels last: LayerNorm, Linear to 4x, GELU,
    Linear back; layer scale (1e-6) and the residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.layer_scale = nn.Parameter(torch.full((dim, 1, 1), 1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.mlp(self.norm(self.dwconv(x).permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        return x + self.layer_scale * out


def convnext_tiny() -> nn.Module:
    """ConvNeXt-T, torchvision ``convnext_tiny`` (torchvision/models/convnext.py: 4x4/4 patchify stem with
    LayerNorm2d, depths 3-3-9-3, dims 96-192-384-768, each downsampling LayerNorm2d + 2x2/2 conv)."""
    dims, depths = (96, 192, 384, 768), (3, 3, 9, 3)
    features: list[nn.Module] = [nn.Sequential(nn.Conv2d(3, 96, 4, 4), LayerNorm2d(96, eps=1e-6))]
    for i, (dim, depth) in enumerate(zip(dims, depths, strict=True)):
        features.append(nn.Sequential(*(ConvNeXtBlock(dim) for _ in range(depth))))
        if i + 1 < len(dims):
            features.append(nn.Sequential(LayerNorm2d(dim, eps=1e-6), nn.Conv2d(dim, dims[i + 1], 2, 2)))
    classifier = Classifier(nn.LayerNorm(768, eps=1e-6), nn.Linear(768, 1000))
    return init_weights(FeaturesClassifier(features, classifier))


# ---- DenseNet-121 ---------------------------------------------------------------------------------------


class DenseLayer(nn.Module):
    """torchvision's ``_DenseLayer``: BN, ReLU, 1x1 conv to bn_size x growth, BN, ReLU, 3x3 conv to growth,
    on the concatenation of every earlier feature map of the block."""

    def __init__(self, in_channels: int, growth: int, bn_size: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_channels, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = self.conv1(self.relu1(self.norm1(torch.cat(features, 1))))
        return self.conv2(self.relu2(self.norm2(x)))


class DenseBlock(nn.ModuleDict):
    """torchvision's ``_DenseBlock``: each layer adds ``growth`` channels to the concatenation."""

    def __init__(self, layers: int, in_channels: int, growth: int, bn_size: int) -> None:
        super().__init__(
            {
                f"denselayer{i + 1}": DenseLayer(in_channels + i * growth, growth, bn_size)
                for i in range(layers)
            }
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class DenseNet121(nn.Module):
    def __init__(self, growth: int = 32, blocks: Sequence[int] = (6, 12, 24, 16), bn_size: int = 4) -> None:
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            conv0=nn.Conv2d(3, 64, 7, 2, 3, bias=False),
            norm0=nn.BatchNorm2d(64),
            relu0=nn.ReLU(inplace=True),
            pool0=nn.MaxPool2d(3, 2, 1),
        )
        channels = 64
        for i, n in enumerate(blocks, start=1):
            layers[f"denseblock{i}"] = DenseBlock(n, channels, growth, bn_size)
            channels += n * growth
            if i < len(blocks):
                layers[f"transition{i}"] = nn.Sequential(
                    OrderedDict(
                        norm=nn.BatchNorm2d(channels),
                        relu=nn.ReLU(inplace=True),
                        conv=nn.Conv2d(channels, channels // 2, 1, bias=False),
                        pool=nn.AvgPool2d(2, 2),
                    )
                )
                channels //= 2
        layers["norm5"] = nn.BatchNorm2d(channels)
        self.features = nn.Sequential(layers)
        self.classifier = Classifier(nn.Linear(channels, 1000))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(F.relu(self.features(x)))


def densenet121() -> nn.Module:
    """DenseNet-121, torchvision ``densenet121`` (torchvision/models/densenet.py: growth 32, blocks
    6-12-24-16, bn_size 4, transitions BN-ReLU-1x1 conv halving the channels, 2x2/2 average pooling)."""
    return init_weights(DenseNet121())


# ---- RegNetY-200MF --------------------------------------------------------------------------------------


class ConvNormAct(nn.Sequential):
    """timm's ``ConvNormAct`` with batch norm: children named conv, bn and (where it has one) act."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        stride: int = 1,
        groups: int = 1,
        act: bool = True,
    ) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            conv=nn.Conv2d(
                in_channels, out_channels, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False
            ),
            bn=nn.BatchNorm2d(out_channels),
        )
        if act:
            layers["act"] = nn.ReLU(inplace=True)
        super().__init__(layers)


class RegNetBottleneck(nn.Module):
    """timm's RegNet ``Bottleneck`` (bottleneck ratio 1): 1x1, grouped 3x3 with the stride (group width
    ``group_width``), SE squeezing to round(in x se_ratio), 1x1 without activation; shortcut a 1x1 conv
    with the stride and BN where the shape changes; ReLU after the sum."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, group_width: int, se_ratio: float
    ) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(in_channels, out_channels, 1)
        self.conv2 = ConvNormAct(out_channels, out_channels, 3, stride, out_channels // group_width)
        self.se = SqueezeExcitation(out_channels, round(in_channels * se_ratio))
        self.conv3 = ConvNormAct(out_channels, out_channels, 1, act=False)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.downsample = ConvNormAct(in_channels, out_channels, 1, stride, act=False)
        self.act3 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv3(self.se(self.conv2(self.conv1(x))))
        return self.act3(out + self.downsample(x))


def regnet_stage(
    in_channels: int, width: int, depth: int, group_width: int, se_ratio: float
) -> nn.Sequential:
    """timm's ``RegStage``: blocks b1, b2, ... of ``width``, the first with stride 2."""
    blocks: OrderedDict[str, nn.Module] = OrderedDict()
    for j in range(depth):
        block_in, stride = (in_channels, 2) if j == 0 else (width, 1)
        blocks[f"b{j + 1}"] = RegNetBottleneck(block_in, width, stride, group_width, se_ratio)
    return nn.Sequential(blocks)


class RegNetY(nn.Module):
    """timm's ``RegNet`` for a RegNet-Y: stem, stages s1 to s4, head (no final conv)."""

    def __init__(
        self, widths: Sequence[int], depths: Sequence[int], group_width: int, se_ratio: float = 0.25
    ) -> None:
        super().__init__()
        self.stem = ConvNormAct(3, 32, 3, 2)
        ins = (32, *widths[:-1])
        self.s1, self.s2, self.s3, self.s4 = (
            regnet_stage(i, w, d, group_width, se_ratio) for i, w, d in zip(ins, widths, depths, strict=True)
        )
        self.head = Classifier(nn.Linear(widths[-1], 1000))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.s4(self.s3(self.s2(self.s1(self.stem(x))))))


def regnety_200mf() -> nn.Module:
    """RegNetY-200MF, timm ``regnety_002`` (timm/models/regnet.py, RegNetCfg(w0=24, wa=36.44, wm=2.49,
    group_size=8, depth=13, se_ratio=0.25): widths 24-56-152-368, depths 1-1-4-7, stem 3x3/2 to 32)."""
    return init_weights(RegNetY((24, 56, 152, 368), (1, 1, 4, 7), 8))


# ---- ViT-B/16 patch embedding ---------------------------------------------------------------------------


class EncoderBlock(nn.Module):
    """A pre-norm transformer encoder block: multi-head self-attention and a GELU MLP, each residual."""

    def __init__(self, dim: int = 768, heads: int = 12, mlp: int = 3072) -> None:
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(dim, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, tokens, dim = x.shape
        qkv = self.qkv(self.ln_1(x)).reshape(n, tokens, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attention = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, tokens, dim)
        x = x + self.proj(attention)
        return x + self.mlp(self.ln_2(x))


class ViTPatchEmbedding(nn.Module):
    def __init__(self, blocks: int, dim: int = 768, patch: int = 16, size: int = 224) -> None:
        super().__init__()
        self.conv_proj = nn.Conv2d(3, dim, patch, patch)
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.randn(1, (size // patch) ** 2 + 1, dim) * 0.02)
        self.layers = nn.Sequential(*(EncoderBlock(dim) for _ in range(blocks)))
        self.ln = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.conv_proj(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.class_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        tokens = self.layers(tokens + self.pos_embedding[:, : tokens.shape[1]])
        return self.head(self.ln(tokens[:, 0]))


def vit_b16_patch_embedding() -> nn.Module:
    """ViT-B/16's patch embedding, torchvision ``vit_b_16``'s ``conv_proj`` (Conv2d(3, 768, 16, 16)), with
    the class token, position embedding, ONE of its 12 encoder blocks and the head: the patch conv is the
    only down-sampling op, and the forward pass is about 1/12 of the real model's."""
    return init_weights(ViTPatchEmbedding(blocks=1))


NETWORKS: dict[str, Callable[[], nn.Module]] = {
    "resnet50": resnet50,
    "efficientnet_b0": efficientnet_b0,
    "convnext_tiny": convnext_tiny,
    "densenet121": densenet121,
    "mobilenet_v3_large": mobilenet_v3_large,
    "regnety_200mf": regnety_200mf,
    "vit_b16_patch_embedding": vit_b16_patch_embedding,
}
"""Each stand-in by name: a factory returning it with random weights, in eval mode."""
