"""Training recipes: a frozen dataclass of every value a run depends on, and a registry of named ones
(the catalogue, data in ``recipes.toml`` beside this module).

A recipe fixes the architecture, the data subset, the objective, the optimiser and its schedule, the
augmentation, the per-epoch tracking and the speed switches. The catalogue is data until a recipe is used:
:func:`get_recipe` builds a named recipe with any field overridden, and building a :class:`Recipe` checks
every field (:mod:`cnn_aliasing.fields`), so a bad value fails before any work starts. Importing this
module checks nothing and imports none of the registries a recipe names (models, anti-aliasing methods,
objectives, schedules).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args

from cnn_aliasing.eps import is_eps
from cnn_aliasing.errors import CnnAliasingError
from cnn_aliasing.fields import check_fields, check_keys, checked, field_names
from cnn_aliasing.files import StrPath, read_toml
from cnn_aliasing.registry import Registry
from cnn_aliasing.validation import (
    Check,
    invalid,
    is_bool,
    is_choice,
    is_int,
    is_number,
    is_str,
    is_whole,
    optional,
)

Autocast = Literal["auto", "bf16", "off"]
AUTOCAST_CHOICES: tuple[Autocast, ...] = get_args(Autocast)
EPS_8 = 8 / 255
STRIDED = "strided"  # the downsample value that keeps the architecture's own down-sampling


def _names_of(kind: str) -> list[str]:
    """The valid names of a field that names a registered thing (imported when a recipe is checked, never
    when this module is: the objectives' and schedules' modules import this one, and a recipe is data until
    it is used)."""
    from cnn_aliasing.antialias import downsample_choices
    from cnn_aliasing.models import list_models
    from cnn_aliasing.training.objectives import list_objectives
    from cnn_aliasing.training.schedules import list_schedules

    lists: dict[str, Callable[[], list[str]]] = {
        "model": list_models,
        "objective": list_objectives,
        "schedule": list_schedules,
        "downsample": lambda: list(downsample_choices()),
    }
    return lists[kind]()


def _registered(kind: str) -> Check:
    """A name among the registered ``kind`` names."""

    def check(value: Any, where: str) -> str:
        valid = _names_of(kind)
        if value not in valid:
            raise invalid(where, f"one of {', '.join(valid)}", value)
        return value

    return check


def _is_text(value: Any, where: str) -> str:
    """A string (maybe empty)."""
    if not isinstance(value, str):
        raise invalid(where, "a string", value)
    return value


def _is_milestones(value: Any, where: str) -> tuple[int, ...]:
    """Increasing epochs >= 1."""
    epochs = tuple(value) if isinstance(value, (tuple, list)) else None
    if epochs is None or not all(is_whole(m) and m >= 1 for m in epochs) or list(epochs) != sorted(epochs):
        raise invalid(where, "increasing epochs >= 1, e.g. [100, 150]", value)
    return epochs


def _is_epochs(value: Any, where: str) -> tuple[int, ...]:
    """Increasing epochs >= 1, possibly none."""
    return _is_milestones(value, where) if value else ()


def _is_arguments(value: Any, where: str) -> Mapping[str, Any]:
    """A mapping of argument names to values."""
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise invalid(where, "a mapping of argument names to values", value)
    return value


def _is_sample_channels(value: Any, where: str) -> int | float:
    """A count of channels >= 1 or a fraction in (0, 1] (see ``measure(sample_channels=...)``)."""
    if (is_whole(value) and value >= 1) or (isinstance(value, float) and 0 < value <= 1):
        return value
    raise invalid(where, "an integer >= 1 (channels of each op) or a number in (0, 1] (that fraction)", value)


@dataclass(frozen=True)
class Recipe:
    """Everything a training run depends on (besides the data folder and the device).

    ``attack_step`` None means the objective's default step (PGD-AT and TRADES: eps / 4, i.e. 2/255 at
    8/255; FGSM-RS: 1.25 eps). ``channels_last`` None chooses per device (on CUDA only, see
    :func:`cnn_aliasing.runtime.use_channels_last`); true or false forces it. ``eval_every`` 0 turns the
    per-epoch tracking off. ``n_train`` None trains on the whole train split, else on a fixed random subset
    drawn with ``subset_seed``. ``downsample`` (``strided``, ``flc``, ``asap``, ``blurpool``) swaps the
    architecture's down-sampling (see :mod:`cnn_aliasing.antialias`); the architecture gets it among its
    arguments, :attr:`model_args` (``arch_args`` never holds it).
    """

    name: str = field(metadata=checked(is_str))
    description: str = field(default="", metadata=checked(_is_text))
    arch: str = field(default="preact_resnet18", metadata=checked(_registered("model")))
    arch_args: Mapping[str, Any] = field(
        default_factory=lambda: {"normalize": "cifar10"}, metadata=checked(_is_arguments)
    )
    objective: str = field(default="standard", metadata=checked(_registered("objective")))
    epochs: int = field(default=200, metadata=checked(is_int(1)))
    batch_size: int = field(default=512, metadata=checked(is_int(1)))
    lr: float = field(default=0.1, metadata=checked(is_number(0)))
    momentum: float = field(default=0.9, metadata=checked(is_number(0)))
    weight_decay: float = field(default=5e-4, metadata=checked(is_number(0)))
    nesterov: bool = field(default=False, metadata=checked(is_bool))
    schedule: str = field(default="multistep", metadata=checked(_registered("schedule")))
    milestones: tuple[int, ...] = field(default=(100, 150), metadata=checked(_is_milestones))
    gamma: float = field(default=0.1, metadata=checked(is_number(0)))
    lr_peak: float = field(default=0.4, metadata=checked(is_number(0, 1)))
    warmup_epochs: float = field(default=0.0, metadata=checked(is_number(0)))
    crop_padding: int = field(default=4, metadata=checked(is_int(0)))
    flip: bool = field(default=True, metadata=checked(is_bool))
    eps: float = field(default=EPS_8, metadata=checked(is_eps()))
    attack_step: float | None = field(
        default=None, metadata=checked(optional(is_eps(positive=True), "the objective's default step"))
    )
    attack_steps: int = field(default=10, metadata=checked(is_int(1)))
    trades_beta: float = field(default=6.0, metadata=checked(is_number(0)))
    n_train: int | None = field(default=None, metadata=checked(optional(is_int(1), "the whole train split")))
    subset_seed: int = field(default=0, metadata=checked(is_int(0)))
    seed: int = field(default=0, metadata=checked(is_int(0)))
    eval_every: int = field(default=1, metadata=checked(is_int(0)))
    eval_images: int = field(default=256, metadata=checked(is_int(1)))
    eval_pgd_steps: int = field(default=10, metadata=checked(is_int(1)))
    eval_pgd_step: float = field(default=2 / 255, metadata=checked(is_eps()))
    # per-epoch AM: measure(sample_channels=...)
    eval_sample_channels: int | float | None = field(
        default=None, metadata=checked(optional(_is_sample_channels, "measure every channel"))
    )
    overfit_drop: float = field(default=0.2, metadata=checked(is_number(0, 1)))
    autocast: Autocast = field(default="auto", metadata=checked(is_choice(*AUTOCAST_CHOICES)))
    channels_last: bool | None = field(
        default=None, metadata=checked(optional(is_bool, "channels_last on CUDA only"))
    )
    compile: bool = field(default=False, metadata=checked(is_bool))
    downsample: str = field(default="strided", metadata=checked(_registered("downsample")))
    # epochs after which the run also keeps its weights (epoch-NNN.safetensors), e.g. for a study's models
    snapshots: tuple[int, ...] = field(default=(), metadata=checked(_is_epochs))
    noise_std: float = field(default=0.1, metadata=checked(is_number(0)))  # the gaussian-noise objective

    def __post_init__(self) -> None:
        where = f"recipe {self.name!r}"
        check_fields(self, where, "field")
        arch_args = dict(self.arch_args)
        if arch_args.get("downsample", self.downsample) != self.downsample:
            raise CnnAliasingError(
                f"{where}: arch_args sets downsample={arch_args['downsample']!r} and the field "
                f"downsample={self.downsample!r}; set only one"
            )
        arch_args.pop("downsample", None)  # the field holds it; model_args passes it on
        object.__setattr__(self, "arch_args", arch_args)
        if self.snapshots and self.snapshots[-1] > self.epochs:
            raise invalid(
                f"{where} field snapshots", f"epochs from 1 to epochs={self.epochs}", self.snapshots
            )

    @property
    def model_args(self) -> dict[str, Any]:
        """The architecture's arguments: ``arch_args`` and, unless it is ``strided``, ``downsample``."""
        if self.downsample == STRIDED:
            return dict(self.arch_args)
        return {**self.arch_args, "downsample": self.downsample}

    def to_dict(self) -> dict[str, Any]:
        """All fields, JSON-ready (tuples as lists); ``arch_args`` are the model's arguments
        (:attr:`model_args`), as run folders record them."""
        return json.loads(json.dumps({**dataclasses.asdict(self), "arch_args": self.model_args}))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recipe:
        """The recipe :meth:`to_dict` wrote (or any mapping of fields), checked; unknown keys are an error
        naming them."""
        check_keys(data, FIELDS, f"recipe {data.get('name')!r}", "field")
        return cls(**dict(data))

    def step_size(self, default_ratio: float) -> float:
        """``attack_step`` if set, else ``default_ratio * eps`` (the objective's default)."""
        return self.attack_step if self.attack_step is not None else default_ratio * self.eps

    def replace(self, **overrides: Any) -> Recipe:
        """A copy with some fields changed, checked as :func:`get_recipe`'s overrides are."""
        check_keys(overrides, FIELDS, f"recipe {self.name!r}", "field")
        return dataclasses.replace(self, **overrides)


