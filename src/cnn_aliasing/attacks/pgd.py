"""PGD (Madry et al. 2018) and FGSM (Goodfellow et al. 2015; with a random start, Wong et al. 2020).

:func:`pgd_perturb` and :func:`fgsm` are the building blocks for adversarial training: they work with
the model in train or eval mode, never change its mode, and take gradients with respect to the input
only (the parameters' ``.grad`` stay untouched). :class:`PGD` and :class:`FGSM` wrap them as registered
attacks ("pgd", "fgsm") for evaluation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnn_aliasing.attacks.base import (
    ThreatModel,
    check_options,
    dlr_loss,
    project,
    random_tensor,
    register_attack,
)
from cnn_aliasing.fields import checked
from cnn_aliasing.validation import invalid, is_bool, is_int, is_number

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LOSSES: dict[str, LossFn] = {
    "ce": lambda logits, labels: F.cross_entropy(logits, labels, reduction="none"),
    "dlr": dlr_loss,
}
FGSM_RS_STEP = 1.25  # Wong et al. (2020): step 1.25 eps after a uniform random start
_TINY = 1e-12


def _loss_fn(loss: str | LossFn) -> LossFn:
    """The loss function of a name of :data:`LOSSES` or a callable (checked by ``_is_loss``)."""
    return loss if callable(loss) else LOSSES[str(_is_loss(loss, "loss"))]


def uniform_start(
    images: torch.Tensor, threat: ThreatModel, generator: torch.Generator | None
) -> torch.Tensor:
    """A uniform random point of the eps-ball around each image (Linf: a cube, L2: a ball), in [0, 1]."""
    shape = tuple(images.shape)
    if threat.norm == "Linf":
        delta = (2.0 * random_tensor(shape, generator, images.device) - 1.0) * threat.eps
    else:
        direction = random_tensor(shape, generator, images.device, normal=True)
        norms = direction.flatten(1).norm(dim=1).view(-1, *([1] * (images.dim() - 1)))
        radius = random_tensor(shape[:1], generator, images.device) ** (1.0 / images[0].numel())
        delta = direction / (norms + _TINY) * (threat.eps * radius.view_as(norms))
    return project(images + delta, images, threat)


def _ascend(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    threat: ThreatModel,
    start: torch.Tensor,
    steps: int,
    step_size: float,
    loss_fn: LossFn,
) -> torch.Tensor:
    """``steps`` projected steps of size ``step_size`` up the loss from ``start`` (sign or unit L2 grad)."""
    x = images.detach()
    adv = start.detach()
    for _ in range(steps):
        adv.requires_grad_(True)
        with torch.enable_grad():
            loss = loss_fn(model(adv), labels).sum()
            (grad,) = torch.autograd.grad(loss, [adv])
        if threat.norm == "Linf":
            direction = grad.sign()
        else:
            norms = grad.flatten(1).norm(dim=1).view(-1, *([1] * (grad.dim() - 1)))
            direction = grad / (norms + _TINY)
        adv = project(adv.detach() + step_size * direction, x, threat)
    return adv.detach()


def pgd_perturb(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    threat: ThreatModel,
    steps: int,
    step_size: float,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    loss: str | LossFn = "ce",
) -> torch.Tensor:
    """PGD: the last iterate of ``steps`` projected gradient steps (from a uniform random point of the
    ball if ``random_start``). ``loss`` is "ce", "dlr" or ``f(logits, labels) -> per-example loss``.

    Works inside a training loop (train-mode model, autocast); draws from ``generator`` (or torch's global
    generator when None).
    """
    start = _random_start_or_clean(images, threat, generator, random_start)
    return _ascend(model, images, labels, threat, start, steps, step_size, _loss_fn(loss))


def fgsm(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    threat: ThreatModel,
    *,
    random_start: bool = False,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
    loss: str | LossFn = "ce",
) -> torch.Tensor:
    """FGSM: one signed (Linf) or normalised (L2) gradient step. The step defaults to eps, or to
    1.25 eps after a random start (FGSM-RS, Wong et al. 2020)."""
    if step_size is None:
        step_size = threat.eps * (FGSM_RS_STEP if random_start else 1.0)
    return pgd_perturb(model, images, labels, threat, 1, step_size, random_start, generator, loss)


def _random_start_or_clean(
    images: torch.Tensor, threat: ThreatModel, generator: torch.Generator | None, use: bool
) -> torch.Tensor:
    return uniform_start(images, threat, generator) if use else images.detach().clone()


def _is_loss(value: Any, where: str) -> str | LossFn:
    """A loss name of :data:`LOSSES` or a callable ``f(logits, labels) -> per-example loss``."""
    if callable(value) or (isinstance(value, str) and value in LOSSES):
        return value
    raise invalid(where, f"one of {', '.join(map(repr, LOSSES))} or a callable", value)


def _is_step_size(value: Any, where: str) -> float | None:
    """None (the attack's default step) or a number > 0."""
    return None if value is None else is_number(0.0, open_low=True)(value, where)


@dataclass
class PGD:
    """PGD as an attack: ``restarts`` runs, each on the points still robust; the step size defaults to
    2.5 eps / steps (Madry et al.)."""

    steps: int = field(default=20, metadata=checked(is_int(1)))
    step_size: float | None = field(default=None, metadata=checked(_is_step_size))
    restarts: int = field(default=1, metadata=checked(is_int(1)))
    random_start: bool = field(default=True, metadata=checked(is_bool))
    loss: str | LossFn = field(default="ce", metadata=checked(_is_loss))
    name: str = "pgd"

    def __post_init__(self) -> None:
        check_options(self)

    def step_for(self, eps: float) -> float:
        """The step size used at radius ``eps``."""
        return self.step_size if self.step_size is not None else 2.5 * eps / self.steps

    def __call__(
        self,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        threat: ThreatModel,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Adversarial images: a fooling final iterate where a restart found one, else the clean image."""
        adv = images.clone()
        robust = torch.ones(images.shape[0], dtype=torch.bool, device=images.device)
        for _ in range(self.restarts):
            start = _random_start_or_clean(images, threat, generator, self.random_start)
            idx = robust.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            found = _ascend(
                model,
                images[idx],
                labels[idx],
                threat,
                start[idx],
                self.steps,
                self.step_for(threat.eps),
                _loss_fn(self.loss),
            )
            with torch.inference_mode():
                fooled = (model(found).argmax(dim=1) != labels[idx]).clone()
            robust[idx] = ~fooled
            adv[idx] = torch.where(fooled.view(-1, 1, 1, 1), found, images[idx])
        return adv


@dataclass
class FGSM(PGD):
    """FGSM as an attack: one step of eps, or of 1.25 eps after a uniform random start (FGSM-RS)."""

    steps: int = field(default=1, init=False)
    random_start: bool = field(default=False, metadata=checked(is_bool))
    name: str = "fgsm"

    def step_for(self, eps: float) -> float:
        """eps (FGSM) or 1.25 eps (FGSM-RS) unless ``step_size`` is given."""
        if self.step_size is not None:
            return self.step_size
        return eps * (FGSM_RS_STEP if self.random_start else 1.0)


register_attack("pgd", PGD)  # 20 steps of 2.5 eps / steps, random start, 1 restart, cross-entropy
register_attack("fgsm", FGSM)  # random_start=True: FGSM-RS
