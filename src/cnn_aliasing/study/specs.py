"""The models of a study: the kinds of ``[[models]]`` entries, and expanding them into named models.

Each kind is a frozen dataclass registered under the TOML key that identifies it (``zoo``, ``zoo_tags``,
``zoo_on_disk``, ``checkpoint``, ``recipe``, ``external``): an entry holds exactly one of those keys. A
spec expands into one or more :class:`StudyModel` (a tag selects several zoo entries); a study model knows
how to load (or train) itself and what it is (source, architecture, robust or not, tags) before it is
loaded.
"""

from __future__ import annotations

import abc
import os
import re
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from cnn_aliasing import training, zoo
from cnn_aliasing.errors import CnnAliasingError, UnknownNameError
from cnn_aliasing.fields import checked, read_fields
from cnn_aliasing.model_source import (
    ArchSource,
    ExternalSource,
    LoadOptions,
    ZooSource,
    check_architecture,
    check_external,
)
from cnn_aliasing.registry import Registry
from cnn_aliasing.study.toml_fields import is_path, is_str_list, is_table
from cnn_aliasing.validation import is_bool, is_str

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def slugify(name: str) -> str:
    """A model's file name stem: every character outside ``[A-Za-z0-9._-]`` replaced by ``_``."""
    return _UNSAFE.sub("_", name)


@dataclass(frozen=True)
class LoadContext:
    """What loading a model may need: folders, device, progress."""

    output: Path  # the study's results folder
    model_dir: Path  # zoo checkpoints
    data_dir: Path  # CIFAR-10, for training
    device: torch.device
    progress: bool
    seed: int  # the study's seed: a recipe's training seed unless its overrides set one

    @property
    def load_options(self) -> LoadOptions:
        """The options of :meth:`ModelSource.load`: zoo checkpoints are read, never downloaded."""
        return LoadOptions(self.model_dir, progress=self.progress)


@dataclass
class LoadedModel:
    """A model ready to measure and what became known while loading it (replacing the spec's guesses)."""

    module: nn.Module
    record: dict[str, Any]  # "source", "arch", "arch_args", "robust", "tags", "training"
    train_s: float | None = None


Loader = Callable[["StudyModel", LoadContext], LoadedModel]


@dataclass(frozen=True)
class StudyModel:
    """One model of a study, before loading: its name, where it comes from and what it is."""

    name: str
    source: dict[str, Any]
    arch: str | None
    arch_args: dict[str, Any]
    robust: bool | None
    tags: tuple[str, ...]
    loader: Loader = field(repr=False, compare=False)

    @property
    def slug(self) -> str:
        """The model's file name stem in the results folder."""
        return slugify(self.name)

    def describe(self) -> dict[str, Any]:
        """The JSON-ready facts known before loading (also what identifies the model in a fingerprint)."""
        return {
            "name": self.name,
            "source": self.source,
            "arch": self.arch,
            "arch_args": self.arch_args,
            "robust": self.robust,
            "tags": list(self.tags),
        }

    def load(self, context: LoadContext) -> LoadedModel:
        """Build, load or train the model (on the CPU; the runner moves it)."""
        return self.loader(self, context)


def _training_tags(robust: bool | None, arch: str | None) -> tuple[str, ...]:
    label = None if robust is None else (zoo.ROBUST if robust else zoo.STANDARD)
    return tuple(t for t in (label, arch) if t)


# ------------------------------------------------------------------------------------------ the spec kinds
class ModelSpec(abc.ABC):
    """One ``[[models]]`` entry of a study config."""

    key: ClassVar[str]  # the TOML key that marks this kind

    @abc.abstractmethod
    def expand(self, model_dir: Path) -> list[StudyModel]:
        """The models this entry stands for (``model_dir``: where zoo checkpoints live)."""


SPEC_KINDS: Registry[type[ModelSpec]] = Registry("model spec kind")
"""The kinds of ``[[models]]`` entry, by the TOML key that marks each."""


def register_spec(cls: type[ModelSpec]) -> type[ModelSpec]:
    """Class decorator: register a model spec kind under its identifying key."""
    return SPEC_KINDS.register(cls.key, cls)


