"""Training recipes: a frozen dataclass of every value a run depends on, and a registry of named ones
(the catalogue, data in ``recipes.toml`` beside this module).

A recipe fixes the architecture, the data subset, the objective, the optimiser and its schedule, the
augmentation, the per-epoch tracking and the speed switches. :func:`get_recipe` returns a named recipe
with any field overridden; the values are checked when the recipe is built, so a bad value fails before
any work starts.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args

from cnn_aliasing.errors import CnnAliasingError
from cnn_aliasing.provenance import StrPath, read_toml
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


def checked(check: Check) -> dict[str, Check]:
    """Metadata of a recipe field: the check its value must pass (see :mod:`cnn_aliasing.validation`)."""
    return {"check": check}


def _names_of(kind: str) -> list[str]:
    """The valid names of a field that names a registered thing (imported when a recipe is checked:
    the registries' modules import this one)."""
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
    architecture's down-sampling (see :mod:`cnn_aliasing.antialias`); it is passed on in ``arch_args``.
    """

    name: str = field(metadata=checked(is_str))
    description: str = ""
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
    eps: float = field(default=EPS_8, metadata=checked(is_number(0)))
    attack_step: float | None = field(
        default=None, metadata=checked(optional(is_number(0, open_low=True), "the objective's default step"))
    )
    attack_steps: int = field(default=10, metadata=checked(is_int(1)))
    trades_beta: float = field(default=6.0, metadata=checked(is_number(0)))
    n_train: int | None = field(default=None, metadata=checked(optional(is_int(1), "the whole train split")))
    subset_seed: int = field(default=0, metadata=checked(is_int(0)))
    seed: int = field(default=0, metadata=checked(is_int(0)))
    eval_every: int = field(default=1, metadata=checked(is_int(0)))
    eval_images: int = field(default=256, metadata=checked(is_int(1)))
    eval_pgd_steps: int = field(default=10, metadata=checked(is_int(1)))
    eval_pgd_step: float = field(default=2 / 255, metadata=checked(is_number(0)))
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
        object.__setattr__(self, "arch_args", dict(self.arch_args))
        if self.downsample != "strided" and "downsample" not in self.arch_args:
            self.arch_args["downsample"] = self.downsample  # type: ignore[index]  # a dict, made just above
        object.__setattr__(self, "milestones", tuple(self.milestones))
        object.__setattr__(self, "snapshots", tuple(self.snapshots))
        _validate(self)

    def to_dict(self) -> dict[str, Any]:
        """All fields, JSON-ready (tuples as lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recipe:
        """The recipe :meth:`to_dict` wrote; unknown keys are an error naming them."""
        _check_fields(data.keys(), "recipe")
        return cls(**dict(data))

    def step_size(self, default_ratio: float) -> float:
        """``attack_step`` if set, else ``default_ratio * eps`` (the objective's default)."""
        return self.attack_step if self.attack_step is not None else default_ratio * self.eps

    def replace(self, **overrides: Any) -> Recipe:
        """A copy with some fields changed (checked like :func:`get_recipe`'s overrides)."""
        _check_fields(overrides.keys(), f"recipe {self.name!r}")
        if "downsample" in overrides and "arch_args" not in overrides:
            overrides["arch_args"] = {k: v for k, v in self.arch_args.items() if k != "downsample"}
        return dataclasses.replace(self, **overrides)


FIELDS = tuple(f.name for f in dataclasses.fields(Recipe))


def _check_fields(names: Any, what: str) -> None:
    unknown = [n for n in names if n not in FIELDS]
    if unknown:
        raise CnnAliasingError(
            f"{what}: unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"valid fields: {', '.join(FIELDS)}"
        )


def _validate(recipe: Recipe) -> None:
    """Check every field with the check it declares, then the one rule that spans two fields; an error
    names the recipe, the field, what is valid and the value given."""
    for f in dataclasses.fields(recipe):
        if "check" in f.metadata:
            f.metadata["check"](getattr(recipe, f.name), f"recipe {recipe.name!r} field {f.name}")
    if recipe.snapshots and recipe.snapshots[-1] > recipe.epochs:
        raise invalid(
            f"recipe {recipe.name!r} field snapshots",
            f"epochs from 1 to epochs={recipe.epochs}",
            recipe.snapshots,
        )
    if recipe.arch_args.get("downsample", recipe.downsample) != recipe.downsample:
        raise CnnAliasingError(
            f"recipe {recipe.name!r}: arch_args sets downsample={recipe.arch_args['downsample']!r} and the "
            f"field downsample={recipe.downsample!r}; set only one"
        )


# --------------------------------------------------------------------------------------------- registry
RECIPES: Registry[Recipe] = Registry("recipe", describe=lambda r: r.description)


def register_recipe(recipe: Recipe) -> Recipe:
    """Register ``recipe`` under ``recipe.name`` (a name may be registered once)."""
    return RECIPES.register(recipe.name, recipe)


def list_recipes() -> list[str]:
    """Names of the registered recipes, sorted."""
    return RECIPES.names()


def get_recipe(name: str, **overrides: Any) -> Recipe:
    """The registered recipe ``name`` with ``overrides`` (field name -> value) applied and checked."""
    return RECIPES.get(name).replace(**overrides)


def read_catalogue(path: StrPath) -> list[Recipe]:
    """The recipes of a catalogue file (the shipped one: ``recipes.toml`` beside this module): a table
    ``[recipes.NAME]`` per recipe, which may start from the fields of ``[shared.KEY]`` with ``shared =
    "KEY"``; each is checked as any recipe is."""
    raw = read_toml(path)
    shared, recipes = raw.get("shared", {}), []
    for name, table in raw.get("recipes", {}).items():
        fields = dict(table)
        base = fields.pop("shared", None)
        if base is not None and base not in shared:
            raise invalid(f"{path}: [recipes.{name}] shared", f"one of {', '.join(shared)}", base)
        try:
            recipes.append(Recipe.from_dict({**shared.get(base, {}), **fields, "name": name}))
        except CnnAliasingError as error:
            raise CnnAliasingError(f"{path}: {error}") from None
    return recipes


def _register_shipped() -> None:
    for recipe in read_catalogue(Path(str(resources.files(__package__) / "recipes.toml"))):
        register_recipe(recipe)


_register_shipped()
