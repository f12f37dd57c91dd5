"""What every attack is: a registry entry that perturbs a batch within an eps-ball around it.

An attack is called on a batch the model classifies correctly (the caller filters) and returns
adversarial images of the same shape, inside the eps-ball of the given norm around the images and inside
[0, 1]. Attacks never change the model (it is in eval mode, parameters untouched) and draw all their
randomness from the ``torch.Generator`` they are given, so a fixed seed repeats a run exactly on a given
device. The generator lives on the images' device (``torch.Generator(device=images.device)``): torch
refuses a CPU generator for CUDA tensors. An attack whose ``reference`` attribute is true (APGD and FAB
in the reference's order of work) gets a CPU generator from the cascade instead and moves its draws to
the device, as fra31/auto-attack does, so that a GPU run draws the reference's random numbers.

A registered attack is a dataclass whose user-settable options are the fields declared with
:func:`cnn_aliasing.fields.checked` (each with its check); :func:`create_attack` refuses any other name
(an :class:`~cnn_aliasing.errors.UnknownKeyError`) and the dataclass's ``__post_init__`` calls
:func:`check_options`, so a bad option is a :class:`CnnAliasingError` naming the attack, the option, what
is valid and the value given, however the attack is built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from torch import nn

from cnn_aliasing.errors import CnnAliasingError
from cnn_aliasing.fields import check_fields, check_keys, checked, field_names
from cnn_aliasing.registry import Registry, docstring_line
from cnn_aliasing.validation import is_choice, is_int, is_number, optional

Norm = Literal["Linf", "L2"]
NORMS: tuple[Norm, ...] = ("Linf", "L2")


@dataclass(frozen=True)
class ThreatModel:
    """The set of allowed perturbations: an eps-ball of the given norm, intersected with [0, 1]."""

    norm: Norm
    eps: float

    def __post_init__(self) -> None:
        is_choice(*NORMS)(self.norm, "threat model norm")
        is_number(0.0)(self.eps, "threat model eps")


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


def check_options(attack: Any) -> None:
    """Check every option field of the dataclass ``attack`` (declared with
    :func:`~cnn_aliasing.fields.checked`); call it from ``__post_init__``. An error names the attack, the
    option, what is valid and the value given."""
    check_fields(attack, f"attack {attack.name!r}", "option")


@dataclass(frozen=True)
class _Registered:
    """A registered attack: its dataclass and the arguments that make it this attack (e.g. its loss)."""

    cls: type
    fixed: Mapping[str, Any]


ATTACKS: Registry[_Registered] = Registry("attack", describe=lambda r: docstring_line(r.cls))


def register_attack(name: str, cls: type, /, **fixed: Any) -> None:
    """Register the attack dataclass ``cls`` under ``name``, built with ``fixed`` arguments (e.g.
    ``loss="ce"``) besides the user's options: the fields ``cls`` declares with ``checked(...)``."""
    ATTACKS.register(name, _Registered(cls, dict(fixed)))


def attack_options(name: str) -> list[str]:
    """The options the registered attack ``name`` takes, in field order."""
    registered = _registered(name)
    return [name for name in field_names(registered.cls) if name not in registered.fixed]


def create_attack(name: str, /, **options: Any) -> Attack:
    """Build a registered attack with its options; an unknown name or option lists the valid ones."""
    registered = _registered(name)
    check_keys(options, attack_options(name), f"attack {name!r}", "option")
    return registered.cls(**registered.fixed, **options)


def _registered(name: str) -> _Registered:
    return ATTACKS.get(name)


def list_attacks() -> list[str]:
    """Names of the registered attacks, sorted."""
    return ATTACKS.names()


BATCH_SIZE_OPTION = checked(optional(is_int(1), "the number of images the attack is given"))
"""The ``batch_size`` option of attacks that may fill a forward pass with more rows than images (a point's
targets, or the next iterations' candidates): the most rows a pass takes."""


def with_batch_size(attack: Attack, batch_size: int) -> Attack:
    """``attack`` with its ``batch_size`` option set to ``batch_size`` where it has the option unset.

    A cascade calls each attack on the points still robust, often fewer than its batch size; this tells the
    attack how many rows its passes may take all the same.
    """
    if dataclasses.is_dataclass(attack) and getattr(attack, "batch_size", 0) is None:
        return dataclasses.replace(attack, batch_size=batch_size)
    return attack