def parse_model_spec(raw: Any, where: str) -> ModelSpec:
    """The spec of one ``[[models]]`` table: the kind is chosen by which identifying key it holds."""
    if not isinstance(raw, Mapping):
        raise CnnAliasingError(f"{where} must be a table, got {type(raw).__name__}")
    kinds = [key for key in SPEC_KINDS if key in raw]
    if len(kinds) != 1:
        given = f"it has {' and '.join(kinds)}" if kinds else f"it has {', '.join(raw) or 'no keys'}"
        raise CnnAliasingError(f"{where} needs exactly one of the keys {', '.join(SPEC_KINDS)}; {given}")
    return read_fields(SPEC_KINDS.get(kinds[0]), raw, where)


def _zoo_name(value: Any, where: str) -> str:
    name = is_str(value, where)
    try:
        return zoo.zoo_entry(name).name
    except UnknownNameError as error:
        raise CnnAliasingError(f"{where}: {error}") from None


def _zoo_tags(value: Any, where: str) -> tuple[str, ...]:
    tags = is_str_list(value, where)
    try:
        zoo.select(*tags)
    except UnknownNameError as error:
        raise CnnAliasingError(f"{where}: {error}") from None
    return tags


def _arch(value: Any, where: str) -> str:
    name = is_str(value, where)
    try:
        return check_architecture(name)
    except UnknownNameError as error:
        raise CnnAliasingError(f"{where}: {error}") from None


def _zoo_model(entry: zoo.ZooEntry, name: str | None = None) -> StudyModel:
    return StudyModel(
        name=name or entry.name,
        source={"type": "zoo", "zoo": entry.name},
        arch=entry.arch,
        arch_args=dict(entry.arch_args),
        robust=entry.training == zoo.ROBUST,
        tags=entry.tags,
        loader=_load_zoo,
    )


def _load_zoo(model: StudyModel, context: LoadContext) -> LoadedModel:
    module, meta = ZooSource(model.source["zoo"]).load(context.load_options)
    checkpoint = meta["checkpoint"]
    source = {**model.source, "checkpoint": checkpoint["path"], "sha256": checkpoint["sha256"]}
    figures = meta["model"]["zoo"]["reported"]  # RobustBench's, in percent
    reported = {
        "clean_accuracy": figures["clean_acc"] / 100,
        "robust_accuracy": figures["autoattack_acc"] / 100,
    }
    record = {**model.describe(), "source": source, "training": None, "reported": reported}
    return LoadedModel(module, record)


@register_spec
@dataclass(frozen=True)
class ZooSpec(ModelSpec):
    """``zoo = "Carmon2019Unlabeled"``: one zoo model (its checkpoint read from the study's model_dir)."""

    key: ClassVar[str] = "zoo"
    zoo: str = field(metadata=checked(_zoo_name))
    name: str | None = field(default=None, metadata=checked(is_str))

    def expand(self, model_dir: Path) -> list[StudyModel]:
        return [_zoo_model(zoo.zoo_entry(self.zoo), self.name)]


@register_spec
@dataclass(frozen=True)
class ZooTagsSpec(ModelSpec):
    """``zoo_tags = ["wrn-28-10"]``: every zoo model carrying all these tags."""

    key: ClassVar[str] = "zoo_tags"
    zoo_tags: tuple[str, ...] = field(metadata=checked(_zoo_tags))

    def expand(self, model_dir: Path) -> list[StudyModel]:
        entries = zoo.select(*self.zoo_tags)
        if not entries:
            raise CnnAliasingError(f"no zoo model has all the tags {', '.join(self.zoo_tags)}")
        return [_zoo_model(entry) for entry in entries]


