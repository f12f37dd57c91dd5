"""Where a model comes from, and loading it from there: the one resolver of the command line and the study.

A source is a zoo model (:class:`ZooSource`), a registered architecture with arguments and optional
weights (:class:`ArchSource`), a run of ``cnn-aliasing train`` (:class:`RunSource`) or a model from outside
the package named by a reference (:class:`ExternalSource`): ``timm:NAME``, ``torchvision:NAME`` (optional
extras, in :data:`LIBRARIES`) or ``package.module:factory`` (a callable of the user's returning an
``nn.Module``). Each loads into an eval-mode model and its description: ``{"model": ..., "checkpoint":
{"path", "sha256"} or None}``.
"""

from __future__ import annotations

import abc
import difflib
import importlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from cnn_aliasing import models, training, zoo
from cnn_aliasing.errors import CnnAliasingError, ModelArgumentError, UnknownNameError
from cnn_aliasing.files import sha256_of
from cnn_aliasing.models.normalization import make_normalizer
from cnn_aliasing.registry import Registry

SourceMeta = dict[str, Any]


@dataclass(frozen=True)
class LoadOptions:
    """What loading may need besides the source: the zoo's checkpoint folder, downloading, progress."""

    model_dir: Path = zoo.DEFAULT_MODEL_DIR
    download: bool = False
    progress: bool = True


class ModelSource(abc.ABC):
    """Where one model comes from."""

    @abc.abstractmethod
    def load(self, options: LoadOptions) -> tuple[nn.Module, SourceMeta]:
        """The model in eval mode and its ``{"model": ..., "checkpoint": ...}`` description."""


def checkpoint_meta(path: Path | None) -> dict[str, str] | None:
    """A weights file as recorded in results: its absolute path and sha256 (None: no file)."""
    return None if path is None else {"path": os.fspath(path.resolve()), "sha256": sha256_of(path)}


def check_architecture(name: str) -> str:
    """``name`` if it is a registered architecture; else an error listing the valid ones."""
    if name not in models.list_models():
        raise UnknownNameError(
            f"unknown architecture {name!r}; valid architectures: {', '.join(models.list_models())}"
        )
    return name


@dataclass(frozen=True)
class ZooSource(ModelSource):
    """A zoo model by name (its weights read from, or downloaded into, the options' ``model_dir``)."""

    name: str

    def load(self, options: LoadOptions) -> tuple[nn.Module, SourceMeta]:
        entry = zoo.zoo_entry(self.name)
        module = zoo.load_zoo_model(
            entry.name, options.model_dir, download=options.download, progress=options.progress
        )
        described = {
            "name": entry.name,
            "args": dict(entry.arch_args),
            "arch": entry.arch,
            "zoo": entry.to_dict(),
        }
        path = zoo.checkpoint_path(entry.name, options.model_dir)
        return module, {"model": described, "checkpoint": checkpoint_meta(path)}


@dataclass(frozen=True)
class ArchSource(ModelSource):
    """A registered architecture with factory arguments, its weights from ``checkpoint`` (None: random)."""

    arch: str
    args: Mapping[str, Any] = field(default_factory=dict)
    checkpoint: Path | None = None

    def load(self, options: LoadOptions) -> tuple[nn.Module, SourceMeta]:
        module = models.create_model(check_architecture(self.arch), **self.args)
        if self.checkpoint is not None:
            models.load_checkpoint(module, self.checkpoint)
        described = {"name": self.arch, "args": dict(self.args)}
        return module.eval(), {"model": described, "checkpoint": checkpoint_meta(self.checkpoint)}


@dataclass(frozen=True)
class RunSource(ModelSource):
    """A run of ``cnn-aliasing train``: its folder, or its model.safetensors with model.json beside it."""

    path: Path

    def load(self, options: LoadOptions) -> tuple[nn.Module, SourceMeta]:
        module = training.load_trained_model(self.path)
        sidecar = training.read_sidecar(self.path)
        described = {
            **sidecar["model"],
            "trained": {k: sidecar[k] for k in ("recipe", "objective", "robust", "seed", "epochs_done")},
        }
        return module, {"model": described, "checkpoint": checkpoint_meta(training.weights_file(self.path))}


# ---------------------------------------------------------------------- models from outside the package
IMAGENET_MEAN_STD: tuple[tuple[float, ...], tuple[float, ...]] = (
    (0.485, 0.456, 0.406),
    (0.229, 0.224, 0.225),
)
"""The ImageNet mean and std every torchvision classification model's weights expect (and timm's default)."""