def target_groups(
    n_targets: int, n_restarts: int, *, reference: bool, batch_rows: int, points_left: Callable[[], int]
) -> Iterator[tuple[int, int, int]]:
    """(first target, number of targets, restart) of each run of an attack with ``n_targets`` targets
    (1 for an untargeted loss), in order.

    ``reference``: each target in turn and each restart of it, one target per run, as fra31/auto-attack
    runs them. Otherwise each restart runs the targets in groups, each as many as fit in ``batch_rows``
    rows (a row is a point and a target) for the ``points_left()`` points still robust as it starts.
    """
    if reference:
        for target in range(n_targets):
            for restart in range(n_restarts):
                yield target, 1, restart
        return
    for restart in range(n_restarts):
        first = 0
        while first < n_targets:
            k = min(max(batch_rows // max(points_left(), 1), 1), n_targets - first)
            yield first, k, restart
            first += k


def per_example_norm(delta: torch.Tensor, norm: Norm) -> torch.Tensor:
    """The ``norm`` of each example of ``delta`` (N, ...) as an (N,) tensor."""
    flat = delta.flatten(1)
    if norm == "Linf":
        return flat.abs().amax(dim=1)
    return flat.square().sum(dim=1).sqrt()


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


class AttackInvariantError(RuntimeError):
    """An attack broke its contract: a point outside the eps-ball or [0, 1], or a wrong shape."""


def check_adversarial(
    adv: torch.Tensor, images: torch.Tensor, threat: ThreatModel, *, name: str, atol: float = 1e-5
) -> None:
    """Raise :class:`AttackInvariantError` unless ``adv`` has the images' shape, is finite, lies in [0, 1]
    and within ``threat.eps`` (+ ``atol`` for float32 rounding) of ``images`` per example.

    One host synchronisation; meant once per batch, never inside an attack's iterations.
    """
    if adv.shape != images.shape:
        raise AttackInvariantError(
            f"attack {name!r} returned shape {tuple(adv.shape)}, not {tuple(images.shape)}"
        )
    if adv.numel() == 0:
        return
    dist = per_example_norm(adv - images, threat.norm).amax()
    low, high = torch.aminmax(adv)
    stats = torch.stack([dist, low, high, (~torch.isfinite(adv)).sum().to(dist.dtype)]).tolist()
    dist_v, low_v, high_v, n_bad = stats
    if n_bad or low_v < 0.0 or high_v > 1.0 or not dist_v <= threat.eps + atol:
        raise AttackInvariantError(
            f"attack {name!r} left the threat model ({threat.norm}, eps={threat.eps:.6g}): largest "
            f"{threat.norm} distance {dist_v:.6g}, values in [{low_v:.6g}, {high_v:.6g}], "
            f"{int(n_bad)} not finite"
        )


def random_tensor(
    shape: tuple[int, ...],
    generator: torch.Generator | None,
    device: torch.device,
    *,
    normal: bool = False,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Uniform [0, 1) (or standard normal) noise of ``dtype`` drawn from ``generator`` on its own device,
    then moved to ``device``; ``generator=None`` draws from torch's global generator on ``device``."""
    draw = torch.randn if normal else torch.rand
    if generator is None:
        return draw(shape, device=device, dtype=dtype)
    return draw(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


def rows_of_finished_points(owner: torch.Tensor, success: torch.Tensor, n_points: int) -> torch.Tensor | None:
    """The rows whose point (``owner``, ids below ``n_points``) has a successful row, for an attack that
    runs several rows per point; None when too few to be worth dropping: none on the CPU, under an eighth
    of the rows elsewhere (where dropping rows costs a copy of every row's state). One host sync."""
    done = torch.zeros(n_points, dtype=torch.bool, device=owner.device)
    done[owner[success]] = True
    leave = done[owner]
    n_leave = int(leave.sum())
    enough = n_leave > 0 if owner.device.type == "cpu" else 8 * n_leave >= owner.shape[0]
    return leave if enough else None


def margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``z_y - max_{j != y} z_j`` per example: positive where the label wins."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return true - others.amax(dim=1)


def _need_classes(logits: torch.Tensor, n: int, loss: str) -> None:
    if logits.shape[1] < n:
        raise CnnAliasingError(
            f"the {loss} loss needs at least {n} classes, the model has {logits.shape[1]}; "
            "use the cross-entropy attacks (apgd-ce, pgd, fgsm) for it"
        )


def dlr_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Difference of logits ratio (Croce and Hein 2020), per example: ``-margin / (z_pi1 - z_pi3)``."""
    _need_classes(logits, 3, "DLR")
    top = logits.sort(dim=1).values
    return -margin(logits, labels) / (top[:, -1] - top[:, -3] + 1e-12)


def targeted_dlr_loss(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Targeted DLR, per example: ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``."""
    _need_classes(logits, 4, "targeted DLR")
    top = logits.sort(dim=1).values
    true = logits.gather(1, labels[:, None]).squeeze(1)
    target = logits.gather(1, targets[:, None]).squeeze(1)
    return -(true - target) / (top[:, -1] - 0.5 * (top[:, -3] + top[:, -4]) + 1e-12)