@register_spec
@dataclass(frozen=True)
class ZooOnDiskSpec(ModelSpec):
    """``zoo_on_disk = true``: every zoo model whose checkpoint is already in model_dir (``tags`` filter)."""

    key: ClassVar[str] = "zoo_on_disk"
    zoo_on_disk: bool = field(metadata=checked(is_bool))
    tags: tuple[str, ...] = field(default=(), metadata=checked(_zoo_tags))

    def expand(self, model_dir: Path) -> list[StudyModel]:
        if not self.zoo_on_disk:
            return []
        return [
            _zoo_model(entry)
            for entry in zoo.select(*self.tags)
            if zoo.checkpoint_path(entry.name, model_dir).is_file()
        ]


def _load_checkpoint(model: StudyModel, context: LoadContext) -> LoadedModel:
    assert model.arch is not None
    source_of = ArchSource(model.arch, model.arch_args, Path(model.source["checkpoint"]))
    module, meta = source_of.load(context.load_options)
    source = {**model.source, "sha256": meta["checkpoint"]["sha256"]}
    return LoadedModel(module, {**model.describe(), "source": source, "training": None})


@register_spec
@dataclass(frozen=True)
class CheckpointSpec(ModelSpec):
    """``checkpoint = "w.pt"`` with ``arch``, ``args`` and ``robust``: weights of a registered arch."""

    key: ClassVar[str] = "checkpoint"
    checkpoint: Path = field(metadata=checked(is_path))
    arch: str = field(metadata=checked(_arch))
    robust: bool = field(metadata=checked(is_bool))
    args: dict[str, Any] = field(default_factory=dict, metadata=checked(is_table))
    name: str | None = field(default=None, metadata=checked(is_str))

    def expand(self, model_dir: Path) -> list[StudyModel]:
        return [
            StudyModel(
                name=self.name or self.checkpoint.stem,
                source={"type": "checkpoint", "checkpoint": os.fspath(self.checkpoint)},
                arch=self.arch,
                arch_args=dict(self.args),
                robust=self.robust,
                tags=_training_tags(self.robust, self.arch),
                loader=_load_checkpoint,
            )
        ]


def _train_recipe(model: StudyModel, context: LoadContext) -> LoadedModel:
    """Train (or resume) the model's run, then load its last weights or the snapshot it stands for."""
    overrides = {"seed": context.seed, **model.source["overrides"]}  # the study's seed unless overridden
    recipe = training.get_recipe(model.source["recipe"], **overrides)
    out_dir = context.output / "training" / slugify(model.source.get("run", model.name))
    start = time.perf_counter()
    result = training.train(
        recipe, context.data_dir, out_dir, device=context.device, progress=context.progress, resume=True
    )
    train_s = time.perf_counter() - start
    epoch = model.source.get("epoch")
    if epoch is None:
        weights, module = Path(result.checkpoint), training.load_trained_model(result.checkpoint)
    else:
        weights, module = training.snapshot_file(out_dir, epoch), training.load_snapshot(out_dir, epoch)
    sidecar = result.sidecar
    arch, arch_args, robust = sidecar["model"]["name"], sidecar["model"]["args"], bool(sidecar["robust"])
    checkpoint = os.path.relpath(weights.resolve(), context.output.resolve())
    history = sidecar["history"] if epoch is None else [r for r in sidecar["history"] if r["epoch"] <= epoch]
    record = {
        **model.describe(),
        "source": {**model.source, "checkpoint": Path(checkpoint).as_posix()},
        "arch": arch,
        "arch_args": arch_args,
        "robust": robust,
        "tags": list(_training_tags(robust, arch)),
        "training": {"history": history, "recipe": sidecar["recipe"]},
    }
    return LoadedModel(module, record, train_s)


