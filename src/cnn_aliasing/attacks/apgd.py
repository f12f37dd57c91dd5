"""APGD (Croce and Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks"), Linf and L2, with the cross-entropy, DLR and targeted DLR losses.

The schedule follows the reference implementation (fra31/auto-attack, ``autopgd_base.py``): step size
2 eps, momentum 0.75 from the second step on, checkpoints after ``n_iter_2 = max(int(0.22 n), 1)``
iterations and then ever closer (``size_decr = max(int(0.03 n), 1)``, never below ``n_iter_min =
max(int(0.06 n), 1)``); at a checkpoint a point halves its step size and restarts from its best point if
its loss rose in at most ``rho`` (0.75) of the steps since the last checkpoint, or if it was not reduced
at the last checkpoint and its best loss has not improved since. Like the reference, the first check
counts step 0 as a rise when its loss is positive (it compares with the not yet written last slot).
APGD-T attacks the clean top-2 .. top-(n_target_classes + 1) classes in turn with the targeted DLR loss,
each run only on the points still robust.

The iterations never synchronise with the host (masked updates instead of index lists), which changes
nothing that is computed: on the CPU, with a generator seeded like the reference's global seed, the
adversarial examples equal the reference's bit for bit (random starts are drawn in the same order and
shapes: one per run, for the points still robust). On a GPU the starts come from the device's generator.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from cnn_aliasing.attacks.base import (
    ThreatModel,
    check_options,
    option,
    random_tensor,
    register_attack,
    targeted_dlr_loss,
)
from cnn_aliasing.attacks.base import dlr_loss as _dlr_loss
from cnn_aliasing.validation import is_choice, is_int, is_number

ApgdLoss = Literal["ce", "dlr", "dlr-targeted"]
LOSSES: tuple[ApgdLoss, ...] = ("ce", "dlr", "dlr-targeted")
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
MOMENTUM = 0.75
STEP_FACTOR = 2.0
_TINY = 1e-12


class ZeroGradientWarning(UserWarning):
    """Some points had an all-zero input gradient: gradient attacks may be unreliable for them."""


@dataclass
class APGD:
    """APGD on one loss; call it as an :class:`~cnn_aliasing.attacks.base.Attack`.

    ``n_restarts`` runs per target (each from a fresh random start, only on points still robust);
    ``eot_iter`` gradients averaged per step (Expectation over Transformation, for randomised models);
    ``n_target_classes`` is used by the targeted loss only (capped at the number of classes - 1).
    """

    loss: ApgdLoss = "ce"
    n_iter: int = field(default=100, metadata=option(is_int(1)))
    n_restarts: int = field(default=1, metadata=option(is_int(1)))
    n_target_classes: int = field(default=9, metadata=option(is_int(1)))
    eot_iter: int = field(default=1, metadata=option(is_int(1)))
    rho: float = field(default=0.75, metadata=option(is_number(0.0, 1.0, open_low=True)))
    name: str = "apgd-ce"

    def __post_init__(self) -> None:
        is_choice(*LOSSES)(self.loss, f"attack {self.name!r} loss")
        check_options(self)

    def __call__(
        self,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        threat: ThreatModel,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Adversarial images: the last misclassified iterate where a run succeeded, else the clean image."""
        with torch.inference_mode():
            logits = model(images)
        robust = (logits.argmax(dim=1) == labels).clone()
        adv = images.clone()
        if self.loss == "dlr-targeted":
            order = logits.argsort(dim=1).clone()
            n_targets = min(self.n_target_classes, logits.shape[1] - 1)
            targets: list[torch.Tensor | None] = [order[:, -c] for c in range(2, n_targets + 2)]
        else:
            targets = [None]
        zero_grads = torch.zeros((), dtype=torch.long, device=images.device)
        for target in targets:
            for _ in range(self.n_restarts):
                idx = robust.nonzero().squeeze(1)  # one synchronisation per run, never per iteration
                if idx.numel() == 0:
                    return adv
                x, y = images[idx], labels[idx]
                noise = random_tensor(tuple(x.shape), generator, x.device, normal=threat.norm == "L2")
                fooled, found, zeros = _run(
                    model,
                    x,
                    y,
                    _random_start(x, noise, threat),
                    self._loss_fn(None if target is None else target[idx]),
                    threat,
                    self.n_iter,
                    self.rho,
                    self.eot_iter,
                )
                robust[idx] = ~fooled
                adv[idx] = torch.where(_rows(fooled), found, x)
                zero_grads += zeros
        n_zero = int(zero_grads) if self.loss != "ce" else 0
        if n_zero:
            warnings.warn(
                f"{self.name}: {n_zero} points had a zero gradient at the start; gradient-based "
                "attacks may be unreliable for them (a sign of gradient masking)",
                ZeroGradientWarning,
                stacklevel=2,
            )
        return adv

    def _loss_fn(self, target: torch.Tensor | None) -> LossFn:
        if self.loss == "ce":
            return lambda logits, y: F.cross_entropy(logits, y, reduction="none")
        if self.loss == "dlr":
            return _dlr_loss
        assert target is not None
        return lambda logits, y: targeted_dlr_loss(logits, y, target)


def _rows(mask: torch.Tensor) -> torch.Tensor:
    """An (N,) mask as (N, 1, 1, 1) for per-example selection in ``torch.where``."""
    return mask.view(-1, 1, 1, 1)


def _l2(v: torch.Tensor) -> torch.Tensor:
    """Per-example L2 norm, shaped (N, 1, 1, 1)."""
    return _rows(v.square().flatten(1).sum(dim=1).sqrt())


