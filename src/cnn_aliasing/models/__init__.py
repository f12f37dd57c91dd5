"""Architectures with RobustBench-compatible state-dict keys, the model registry and checkpoints.

A model is one module of this package: its factory decorated with
:func:`~cnn_aliasing.models.registry.register_model`. Every module here is imported with the package
(:func:`_import_modules`), so a new module registers its models and nothing else needs to name it;
:func:`list_models` lists them (``preact_resnet18``, ``wrn_28_10``, ``resnet18`` and the DeepMind-style
``dm_wrn_28_10`` and ``dm_preact_resnet18``). The classes below are re-exported for callers that build
them directly.
"""

import importlib
import pkgutil

from cnn_aliasing.models.checkpoint import load_checkpoint, save_checkpoint
from cnn_aliasing.models.dm_resnet import DMPreActResNet, DMWideResNet, dm_preact_resnet18, dm_wrn_28_10
from cnn_aliasing.models.normalization import NORMALIZATION_PRESETS, Normalize, NormalizeSpec
from cnn_aliasing.models.preact_resnet import PreActBlock, PreActResNet, preact_resnet18
from cnn_aliasing.models.registry import create_model, list_models, model_descriptions, register_model
from cnn_aliasing.models.resnet import ResNet, resnet18
from cnn_aliasing.models.wide_resnet import BasicBlock, NetworkBlock, WideResNet, wrn_28_10


def _import_modules() -> None:
    """Import every module of this package (alphabetically); each registers the models it defines."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        importlib.import_module(f"{__name__}.{info.name}")


_import_modules()

__all__ = [
    "NORMALIZATION_PRESETS",
    "BasicBlock",
    "DMPreActResNet",
    "DMWideResNet",
    "NetworkBlock",
    "Normalize",
    "NormalizeSpec",
    "PreActBlock",
    "PreActResNet",
    "ResNet",
    "WideResNet",
    "create_model",
    "dm_preact_resnet18",
    "dm_wrn_28_10",
    "list_models",
    "load_checkpoint",
    "model_descriptions",
    "preact_resnet18",
    "register_model",
    "resnet18",
    "save_checkpoint",
    "wrn_28_10",
]
