"""Training objectives as a registry: each turns a batch into the loss to minimise.

An objective is called as ``objective(model, images, labels, generator, recipe) -> (loss, logits)``:
``loss`` is the batch mean, ``logits`` are the model's outputs on the inputs it was trained on (the
adversarial ones for PGD-AT, FGSM and FGSM-RS, the clean ones for standard training and TRADES), used for the
training accuracy. Adversarial examples come from :mod:`cnn_aliasing.attacks` and draw their random
starts from ``generator``, so an epoch repeats exactly for a given seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from cnn_aliasing.attacks import ThreatModel, pgd_perturb
from cnn_aliasing.attacks.base import random_tensor
from cnn_aliasing.attacks.pgd import FGSM_RS_STEP
from cnn_aliasing.registry import Registry, docstring_line
from cnn_aliasing.runtime import evaluation_mode


class ObjectiveSettings(Protocol):
    """What an objective reads of a recipe (:class:`~cnn_aliasing.training.recipes.Recipe` has it all; a
    protocol here, so that objectives do not import the recipes that check their names)."""

    @property
    def objective(self) -> str: ...
    @property
    def eps(self) -> float: ...
    @property
    def attack_steps(self) -> int: ...
    @property
    def trades_beta(self) -> float: ...
    @property
    def noise_std(self) -> float: ...
    def step_size(self, default_ratio: float) -> float: ...


LossAndLogits = tuple[torch.Tensor, torch.Tensor]
ObjectiveFn = Callable[
    [nn.Module, torch.Tensor, torch.Tensor, torch.Generator, ObjectiveSettings], LossAndLogits
]
PGD_STEP_RATIO = 0.25  # 2/255 at eps 8/255 (Madry et al., Rice et al., TRADES)


@dataclass(frozen=True)
class Objective:
    """A registered objective: its loss function, whether it trains against attacks, and the default
    attack step as a multiple of eps."""

    name: str
    loss: ObjectiveFn
    robust: bool
    step_ratio: float = 0.0
    description: str = ""


OBJECTIVES: Registry[Objective] = Registry("objective", describe=lambda o: o.description)


def register_objective(
    name: str, *, robust: bool, step_ratio: float = 0.0
) -> Callable[[ObjectiveFn], ObjectiveFn]:
    """Register an objective function under ``name``; its docstring's first line describes it."""

    def decorate(fn: ObjectiveFn) -> ObjectiveFn:
        OBJECTIVES.register(name, Objective(name, fn, robust, step_ratio, docstring_line(fn)))
        return fn

    return decorate


def list_objectives() -> list[str]:
    """Names of the registered objectives, sorted."""
    return OBJECTIVES.names()


def get_objective(name: str) -> Objective:
    """The registered objective ``name``; an unknown name lists the valid ones."""
    return OBJECTIVES.get(name)


def attack_step(recipe: ObjectiveSettings) -> float:
    """The attack step the recipe's objective uses (``attack_step`` or its default multiple of eps)."""
    return recipe.step_size(get_objective(recipe.objective).step_ratio)


@register_objective("standard", robust=False)
def standard(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator,
    recipe: ObjectiveSettings,
) -> LossAndLogits:
    """Cross-entropy on the clean images."""
    logits = model(images)
    return F.cross_entropy(logits, labels), logits


@register_objective("gaussian-noise", robust=False)
def gaussian_noise(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator,
    recipe: ObjectiveSettings,
) -> LossAndLogits:
    """Cross-entropy on images with Gaussian noise of std noise_std added (clamped to [0, 1]): a negative
    control that shifts the frequencies a model relies on without adversarial training."""
    noise = random_tensor(tuple(images.shape), generator, images.device, normal=True, dtype=images.dtype)
    noisy = (images + recipe.noise_std * noise).clamp(0.0, 1.0)
    logits = model(noisy)
    return F.cross_entropy(logits, labels), logits


def _adversarial_ce(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator,
    recipe: ObjectiveSettings,
    steps: int,
    random_start: bool = True,
) -> LossAndLogits:
    """Cross-entropy on ``steps``-step PGD examples, from a uniform random start or the clean image
    (model in train mode)."""
    threat = ThreatModel("Linf", recipe.eps)
    adv = pgd_perturb(model, images, labels, threat, steps, attack_step(recipe), random_start, generator)
    logits = model(adv)
    return F.cross_entropy(logits, labels), logits


@register_objective("pgd-at", robust=True, step_ratio=PGD_STEP_RATIO)
def pgd_at(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator,
    recipe: ObjectiveSettings,
) -> LossAndLogits:
    """PGD-AT (Madry et al. 2018): cross-entropy on PGD examples (attack_steps steps, random start)."""
    return _adversarial_ce(model, images, labels, generator, recipe, recipe.attack_steps)


@register_objective("fgsm-rs", robust=True, step_ratio=FGSM_RS_STEP)
def fgsm_rs(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator,
    recipe: ObjectiveSettings,
) -> LossAndLogits:
    """FGSM-RS (Wong et al. 2020): cross-entropy on one step of 1.25 eps from a uniform random start."""
    return _adversarial_ce(model, images, labels, generator, recipe, 1)


@register_objective("fgsm", robust=True, step_ratio=1.0)
def fgsm(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator,
    recipe: ObjectiveSettings,
) -> LossAndLogits:
    """Plain FGSM training (Goodfellow et al. 2015): cross-entropy on one step of eps from the clean image.

    No random start: the fast adversarial training that overfits catastrophically (Wong et al. 2020), the
    setting in which FLC pooling is reported to avoid it (Grabinski et al. 2022).
    """
    return _adversarial_ce(model, images, labels, generator, recipe, 1, random_start=False)


def _kl_to(clean_probs: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Per-example KL(clean || softmax(logits)), the TRADES inner loss (``labels`` are ignored)."""

    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        log_probs = F.log_softmax(logits.float(), dim=1)
        return F.kl_div(log_probs, clean_probs, reduction="none").sum(dim=1)

    return loss


@register_objective("trades", robust=True, step_ratio=PGD_STEP_RATIO)
def trades(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator,
    recipe: ObjectiveSettings,
) -> LossAndLogits:
    """TRADES (Zhang et al. 2019): CE(clean) + beta * KL(clean || adversarial), the KL maximised by PGD.

    As in the reference, the inner maximisation runs with the model in eval mode, and the outer KL keeps
    the gradient through both the clean and the adversarial outputs. The inner PGD starts from a uniform
    random point of the eps-ball (the reference starts 0.001 * N(0, 1) away from the clean image).
    """
    threat = ThreatModel("Linf", recipe.eps)
    with torch.no_grad(), evaluation_mode(model):
        clean_probs = F.softmax(model(images).float(), dim=1)
    with evaluation_mode(model):
        adv = pgd_perturb(
            model,
            images,
            labels,
            threat,
            recipe.attack_steps,
            attack_step(recipe),
            True,
            generator,
            loss=_kl_to(clean_probs),
        )
    logits = model(images)
    adv_log_probs = F.log_softmax(model(adv).float(), dim=1)
    robust = F.kl_div(adv_log_probs, F.softmax(logits.float(), dim=1), reduction="batchmean")
    return F.cross_entropy(logits, labels) + recipe.trades_beta * robust, logits
