"""Robust accuracy: AutoAttack and its parts (APGD, FAB, Square), PGD and FGSM.

Importing this package registers the built-in attacks: "apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t",
"square", "pgd", "fgsm"; ``attack_options(name)`` lists the options ``create_attack(name, **options)``
takes. The losses, norms and projections the attacks share are in :mod:`cnn_aliasing.attacks.base`.
"""

from cnn_aliasing.attacks import fab, square  # noqa: F401  (register "fab", "fab-t", "square")
from cnn_aliasing.attacks.apgd import APGD, ZeroGradientWarning
from cnn_aliasing.attacks.autoattack import PRESETS, AttackPlan, AutoAttackWarning, Preset, resolve_attacks
from cnn_aliasing.attacks.base import (
    NORMS,
    Attack,
    AttackInvariantError,
    Norm,
    ThreatModel,
    attack_options,
    check_adversarial,
    create_attack,
    list_attacks,
    register_attack,
)
from cnn_aliasing.attacks.pgd import FGSM, PGD, fgsm, pgd_perturb
from cnn_aliasing.attacks.robust import RobustAccuracy, check_radius, robust_accuracy

__all__ = [
    "APGD",
    "FGSM",
    "NORMS",
    "PGD",
    "PRESETS",
    "Attack",
    "AttackInvariantError",
    "AttackPlan",
    "AutoAttackWarning",
    "Norm",
    "Preset",
    "RobustAccuracy",
    "ThreatModel",
    "ZeroGradientWarning",
    "attack_options",
    "check_adversarial",
    "check_radius",
    "create_attack",
    "fgsm",
    "list_attacks",
    "pgd_perturb",
    "register_attack",
    "resolve_attacks",
    "robust_accuracy",
]
