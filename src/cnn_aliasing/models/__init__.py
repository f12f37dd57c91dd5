"""Architectures with RobustBench-compatible state-dict keys, the model registry and checkpoints.

Importing this package registers ``preact_resnet18`` and ``wrn_28_10``.
"""

from cnn_aliasing.models.checkpoint import load_checkpoint, save_checkpoint
from cnn_aliasing.models.normalization import NORMALIZATION_PRESETS, Normalize, NormalizeSpec
from cnn_aliasing.models.preact_resnet import PreActBlock, PreActResNet, preact_resnet18
from cnn_aliasing.models.registry import create_model, list_models, model_descriptions, register_model
from cnn_aliasing.models.wide_resnet import BasicBlock, NetworkBlock, WideResNet, wrn_28_10

__all__ = [
    "NORMALIZATION_PRESETS",
    "BasicBlock",
    "NetworkBlock",
    "Normalize",
    "NormalizeSpec",
    "PreActBlock",
    "PreActResNet",
    "WideResNet",
    "create_model",
    "list_models",
    "load_checkpoint",
    "model_descriptions",
    "preact_resnet18",
    "register_model",
    "save_checkpoint",
    "wrn_28_10",
]