@register_spec
@dataclass(frozen=True)
class RecipeSpec(ModelSpec):
    """``recipe = "small-standard"`` (``overrides``, ``name``): a model the study trains itself. With
    ``snapshots`` among the overrides (e.g. ``[1, 2, 4]``) the entry stands for one model per snapshot,
    ``NAME-eK``: the one run's weights after epoch K."""

    key: ClassVar[str] = "recipe"
    recipe: str = field(metadata=checked(is_str))
    overrides: dict[str, Any] = field(default_factory=dict, metadata=checked(is_table))
    name: str | None = field(default=None, metadata=checked(is_str))

    def expand(self, model_dir: Path) -> list[StudyModel]:
        recipe = training.get_recipe(self.recipe, **self.overrides)  # a bad name or override fails now
        robust = bool(training.get_objective(recipe.objective).robust)
        name = self.name or self.recipe
        source: dict[str, Any] = {"type": "recipe", "recipe": self.recipe, "overrides": dict(self.overrides)}
        sources = [source]
        if recipe.snapshots:
            sources = [{**source, "run": name, "epoch": epoch} for epoch in recipe.snapshots]
        return [
            StudyModel(
                name=name if "epoch" not in s else f"{name}-e{s['epoch']}",
                source=s,
                arch=recipe.arch,
                arch_args=recipe.model_args,
                robust=robust,
                tags=_training_tags(robust, recipe.arch),
                loader=_train_recipe,
            )
            for s in sources
        ]


def _external(value: Any, where: str) -> str:
    text = is_str(value, where)
    try:
        return str(check_external(text))
    except CnnAliasingError as error:
        raise CnnAliasingError(f"{where}: {error}") from None


def _load_external(model: StudyModel, context: LoadContext) -> LoadedModel:
    torch.manual_seed(context.seed)  # random weights (without pretrained) follow the study's seed
    source_of = ExternalSource(model.source["external"], model.arch_args, model.source["pretrained"])
    module, meta = source_of.load(context.load_options)
    source = {**model.source, "normalize": meta["model"]["external"]["normalize"]}
    return LoadedModel(module, {**model.describe(), "source": source, "training": None})


@register_spec
@dataclass(frozen=True)
class ExternalSpec(ModelSpec):
    """``external = "timm:resnet50"`` (``torchvision:NAME``, ``package.module:factory``) with ``args``,
    ``pretrained``, ``robust``, ``name``: a model from timm, torchvision or the user's own factory."""

    key: ClassVar[str] = "external"
    external: str = field(metadata=checked(_external))
    args: dict[str, Any] = field(default_factory=dict, metadata=checked(is_table))
    pretrained: bool = field(default=False, metadata=checked(is_bool))
    robust: bool = field(default=False, metadata=checked(is_bool))
    name: str | None = field(default=None, metadata=checked(is_str))

    def expand(self, model_dir: Path) -> list[StudyModel]:
        if self.pretrained and not check_external(self.external).library:
            raise CnnAliasingError(
                f"pretrained applies to timm: and torchvision: models, not to the factory {self.external}"
            )
        return [
            StudyModel(
                name=self.name or self.external,
                source={"type": "external", "external": self.external, "pretrained": self.pretrained},
                arch=self.external,
                arch_args=dict(self.args),
                robust=self.robust,
                tags=_training_tags(self.robust, self.external),
                loader=_load_external,
            )
        ]


# ------------------------------------------------------------------------------------------------ expanding
def expand_models(specs: Sequence[ModelSpec], model_dir: Path) -> list[StudyModel]:
    """The study's models in order, each name once.

    A model met again with the same source (a zoo model named by two entries) is skipped with a warning;
    two different models with the same name (or names with the same file name) are an error.
    """
    kept: dict[str, StudyModel] = {}
    slugs: dict[str, str] = {}
    for i, spec in enumerate(specs, start=1):
        try:
            expanded = spec.expand(model_dir)
        except CnnAliasingError as error:
            raise CnnAliasingError(f"[[models]] #{i}: {error}") from None
        for model in expanded:
            earlier = kept.get(model.name)
            if earlier is not None:
                if earlier.source != model.source:
                    raise CnnAliasingError(
                        f"two different models are named {model.name!r} ({earlier.source} and, in "
                        f"[[models]] #{i}, {model.source}); give one of them another name"
                    )
                warnings.warn(f"[[models]] #{i} lists {model.name} again; it is measured once", stacklevel=2)
                continue
            if slugs.get(model.slug, model.name) != model.name:
                raise CnnAliasingError(
                    f"models {slugs[model.slug]!r} and {model.name!r} would share the result file "
                    f"{model.slug}.json; rename one"
                )
            kept[model.name] = model
            slugs[model.slug] = model.name
    return list(kept.values())