def _random_start(x: torch.Tensor, noise: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
    """The reference's start: the noise scaled to norm eps (Linf: uniform in [-1, 1], max entry to eps)."""
    if threat.norm == "Linf":
        t = 2.0 * noise - 1.0
        scale = _rows(t.abs().flatten(1).amax(dim=1))
    else:
        t, scale = noise, _l2(noise)
    return (x + threat.eps * (t / (scale + _TINY))).clamp(0.0, 1.0)


def _gradient(
    model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, loss_fn: LossFn, eot_iter: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input gradient averaged over ``eot_iter`` passes, logits and per-example loss of the last pass)."""
    grad = None
    for _ in range(eot_iter):
        x_req = x_adv.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(x_req)
            loss = loss_fn(logits, y)
            (g,) = torch.autograd.grad(loss.sum(), [x_req])
        grad = g if grad is None else grad + g
    assert grad is not None
    if eot_iter > 1:
        grad = grad / float(eot_iter)
    return grad, logits.detach(), loss.detach()


def _step(
    x: torch.Tensor,
    x_adv: torch.Tensor,
    grad: torch.Tensor,
    grad2: torch.Tensor,
    step: torch.Tensor,
    momentum: float,
    threat: ThreatModel,
    box: tuple[torch.Tensor, torch.Tensor] | None,
) -> torch.Tensor:
    """One APGD step: gradient step, projection, momentum with the last move, projection.

    For Linf, ``box`` holds the bounds of the eps-cube within [0, 1]; clamping into them selects the same
    values as the reference's clip to the cube followed by the clamp to [0, 1].
    """
    eps = threat.eps
    if box is not None:
        low, high = box
        z = torch.clamp(x_adv + step * grad.sign(), low, high)
        return torch.clamp(x_adv + (z - x_adv) * momentum + grad2 * (1 - momentum), low, high)

    def project_l2(z: torch.Tensor) -> torch.Tensor:
        d = z - x
        dist = _l2(d)
        return (x + d / (dist + _TINY) * torch.clamp(dist, max=eps)).clamp(0.0, 1.0)

    z = project_l2(x_adv + step * (grad / (_l2(grad) + _TINY)))
    return project_l2(x_adv + (z - x_adv) * momentum + grad2 * (1 - momentum))


def _oscillating(loss_steps: torch.Tensor, i: int, k: int, rho: float) -> torch.Tensor:
    """Points whose loss rose in at most ``rho`` of the last ``k`` steps (the reference's index wrap kept)."""
    current = loss_steps[i - k + 1 : i + 1]
    if i - k >= 0:
        previous = loss_steps[i - k : i]
    else:  # only at the first checkpoint: the reference's x[-1] is the still-zero last slot
        previous = torch.cat([loss_steps[-1:], loss_steps[:i]])
    rises = (current > previous).sum(dim=0)
    return rises <= k * rho


def _run(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    start: torch.Tensor,
    loss_fn: LossFn,
    threat: ThreatModel,
    n_iter: int,
    rho: float,
    eot_iter: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One APGD run from ``start``: (fooled mask, last misclassified iterate, number of zero gradients)."""
    n_iter_2 = max(int(0.22 * n_iter), 1)
    n_iter_min = max(int(0.06 * n_iter), 1)
    size_decr = max(int(0.03 * n_iter), 1)

    x_adv = start
    x_best = x_best_adv = x_adv
    loss_steps = x.new_zeros(n_iter, x.shape[0])
    box = None
    if threat.norm == "Linf":
        box = ((x - threat.eps).clamp(min=0.0), (x + threat.eps).clamp(max=1.0))
    grad, logits, loss = _gradient(model, x_adv, y, loss_fn, eot_iter)
    zero_grads = (grad.flatten(1).abs().sum(dim=1) == 0).sum()
    acc = logits.argmax(dim=1) == y
    grad_best, loss_best = grad, loss
    step = torch.full((x.shape[0], 1, 1, 1), STEP_FACTOR * threat.eps, dtype=x.dtype, device=x.device)
    x_adv_old = x_adv
    k, since_check = n_iter_2, 0
    loss_best_last_check = loss_best
    reduced_last_check = torch.ones_like(acc)
    for i in range(n_iter):
        grad2 = x_adv - x_adv_old
        x_adv_old = x_adv
        x_adv = _step(x, x_adv, grad, grad2, step, MOMENTUM if i > 0 else 1.0, threat, box)
        grad, logits, loss = _gradient(model, x_adv, y, loss_fn, eot_iter)

        correct = logits.argmax(dim=1) == y
        acc = acc & correct
        x_best_adv = torch.where(_rows(correct), x_best_adv, x_adv)
        loss_steps[i] = loss
        better = loss > loss_best
        x_best = torch.where(_rows(better), x_adv, x_best)
        grad_best = torch.where(_rows(better), grad, grad_best)
        loss_best = torch.where(better, loss, loss_best)

        since_check += 1
        if since_check == k:
            reduce = _oscillating(loss_steps, i, k, rho)
            reduce = reduce | (~reduced_last_check & (loss_best_last_check >= loss_best))
            reduced_last_check, loss_best_last_check = reduce, loss_best
            step = torch.where(_rows(reduce), step / 2.0, step)
            x_adv = torch.where(_rows(reduce), x_best, x_adv)
            grad = torch.where(_rows(reduce), grad_best, grad)
            k, since_check = max(k - size_decr, n_iter_min), 0
    return ~acc, x_best_adv, zero_grads


register_attack("apgd-ce", APGD, loss="ce", name="apgd-ce")  # AutoAttack standard: 100 iterations, 1 restart
register_attack("apgd-dlr", APGD, loss="dlr", name="apgd-dlr")  # AutoAttack's "rand" version uses it
register_attack("apgd-t", APGD, loss="dlr-targeted", name="apgd-t")  # targeted DLR, top 9 other classes
