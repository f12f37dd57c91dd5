"""Learning-rate schedules as a registry: ``schedule(recipe, t) -> lr`` at training time ``t`` in epochs.

``t`` is fractional (epoch + step / steps per epoch), so a schedule can change the rate every step; the
study's multistep schedule changes it only at whole-epoch milestones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from cnn_aliasing.registry import Registry


class ScheduleSettings(Protocol):
    """What a schedule reads of a recipe (:class:`~cnn_aliasing.training.recipes.Recipe` has it all; a
    protocol here, so that schedules do not import the recipes that check their names)."""

    @property
    def schedule(self) -> str: ...
    @property
    def lr(self) -> float: ...
    @property
    def epochs(self) -> int: ...
    @property
    def lr_peak(self) -> float: ...
    @property
    def milestones(self) -> tuple[int, ...]: ...
    @property
    def gamma(self) -> float: ...
    @property
    def warmup_epochs(self) -> float: ...


Schedule = Callable[[ScheduleSettings, float], float]
SCHEDULES: Registry[Schedule] = Registry("schedule")


def register_schedule(name: str) -> Callable[[Schedule], Schedule]:
    """Register a schedule function under ``name``."""
    return SCHEDULES.decorator(name)


def list_schedules() -> list[str]:
    """Names of the registered schedules, sorted."""
    return SCHEDULES.names()


def learning_rate(recipe: ScheduleSettings, t: float) -> float:
    """The learning rate of ``recipe`` at time ``t`` (in epochs, from 0): its schedule's, scaled by
    ``t / warmup_epochs`` during a linear warm-up (none when ``warmup_epochs`` is 0)."""
    warmup = min(1.0, t / recipe.warmup_epochs) if recipe.warmup_epochs > 0 else 1.0
    return SCHEDULES.get(recipe.schedule)(recipe, t) * warmup


@register_schedule("multistep")
def multistep(recipe: ScheduleSettings, t: float) -> float:
    """``lr`` times ``gamma`` for every milestone epoch reached (the study's: 0.1, /10 at 100 and 150)."""
    passed = sum(1 for m in recipe.milestones if t >= m)
    return recipe.lr * recipe.gamma**passed


@register_schedule("cyclic")
def cyclic(recipe: ScheduleSettings, t: float) -> float:
    """Linear from 0 up to ``lr`` at ``lr_peak * epochs``, then linear down to 0 at ``epochs`` (Wong et
    al.'s one-cycle schedule for fast adversarial training), changing every step."""
    peak = recipe.lr_peak * recipe.epochs
    if t <= peak:
        return recipe.lr * (t / peak if peak > 0 else 1.0)
    return recipe.lr * max(0.0, (recipe.epochs - t) / (recipe.epochs - peak))


@register_schedule("constant")
def constant(recipe: ScheduleSettings, t: float) -> float:
    """``lr`` throughout."""
    return recipe.lr