class NormalizedModel(nn.Module):
    """An outside model behind the package's input normaliser: it takes images in [0, 1], as every model
    here does. Its ops are named ``model.<the library's module path>``."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.normalize = make_normalizer((tuple(mean), tuple(std)))
        self.model = model

    def forward(self, x: torch.Tensor) -> Any:
        return self.model(self.normalize(x))


@dataclass(frozen=True)
class Built:
    """What a library built: the model, and the mean and std it expects its inputs normalised with."""

    model: nn.Module
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class Library:
    """A model library of an optional extra: how to import it, build a model by name, list its names."""

    module: str  # what is imported
    extra: str  # the extra of cnn-aliasing that installs it
    build: Callable[[ModuleType, str, bool, Mapping[str, Any]], Built]  # (library, name, pretrained, args)
    names: Callable[[ModuleType], list[str]]  # every model name it offers

    def load(self) -> ModuleType:
        """The library imported; a missing one is an error naming the extra that installs it."""
        top = self.module.partition(".")[0]
        try:
            return importlib.import_module(self.module)
        except ModuleNotFoundError as error:
            if error.name not in (top, self.module):
                raise CnnAliasingError(f"{top} cannot be imported: {error}") from None
            raise CnnAliasingError(
                f"{top} is not installed: pip install 'cnn-aliasing[{self.extra}]'"
            ) from None
        except Exception as error:  # e.g. compiled ops built for another torch
            raise CnnAliasingError(f"{top} cannot be imported: {type(error).__name__}: {error}") from None


def _close_matches(name: str, names: Sequence[str]) -> str | None:
    """``close matches: a, b`` (up to 5 of ``names``), or None when none is close."""
    close = difflib.get_close_matches(name, names, n=5)
    return f"close matches: {', '.join(close)}" if close else None


def _unknown_name(library: str, name: str, names: Sequence[str]) -> UnknownNameError:
    hint = _close_matches(name, names) or f"none of its {len(names)} names is close"
    return UnknownNameError(f"unknown {library} model {name!r}; {hint}")


def _timm_names(timm: ModuleType) -> list[str]:
    return list(timm.list_models())


def _timm_build(timm: ModuleType, name: str, pretrained: bool, args: Mapping[str, Any]) -> Built:
    try:
        model = timm.create_model(name, pretrained=pretrained, **args)
    except RuntimeError as error:
        if not str(error).startswith("Unknown model"):
            raise
        raise _unknown_name("timm", name, _timm_names(timm)) from None
    config = getattr(model, "pretrained_cfg", None) or {}
    mean, std = config.get("mean"), config.get("std")
    if mean is None or std is None:
        mean, std = IMAGENET_MEAN_STD
    return Built(model, tuple(float(v) for v in mean), tuple(float(v) for v in std))


def _torchvision_names(tv_models: ModuleType) -> list[str]:
    return list(tv_models.list_models(module=tv_models))  # classification models only


def _torchvision_build(tv_models: ModuleType, name: str, pretrained: bool, args: Mapping[str, Any]) -> Built:
    names = _torchvision_names(tv_models)
    if name not in names:
        raise _unknown_name("torchvision classification", name, names)
    model = tv_models.get_model(name, weights="DEFAULT" if pretrained else None, **args)
    return Built(model, *IMAGENET_MEAN_STD)


LIBRARIES: Registry[Library] = Registry(
    "model library", plural="model libraries", describe=lambda e: e.module
)
"""The libraries ``--model LIBRARY:NAME`` may name, each from an optional extra of cnn-aliasing."""
LIBRARIES.register("timm", Library("timm", "timm", _timm_build, _timm_names))
LIBRARIES.register(
    "torchvision", Library("torchvision.models", "vision", _torchvision_build, _torchvision_names)
)


@dataclass(frozen=True)
class ExternalRef:
    """A parsed reference to an outside model: ``timm:NAME``, ``torchvision:NAME`` or ``module:factory``."""

    module: str  # a library's name (``timm``, ``torchvision``) or the user's dotted module
    attr: str  # the model's name in the library, or the factory's (dotted) attribute path in the module

    @property
    def library(self) -> bool:
        """Whether the reference names a library's model rather than the user's factory."""
        return self.module in LIBRARIES

    def __str__(self) -> str:
        return f"{self.module}:{self.attr}"


def _is_dotted(text: str) -> bool:
    return bool(text) and all(part.isidentifier() for part in text.split("."))


def parse_external(text: str) -> ExternalRef | None:
    """``text`` as an outside model's reference, or None if it is not of the form ``MODULE:NAME``
    (MODULE a library of :data:`LIBRARIES` or a dotted module path, NAME not empty; a factory's NAME a
    dotted attribute path)."""
    module, sep, attr = text.strip().partition(":")
    if not sep or not attr or not _is_dotted(module):
        return None
    if module in LIBRARIES or _is_dotted(attr):
        return ExternalRef(module, attr)
    return None


def check_external(text: str) -> ExternalRef:
    """The reference ``text`` parses to; else an error showing the three forms."""
    ref = parse_external(text)
    if ref is None:
        raise CnnAliasingError(
            f"{text!r} is not a model reference; expected timm:NAME, torchvision:NAME or "
            "package.module:factory (e.g. timm:resnet50, torchvision:resnet18, mypkg.nets:make_net)"
        )
    return ref


def _user_factory(ref: ExternalRef) -> Callable[..., Any]:
    try:
        target: Any = importlib.import_module(ref.module)
    except Exception as error:  # any failure of the user's module is reported as one line
        raise CnnAliasingError(
            f"cannot import module {ref.module!r} of --model {ref}: {type(error).__name__}: {error} (is it "
            "installed, or on PYTHONPATH?)"
        ) from None
    where = ref.module
    for part in ref.attr.split("."):
        if not hasattr(target, part):
            close = _close_matches(part, [n for n in dir(target) if not n.startswith("_")])
            hint = f"; {close}" if close else ""
            raise CnnAliasingError(f"{where!r} has no attribute {part!r} (from --model {ref}){hint}")
        target, where = getattr(target, part), f"{where}.{part}"
    if not callable(target):
        raise CnnAliasingError(
            f"{ref} is a {type(target).__name__}, not a callable returning an nn.Module (a factory or class)"
        )
    return target


@dataclass(frozen=True)
class ExternalSource(ModelSource):
    """A model from outside the package: a timm or torchvision model by name, or what the user's
    ``package.module:factory`` returns, built with ``args`` as keyword arguments.

    A library's model is wrapped in :class:`NormalizedModel` with the mean and std its weights expect
    (timm: the model's ``pretrained_cfg``, else ImageNet's; torchvision: ImageNet's), with or without
    ``pretrained`` weights, so it takes images in [0, 1]. A factory's model is taken as it is: like any
    model of this package it must take images in [0, 1] and normalise inside. ``pretrained`` (libraries
    only) asks the library for its default pretrained weights (downloaded by it where there is internet);
    without it the weights are random. ``checkpoint`` loads a weights file into the built model (before
    wrapping: the library's own keys).
    """

    reference: str
    args: Mapping[str, Any] = field(default_factory=dict)
    pretrained: bool = False
    checkpoint: Path | None = None

    def load(self, options: LoadOptions) -> tuple[nn.Module, SourceMeta]:
        ref = check_external(self.reference)
        if ref.library:
            library = LIBRARIES.get(ref.module)
            built = self._call(lambda: library.build(library.load(), ref.attr, self.pretrained, self.args))
        elif self.pretrained:
            raise CnnAliasingError(
                f"pretrained applies to timm: and torchvision: models, not to the factory {ref}; pass your "
                "factory's own arguments instead"
            )
        else:
            factory = _user_factory(ref)
            built = Built(self._call(lambda: factory(**self.args)), (), ())
        if not isinstance(built.model, nn.Module):
            raise CnnAliasingError(f"{ref} returned a {type(built.model).__name__}, not a torch.nn.Module")
        if self.checkpoint is not None:
            models.load_checkpoint(built.model, self.checkpoint)
        module = NormalizedModel(built.model, built.mean, built.std) if ref.library else built.model
        normalize = {"mean": list(built.mean), "std": list(built.std)} if ref.library else None
        described = {
            "name": str(ref),
            "args": dict(self.args),
            "external": {"pretrained": self.pretrained, "normalize": normalize},
        }
        return module.eval(), {"model": described, "checkpoint": checkpoint_meta(self.checkpoint)}

    def _call(self, build: Callable[[], Any]) -> Any:
        try:
            return build()
        except TypeError as error:  # most often an argument the factory does not take
            raise ModelArgumentError(
                f"{self.reference} refused its arguments {dict(self.args)}: {error}"
            ) from None
