"""Robust accuracy: AutoAttack and its parts, PGD and FGSM."""

from cnn_aliasing.attacks.base import (
    NORMS,
    Attack,
    Norm,
    ThreatModel,
    create_attack,
    list_attacks,
    project,
    register_attack,
)

__all__ = [
    "NORMS",
    "Attack",
    "Norm",
    "ThreatModel",
    "create_attack",
    "list_attacks",
    "project",
    "register_attack",
]
