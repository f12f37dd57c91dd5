"""Robust accuracy: AutoAttack and its parts, PGD and FGSM."""

from cnn_aliasing.attacks.base import (
    NORMS,
    Attack,
    AttackInvariantError,
    Norm,
    ThreatModel,
    check_adversarial,
    create_attack,
    dlr_loss,
    list_attacks,
    margin,
    per_example_norm,
    project,
    random_tensor,
    register_attack,
    targeted_dlr_loss,
)

__all__ = [
    "NORMS",
    "Attack",
    "AttackInvariantError",
    "Norm",
    "ThreatModel",
    "check_adversarial",
    "create_attack",
    "dlr_loss",
    "list_attacks",
    "margin",
    "per_example_norm",
    "project",
    "random_tensor",
    "register_attack",
    "targeted_dlr_loss",
]
