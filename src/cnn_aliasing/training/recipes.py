"""Training recipes: a frozen dataclass of every value a run depends on, and a registry of named ones.

A recipe fixes the architecture, the data subset, the objective, the optimiser and its schedule, the
augmentation, the per-epoch tracking and the speed switches. :func:`get_recipe` returns a named recipe
with any field overridden; the values are checked when the recipe is built, so a bad value fails before
any work starts.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cnn_aliasing.errors import CnnAliasingError
from cnn_aliasing.registry import Registry

AUTOCAST_CHOICES = ("auto", "bf16", "off")
EPS_8 = 8 / 255


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

    name: str
    description: str = ""
    arch: str = "preact_resnet18"
    arch_args: Mapping[str, Any] = field(default_factory=lambda: {"normalize": "cifar10"})
    objective: str = "standard"
    epochs: int = 200
    batch_size: int = 512
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "multistep"
    milestones: tuple[int, ...] = (100, 150)
    gamma: float = 0.1
    lr_peak: float = 0.4
    warmup_epochs: float = 0.0
    crop_padding: int = 4
    flip: bool = True
    eps: float = EPS_8
    attack_step: float | None = None
    attack_steps: int = 10
    trades_beta: float = 6.0
    n_train: int | None = None
    subset_seed: int = 0
    seed: int = 0
    eval_every: int = 1
    eval_images: int = 256
    eval_pgd_steps: int = 10
    eval_pgd_step: float = 2 / 255
    eval_sample_channels: int | float | None = None  # per-epoch AM: measure(sample_channels=...); None exact
    overfit_drop: float = 0.2
    autocast: str = "auto"
    channels_last: bool | None = None
    compile: bool = False
    downsample: str = "strided"

    def __post_init__(self) -> None:
        object.__setattr__(self, "arch_args", dict(self.arch_args))
        if self.downsample != "strided" and "downsample" not in self.arch_args:
            self.arch_args["downsample"] = self.downsample  # type: ignore[index]  # a dict, made just above
        object.__setattr__(self, "milestones", tuple(self.milestones))
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


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)  # type: ignore[arg-type]


def _validate(recipe: Recipe) -> None:
    """Raise CnnAliasingError naming the first field with a bad value and what would be valid."""
    from cnn_aliasing.models import list_models
    from cnn_aliasing.training.objectives import list_objectives
    from cnn_aliasing.training.schedules import list_schedules

    def bad(name: str, valid: str) -> CnnAliasingError:
        value = getattr(recipe, name)
        return CnnAliasingError(f"recipe {recipe.name!r}: field {name}={value!r} is invalid; {valid}")

    choices: dict[str, list[str]] = {
        "arch": list_models(),
        "objective": list_objectives(),
        "schedule": list_schedules(),
        "autocast": list(AUTOCAST_CHOICES),
    }
    for name, valid in choices.items():
        if getattr(recipe, name) not in valid:
            raise bad(name, f"valid: {', '.join(valid)}")
    positive_ints = ("epochs", "batch_size", "attack_steps", "eval_images", "eval_pgd_steps")
    for name in positive_ints:
        if not _is_int(getattr(recipe, name)) or getattr(recipe, name) < 1:
            raise bad(name, "expected an integer >= 1")
    for name in ("crop_padding", "eval_every", "seed", "subset_seed"):
        if not _is_int(getattr(recipe, name)) or getattr(recipe, name) < 0:
            raise bad(name, "expected an integer >= 0")
    non_negative = (
        "lr",
        "momentum",
        "weight_decay",
        "gamma",
        "warmup_epochs",
        "eps",
        "trades_beta",
        "eval_pgd_step",
    )
    for name in non_negative:
        if not _is_number(getattr(recipe, name)) or getattr(recipe, name) < 0:
            raise bad(name, "expected a finite number >= 0")
    for name in ("lr_peak", "overfit_drop"):
        if not _is_number(getattr(recipe, name)) or not 0 <= getattr(recipe, name) <= 1:
            raise bad(name, "expected a number in [0, 1]")
    for name in ("nesterov", "flip", "compile"):
        if not isinstance(getattr(recipe, name), bool):
            raise bad(name, "expected true or false")
    if recipe.channels_last is not None and not isinstance(recipe.channels_last, bool):
        raise bad("channels_last", "expected true, false, or None to choose per device (CUDA only)")
    if recipe.attack_step is not None and (not _is_number(recipe.attack_step) or recipe.attack_step <= 0):
        raise bad("attack_step", "expected a number > 0, or None for the objective's default")
    sample = recipe.eval_sample_channels
    if sample is not None and not (
        (_is_int(sample) and sample >= 1) or (isinstance(sample, float) and 0 < sample <= 1)
    ):
        raise bad(
            "eval_sample_channels",
            "expected an integer >= 1 (channels of each op), a number in (0, 1] (that fraction of each "
            "op's channels), or None to measure every channel",
        )
    if recipe.n_train is not None and (not _is_int(recipe.n_train) or recipe.n_train < 1):
        raise bad("n_train", "expected an integer >= 1, or None for the whole train split")
    if not all(_is_int(m) and m >= 1 for m in recipe.milestones) or list(recipe.milestones) != sorted(
        recipe.milestones
    ):
        raise bad("milestones", "expected increasing epochs >= 1, e.g. [100, 150]")
    if not all(isinstance(k, str) for k in recipe.arch_args):
        raise bad("arch_args", "expected a mapping of argument names to values")
    from cnn_aliasing.antialias import downsample_choices

    if recipe.downsample not in downsample_choices():
        raise bad("downsample", f"valid: {', '.join(downsample_choices())}")
    if recipe.arch_args.get("downsample", recipe.downsample) != recipe.downsample:
        raise bad("downsample", f"arch_args sets downsample={recipe.arch_args['downsample']!r}; set only one")


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


def _register_all(*recipes: Callable[[], Recipe]) -> None:
    for make in recipes:
        register_recipe(make())


_SMALL_ARCH_ARGS = {"width": 16, "normalize": "cifar10"}
_SMALL: dict[str, Any] = {
    "arch_args": _SMALL_ARCH_ARGS,
    "n_train": 10_000,
    "batch_size": 128,
    "lr": 0.05,  # 0.1 to 0.2 diverges within an epoch on this model without a BN before its classifier
    "schedule": "cyclic",
    "milestones": (),
}

_register_all(
    lambda: Recipe(
        name="paper-baseline",
        description="the study's normal training: 200 epochs, batch 512, SGD 0.1 (/10 at 100 and 150)",
        warmup_epochs=1.0,  # without it PreAct ResNet-18 (no BN before its classifier) diverges in epoch 1
    ),
    lambda: Recipe(
        name="pgd-at",
        description="PGD-AT (Madry et al.): Linf 8/255, 10 steps of 2/255; lr 0.05 /10 at 100 and 150",
        objective="pgd-at",
        batch_size=128,
        lr=0.05,  # 0.1 diverged in 2 epochs on this model (no BN before its classifier), fp32 and bf16
        warmup_epochs=1.0,
    ),
    lambda: Recipe(
        name="fgsm-rs",
        description="fast FGSM-RS training (Wong et al. 2020): step 1.25 eps, cyclic lr up to 0.2, 15 epochs",
        objective="fgsm-rs",
        epochs=15,
        batch_size=128,
        lr=0.2,
        schedule="cyclic",
        milestones=(),
    ),
    lambda: Recipe(
        name="fgsm",
        description="plain FGSM training (no random start, step eps), as fgsm-rs: overfits catastrophically",
        objective="fgsm",
        epochs=15,
        batch_size=128,
        lr=0.2,
        schedule="cyclic",
        milestones=(),
    ),
    lambda: Recipe(
        name="trades",
        description="TRADES (Zhang et al. 2019): beta 6, KL inner maximisation, 10 steps of 2/255; as pgd-at",
        objective="trades",
        batch_size=128,
        lr=0.05,  # as pgd-at
        warmup_epochs=1.0,
    ),
    lambda: Recipe(
        name="small-standard",
        description="SMALL: width-16 PreAct ResNet-18, 10,000 train images, 6 epochs; minutes on 2 CPU cores",
        epochs=6,
        **_SMALL,
    ),
    lambda: Recipe(
        name="small-fgsm-rs",
        description="SMALL: FGSM-RS on width-16 PreAct ResNet-18, 10,000 train images, 5 epochs",
        objective="fgsm-rs",
        epochs=5,
        **_SMALL,
    ),
    lambda: Recipe(
        name="small-fgsm",
        description="SMALL: plain FGSM (no random start, step eps) on width-16 PreAct ResNet-18, 5 epochs",
        objective="fgsm",
        epochs=5,
        **_SMALL,
    ),
)
