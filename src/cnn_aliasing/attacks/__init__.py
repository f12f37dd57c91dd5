"""Robust accuracy: AutoAttack and its parts (APGD, FAB, Square), PGD and FGSM.

Importing this package registers the built-in attacks: "apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t",
"square", "pgd", "fgsm"; ``attack_options(name)`` lists the options ``create_attack(name, **options)``
takes.
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
    check_options,
    create_attack,
    dlr_loss,
    list_attacks,
    margin,
    option,
    per_example_norm,
    project,
    random_tensor,
    register_attack,
    targeted_dlr_loss,
)
from cnn_aliasing.attacks.pgd import FGSM, PGD, fgsm, pgd_perturb, uniform_start
from cnn_aliasing.attacks.robust import RobustAccuracy, parse_eps, robust_accuracy

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
    "check_options",
    "create_attack",
    "dlr_loss",
    "fgsm",
    "list_attacks",
    "margin",
    "option",
    "parse_eps",
    "per_example_norm",
    "pgd_perturb",
    "project",
    "random_tensor",
    "register_attack",
    "resolve_attacks",
    "robust_accuracy",
    "targeted_dlr_loss",
    "uniform_start",
]