FIELDS = tuple(field_names(Recipe))


# --------------------------------------------------------------------------------------------- catalogue
RECIPES: Registry[Mapping[str, Any]] = Registry(
    "recipe", describe=lambda fields: fields.get("description", "")
)
"""The named recipes as data: each one's fields as given (a catalogue table with its shared fields), made
into a checked :class:`Recipe` when it is looked up."""


def register_recipe(recipe: Recipe) -> Recipe:
    """Register ``recipe`` under ``recipe.name`` (a name may be registered once)."""
    RECIPES.register(recipe.name, {f: getattr(recipe, f) for f in FIELDS})
    return recipe


def list_recipes() -> list[str]:
    """Names of the registered recipes, sorted."""
    return RECIPES.names()


def get_recipe(name: str, **overrides: Any) -> Recipe:
    """The registered recipe ``name`` with ``overrides`` (field name -> value) applied, checked."""
    return Recipe.from_dict({**RECIPES.get(name), **overrides})


def catalogue_fields(path: StrPath) -> dict[str, dict[str, Any]]:
    """Each recipe's fields in a catalogue file, unchecked: a table ``[recipes.NAME]`` per recipe, which
    may start from the fields of ``[shared.KEY]`` with ``shared = "KEY"``."""
    raw = read_toml(path)
    shared, recipes = raw.get("shared", {}), {}
    for name, table in raw.get("recipes", {}).items():
        fields = dict(table)
        base = fields.pop("shared", None)
        if base is not None and base not in shared:
            raise invalid(f"{path}: [recipes.{name}] shared", f"one of {', '.join(shared)}", base)
        recipes[name] = {**shared.get(base, {}), **fields, "name": name}
    return recipes


def read_catalogue(path: StrPath) -> list[Recipe]:
    """The recipes of a catalogue file (see :func:`catalogue_fields`), each checked; an error names the
    file."""
    recipes = []
    for fields in catalogue_fields(path).values():
        try:
            recipes.append(Recipe.from_dict(fields))
        except CnnAliasingError as error:
            raise CnnAliasingError(f"{path}: {error}") from None
    return recipes


def _register_shipped() -> None:
    """The shipped catalogue, as data: each recipe is checked when it is looked up."""
    for name, fields in catalogue_fields(Path(str(resources.files(__package__) / "recipes.toml"))).items():
        RECIPES.register(name, fields)


_register_shipped()
