"""What every attack is: a registry entry that perturbs a batch within an eps-ball around it.

An attack is called on a batch the model classifies correctly (the caller filters) and returns
adversarial images of the same shape, inside the eps-ball of the given norm around the images and inside
[0, 1]. Attacks never change the model (it is in eval mode, parameters untouched) and draw all their
randomness from the ``torch.Generator`` they are given, so a fixed seed repeats a run exactly on a given
device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import nn

from cnn_aliasing.errors import UnknownNameError

Norm = Literal["Linf", "L2"]
NORMS: tuple[Norm, ...] = ("Linf", "L2")


@dataclass(frozen=True)
class ThreatModel:
    """The set of allowed perturbations: an eps-ball of the given norm, intersected with [0, 1]."""

    norm: Norm
    eps: float


class Attack(Protocol):
    """An attack: ``attack(model, images, labels, threat, generator) -> adversarial images``."""

    name: str

    def __call__(
        self,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        threat: ThreatModel,
        generator: torch.Generator,
    ) -> torch.Tensor: ...


AttackFactory = Callable[..., Attack]
_ATTACKS: dict[str, AttackFactory] = {}


def register_attack(name: str) -> Callable[[AttackFactory], AttackFactory]:
    """Register an attack factory (a class or function taking keyword options) under ``name``."""

    def decorate(factory: AttackFactory) -> AttackFactory:
        if name in _ATTACKS:
            raise ValueError(f"attack {name!r} is registered twice")
        _ATTACKS[name] = factory
        return factory

    return decorate


def create_attack(name: str, **options: object) -> Attack:
    """Build a registered attack with its options; an unknown name lists the valid ones."""
    if name not in _ATTACKS:
        raise UnknownNameError(f"unknown attack {name!r}; valid: {', '.join(sorted(_ATTACKS))}")
    return _ATTACKS[name](**options)


def list_attacks() -> list[str]:
    """Names of the registered attacks, sorted."""
    return sorted(_ATTACKS)


def project(adv: torch.Tensor, images: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
    """Project ``adv`` onto the eps-ball around ``images`` (per example) and then onto [0, 1].

    For Linf this is exact (clip, then clamp to [0, 1] stays inside the box intersection). For L2 the
    ball projection comes first, then the clamp, as the reference AutoAttack does.
    """
    delta = adv - images
    if threat.norm == "Linf":
        delta = delta.clamp(-threat.eps, threat.eps)
    else:
        norms = delta.flatten(1).norm(dim=1).clamp(min=1e-12)
        factor = (threat.eps / norms).clamp(max=1.0)
        delta = delta * factor.view(-1, *([1] * (delta.dim() - 1)))
    return (images + delta).clamp(0.0, 1.0)
