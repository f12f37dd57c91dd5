"""AutoAttack (Croce and Hein 2020): presets of attacks run as a cascade, and the reference's sanity checks.

Presets (as fra31/auto-attack's ``version=``):

- ``standard``: APGD-CE (100 iterations, 1 restart), APGD-T (targeted DLR, top 9 classes, 100
  iterations), FAB-T (9 targets, 100 iterations), Square (5,000 queries, p_init 0.8), for Linf and L2.
- ``standard-reference``: ``standard`` with ``reference=True`` for APGD and FAB: the reference's order of
  work and random stream, so a run can be checked point by point against fra31/auto-attack (on a GPU
  too); ``standard`` gives the same verdicts with less work (finished points and targets drop out).
- ``apgd-ce`` and ``apgd-ce+apgd-t``: the cheaper first stages of ``standard``.
- ``rand``: for randomised models, APGD-CE and APGD-DLR with 20 EoT iterations each (the reference's
  ``version='rand'`` runs ``['apgd-ce', 'apgd-dlr']`` with ``eot_iter=20``).
- custom: any list of registered attack names (or attack objects), or names joined by ``+``.

The cascade itself (each attack sees only the points still robust, from the clean images) runs in
:func:`cnn_aliasing.attacks.robust.robust_accuracy`; this module resolves what to run and checks the model.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import torch
from torch import nn

from cnn_aliasing.attacks.base import Attack, create_attack, list_attacks, per_example_norm
from cnn_aliasing.errors import CnnAliasingError
from cnn_aliasing.registry import Registry
from cnn_aliasing.validation import invalid


class AutoAttackWarning(UserWarning):
    """A sign that the evaluation may be unreliable (the reference AutoAttack's checks)."""


@dataclass(frozen=True)
class Preset:
    """A named list of (attack name, options) run in order; ``randomized`` presets skip that check."""

    attacks: tuple[tuple[str, Mapping[str, Any]], ...]
    description: str
    randomized: bool = False


STANDARD_ATTACKS: tuple[tuple[str, Mapping[str, Any]], ...] = (
    ("apgd-ce", {"n_iter": 100, "n_restarts": 1}),
    ("apgd-t", {"n_iter": 100, "n_restarts": 1, "n_target_classes": 9}),
    ("fab-t", {"n_iter": 100, "n_restarts": 1, "n_target_classes": 9}),
    ("square", {"n_queries": 5000, "p_init": 0.8}),
)
REFERENCE_ATTACKS = tuple(
    (name, {**options, "reference": True}) if name != "square" else (name, options)
    for name, options in STANDARD_ATTACKS
)
PRESETS: Registry[Preset] = Registry("attack preset", describe=lambda preset: preset.description)
"""Named cascades: ``resolve_attacks(name)`` runs a preset's attacks in order."""
PRESETS.register(
    "standard", Preset(STANDARD_ATTACKS, "APGD-CE, APGD-T, FAB-T, Square (RobustBench's AutoAttack)")
)
PRESETS.register(
    "standard-reference",
    Preset(
        REFERENCE_ATTACKS, "standard in the reference's order of work (slower; reproduces it point by point)"
    ),
)
PRESETS.register("apgd-ce", Preset(STANDARD_ATTACKS[:1], "APGD-CE alone"))
PRESETS.register("apgd-ce+apgd-t", Preset(STANDARD_ATTACKS[:2], "APGD-CE then APGD-T"))
PRESETS.register(
    "rand",
    Preset(
        (("apgd-ce", {"n_iter": 100, "eot_iter": 20}), ("apgd-dlr", {"n_iter": 100, "eot_iter": 20})),
        "APGD-CE and APGD-DLR with 20 EoT iterations, for randomised models",
        randomized=True,
    ),
)
TARGETED = {"apgd-t", "fab-t"}


@dataclass
class AttackPlan:
    """What a cascade runs: the attacks in order, the options each was built with, whether randomised."""

    attacks: list[Attack]
    options: list[dict[str, Any]] = field(default_factory=list)
    randomized: bool = False

    @property
    def names(self) -> list[str]:
        """The attacks' names, in order."""
        return [a.name for a in self.attacks]


def resolve_attacks(
    attack: str | Sequence[str | Attack], options: Mapping[str, Mapping[str, Any]] | None = None
) -> AttackPlan:
    """Build the attacks of a preset name, of names joined by ``+``, or of a list of names or attacks.

    ``options`` maps an attack name to options that override (or add to) the preset's for that attack;
    the options of attacks not run are checked too, then ignored. An unknown attack lists the presets and
    the registered attacks; an unknown option or a bad value names the attack and the option.
    """
    by_attack = _options_by_attack(options)
    if isinstance(attack, str):
        if attack in PRESETS:
            preset = PRESETS.get(attack)
            entries: list[tuple[str | Attack, Mapping[str, Any]]] = list(preset.attacks)
            randomized = preset.randomized
        else:
            entries, randomized = [(name.strip(), {}) for name in attack.split("+")], False
    else:
        entries, randomized = [(a, {}) for a in attack], False
    if not entries:
        raise CnnAliasingError("no attack given; " + _valid_names())
    plan = AttackPlan([], randomized=randomized)
    for entry, preset_options in entries:
        if not isinstance(entry, str):
            plan.attacks.append(entry)
            plan.options.append({})
            continue
        if entry not in list_attacks():
            raise CnnAliasingError(f"unknown attack {entry!r}; " + _valid_names())
        merged = {**preset_options, **by_attack.get(entry, {})}
        plan.attacks.append(create_attack(entry, **merged))
        plan.options.append(merged)
    for name, given in by_attack.items():
        if name not in plan.names:
            create_attack(name, **given)
    if len(set(plan.names)) != len(plan.names):
        raise CnnAliasingError(f"an attack is listed twice: {', '.join(plan.names)}")
    return plan


def _options_by_attack(options: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Mapping[str, Any]]:
    """``options`` checked to map registered attack names to mappings of options."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise invalid("attack options", "a mapping of attack names to their options", options)
    unknown = [str(name) for name in options if name not in list_attacks()]
    if unknown:
        raise CnnAliasingError(f"attack options given for unknown {', '.join(unknown)}; " + _valid_names())
    for name, value in options.items():
        if not isinstance(value, Mapping):
            raise invalid(f"the options of attack {name!r}", "a mapping of option names to values", value)
    return dict(options)


def _valid_names() -> str:
    return (
        f"valid presets: {', '.join(PRESETS)}; attacks (for a custom list, joined by '+'): "
        f"{', '.join(list_attacks())}"
    )


# ------------------------------------------------------------------------------------------ sanity checks
def _warn(message: str) -> None:
    warnings.warn(message, AutoAttackWarning, stacklevel=3)


def check_train_mode(model: nn.Module) -> None:
    """Warn if any module is in train mode (dropout, batch statistics: outputs depend on the batch)."""
    training = [name or type(model).__name__ for name, m in model.named_modules() if m.training]
    if training:
        _warn(
            f"the model is in train mode ({training[0]}{' and more' if len(training) > 1 else ''}); "
            "call model.eval() before evaluating robustness"
        )


def check_randomized(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, n: int = 5, alpha: float = 1e-4
) -> None:
    """Warn if ``n`` forward passes disagree (predictions, or normalised logits by more than ``alpha``)."""
    with torch.inference_mode():
        outputs = [model(x) for _ in range(n)]
    units = [o / (o.flatten(1).norm(dim=1, keepdim=True) + 1e-10) for o in outputs]
    correct = torch.stack([(o.argmax(dim=1) == y).sum() for o in outputs])
    spread = torch.stack([per_example_norm(u - units[0], "L2").amax() for u in units[1:]]).amax()
    if bool((correct != correct[0]).any()) or spread.item() > alpha:
        _warn("the model's outputs vary between identical calls: it seems randomised; use attack='rand'")


def check_output_range(model: nn.Module, x: torch.Tensor, alpha: float = 1e-5) -> int:
    """Warn if the outputs look like probabilities rather than logits; return the number of classes."""
    with torch.inference_mode():
        out = model(x)
    if out.dim() != 2:
        raise CnnAliasingError(f"the model must return (N, classes) logits, got shape {tuple(out.shape)}")
    probabilities = (out.max() < 1 + alpha) & (out.min() > -alpha) & ((out.sum(-1) - 1).abs() < alpha).all()
    if bool(probabilities):
        _warn("the model's outputs look like probabilities: attacks need logits (remove the softmax)")
    return out.shape[1]


_GRADIENT_CALLS = frozenset({"grad", "backward", "_make_grads"})


def check_dynamic(model: nn.Module, x: torch.Tensor) -> None:
    """Warn if the forward pass itself computes gradients (a dynamic defense, as the reference checks)."""
    calls = 0
    previous = sys.gettrace()

    def trace(frame: FrameType, event: str, arg: object) -> None:
        nonlocal calls
        if event == "call" and frame.f_code.co_name in _GRADIENT_CALLS:
            calls += 1

    sys.settrace(trace)
    try:
        model(x)
    finally:
        sys.settrace(previous)
    if calls:
        _warn("the forward pass computes gradients: it seems a dynamic defense; AutoAttack may not suffice")


def check_n_classes(n_classes: int, plan: AttackPlan) -> None:
    """Warn where a DLR or targeted attack needs more classes than the model has."""
    for attack in plan.attacks:
        if attack.name == "apgd-dlr" and n_classes < 3:
            _warn(f"apgd-dlr needs at least 3 classes, the model has {n_classes}")
        if attack.name in TARGETED:
            targets = getattr(attack, "n_target_classes", 9)
            if n_classes < 4 and attack.name == "apgd-t":
                _warn(f"apgd-t needs at least 4 classes, the model has {n_classes}")
            elif targets > n_classes - 1:
                _warn(
                    f"{attack.name} asks for {targets} target classes, the model has only {n_classes - 1} "
                    "other classes"
                )


def check_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, plan: AttackPlan) -> None:
    """The reference's checks on one batch, before any attack: train mode, randomness, logits, dynamics."""
    check_train_mode(model)
    if not plan.randomized:
        check_randomized(model, x, y)
    n_classes = check_output_range(model, x)
    check_dynamic(model, x)
    check_n_classes(n_classes, plan)


def check_square(
    per_attack: Sequence[tuple[str, float]], clean_accuracy: float, alpha: float = 0.002
) -> None:
    """Warn if Square (gradient-free) lowered the robust accuracy below every other stage by > ``alpha``:
    the gradient attacks missed points a black-box attack found, a sign of gradient masking."""
    accuracies = dict(per_attack)
    if "square" not in accuracies or len(accuracies) < 2:
        return
    best_other = min([clean_accuracy, *(acc for name, acc in per_attack if name != "square")])
    if accuracies["square"] < best_other - alpha:
        _warn(
            f"Square lowered the robust accuracy by {100 * (best_other - accuracies['square']):.2f} points "
            "after the gradient attacks: a sign of gradient masking; the evaluation may be unreliable "
            "(consider more Square queries and restarts, or an adaptive attack)"
        )
