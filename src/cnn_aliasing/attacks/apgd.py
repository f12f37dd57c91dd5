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

With ``reference=True`` the work is done in the reference's order and the iterations never synchronise
with the host (masked updates instead of index lists), which changes nothing that is computed: with a CPU
generator seeded like the reference's global seed, the adversarial examples equal the reference's bit for
bit on the CPU (random starts are drawn in the same order and shapes: one per run, for the points still
robust), and a GPU run gets the reference's starts (it draws them on the CPU too). The default batches the
targets and drops finished points (see :class:`APGD`): the same verdict per point, less work.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from cnn_aliasing.attacks.base import (
    BATCH_SIZE_OPTION,
    ThreatModel,
    check_options,
    random_tensor,
    register_attack,
    rows_of_finished_points,
    target_groups,
    targeted_dlr_loss,
)
from cnn_aliasing.attacks.base import dlr_loss as _dlr_loss
from cnn_aliasing.fields import checked
from cnn_aliasing.validation import is_bool, is_choice, is_int, is_number

ApgdLoss = Literal["ce", "dlr", "dlr-targeted"]
LOSSES: tuple[ApgdLoss, ...] = ("ce", "dlr", "dlr-targeted")
MOMENTUM = 0.75
STEP_FACTOR = 2.0
_TINY = 1e-12
_COMPACT_EVERY = 4  # iterations between checks for finished points off the CPU (each a host sync)


class ZeroGradientWarning(UserWarning):
    """Some points had an all-zero input gradient: gradient attacks may be unreliable for them."""


@dataclass
class APGD:
    """APGD on one loss; call it as an :class:`~cnn_aliasing.attacks.base.Attack`.

    ``n_restarts`` runs per target (each from a fresh random start, only on points still robust);
    ``eot_iter`` gradients averaged per step (Expectation over Transformation, for randomised models);
    ``n_target_classes`` is used by the targeted loss only (capped at the number of classes - 1).

    By default a run stops working on a point once it is misclassified, and the targeted loss attacks
    several targets of the remaining points in one batch (as many as fit in ``batch_size`` rows; by
    default the number of images given, and :func:`~cnn_aliasing.attacks.robust_accuracy` sets its batch
    size), all of a point's targets stopping when one succeeds. Per point this is the same computation as
    the reference's (same schedule, same steps), so whether a point falls does not change; its random
    starts do, and the adversarial image returned is an earlier misclassified iterate. ``reference=True``
    keeps the reference implementation's order of work instead (targets one after another, every point for
    every iteration, random starts drawn on the CPU): with the same seed it reproduces fra31/auto-attack
    point for point.
    """

    loss: ApgdLoss = "ce"
    n_iter: int = field(default=100, metadata=checked(is_int(1)))
    n_restarts: int = field(default=1, metadata=checked(is_int(1)))
    n_target_classes: int = field(default=9, metadata=checked(is_int(1)))
    eot_iter: int = field(default=1, metadata=checked(is_int(1)))
    rho: float = field(default=0.75, metadata=checked(is_number(0.0, 1.0, open_low=True)))
    reference: bool = field(default=False, metadata=checked(is_bool))
    batch_size: int | None = field(default=None, metadata=BATCH_SIZE_OPTION)
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
        """Adversarial images: a misclassified iterate where a run succeeded, else the clean image."""
        with torch.inference_mode():
            logits = model(images)
        robust = (logits.argmax(dim=1) == labels).clone()
        adv = images.clone()
        targets: torch.Tensor | None = None
        if self.loss == "dlr-targeted":
            n_targets = min(self.n_target_classes, logits.shape[1] - 1)
            order = logits.argsort(dim=1)  # ascending, as the reference (ties keep its order)
            targets = torch.stack([order[:, -c] for c in range(2, n_targets + 2)])
        call = _Call(model, images, labels, targets, threat, generator, robust, adv)
        zero_grads = self._runs(call)
        n_zero = int(zero_grads) if self.loss != "ce" else 0
        if n_zero:
            warnings.warn(
                f"{self.name}: {n_zero} runs (point and target) had a zero gradient at the start; "
                "gradient-based attacks may be unreliable for them (a sign of gradient masking)",
                ZeroGradientWarning,
                stacklevel=2,
            )
        return adv

    def _runs(self, call: _Call) -> torch.Tensor:
        """Every run on the points still robust, in :func:`target_groups` order: a run takes a group of
        targets, its rows (point, target) target-major in one batch, and (unless ``reference``) a point's
        rows stop when one of them succeeds. Where several targets succeed, the earliest target's image is
        kept. Returns the number of zero gradients at the runs' starts."""
        zero_grads = torch.zeros((), dtype=torch.long, device=call.images.device)
        groups = target_groups(
            1 if call.targets is None else call.targets.shape[0],
            self.n_restarts,
            reference=self.reference,
            batch_rows=self.batch_size or call.images.shape[0],
            points_left=lambda: int(call.robust.sum()),
        )
        for first, k, _ in groups:
            idx = call.robust.nonzero().squeeze(1)  # one synchronisation per run, never per iteration
            if idx.numel() == 0:
                break
            group = None if call.targets is None else call.targets[first : first + k][:, idx].reshape(-1)
            owner = None if self.reference else torch.arange(idx.numel(), device=idx.device).repeat(k)
            fooled, found, zeros = self._run_from_random_start(
                call, call.images[idx].repeat(k, 1, 1, 1), call.labels[idx].repeat(k), group, owner=owner
            )
            fooled, found = fooled.view(k, -1), found.view(k, idx.numel(), *call.images.shape[1:])
            point_adv = call.images[idx]
            for j in reversed(range(k)):
                point_adv = torch.where(_rows(fooled[j]), found[j], point_adv)
            call.robust[idx] = ~fooled.any(dim=0)
            call.adv[idx] = point_adv
            zero_grads += zeros
        return zero_grads

    def _run_from_random_start(
        self,
        call: _Call,
        x: torch.Tensor,
        y: torch.Tensor,
        targets: torch.Tensor | None,
        owner: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One :func:`_run` on rows ``x`` from a random start drawn for them (as the reference draws it)."""
        noise = random_tensor(tuple(x.shape), call.generator, x.device, normal=call.threat.norm == "L2")
        start = _random_start(x, noise, call.threat)
        args = (self.loss, targets, call.threat, self.n_iter, self.rho, self.eot_iter)
        return _run(call.model, x, y, start, *args, owner=owner)


@dataclass
class _Call:
    """One call of an APGD attack: its inputs, the targets (targeted loss), and the robust flags and
    adversarial images it updates in place."""

    model: nn.Module
    images: torch.Tensor
    labels: torch.Tensor
    targets: torch.Tensor | None
    threat: ThreatModel
    generator: torch.Generator
    robust: torch.Tensor
    adv: torch.Tensor


def _loss(loss: ApgdLoss, logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """The per-example ``loss`` (targeted DLR towards ``target``)."""
    if loss == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    if loss == "dlr":
        return _dlr_loss(logits, y)
    assert target is not None
    return targeted_dlr_loss(logits, y, target)


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
    model: nn.Module, rows: _Rows, loss: ApgdLoss, eot_iter: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input gradient at ``rows.x_adv`` averaged over ``eot_iter`` passes, logits and per-example loss of
    the last pass)."""
    grad = None
    for _ in range(eot_iter):
        x_req = rows.x_adv.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(x_req)
            values = _loss(loss, logits, rows.y, rows.target)
            (g,) = torch.autograd.grad(values.sum(), [x_req])
        grad = g if grad is None else grad + g
    assert grad is not None
    if eot_iter > 1:
        grad = grad / float(eot_iter)
    return grad, logits.detach(), values.detach()


def _step(rows: _Rows, grad2: torch.Tensor, momentum: float, threat: ThreatModel) -> torch.Tensor:
    """One APGD step from ``rows.x_adv``: gradient step, projection, momentum with the last move,
    projection.

    For Linf, ``rows.low`` and ``rows.high`` bound the eps-cube within [0, 1]; clamping into them selects
    the same values as the reference's clip to the cube followed by the clamp to [0, 1].
    """
    x_adv, grad, step, eps = rows.x_adv, rows.grad, rows.step, threat.eps
    if rows.low is not None and rows.high is not None:
        z = torch.clamp(x_adv + step * grad.sign(), rows.low, rows.high)
        return torch.clamp(x_adv + (z - x_adv) * momentum + grad2 * (1 - momentum), rows.low, rows.high)

    def project_l2(z: torch.Tensor) -> torch.Tensor:
        d = z - rows.x
        dist = _l2(d)
        return (rows.x + d / (dist + _TINY) * torch.clamp(dist, max=eps)).clamp(0.0, 1.0)

    z = project_l2(x_adv + step * (grad / (_l2(grad) + _TINY)))
    return project_l2(x_adv + (z - x_adv) * momentum + grad2 * (1 - momentum))


def _oscillating(loss_steps: torch.Tensor, i: int, k: int, rho: float) -> torch.Tensor:
    """Rows whose loss rose in at most ``rho`` of the last ``k`` steps (the reference's index wrap kept);
    ``loss_steps`` is (rows, n_iter)."""
    current = loss_steps[:, i - k + 1 : i + 1]
    if i - k >= 0:
        previous = loss_steps[:, i - k : i]
    else:  # only at the first checkpoint: the reference's x[-1] is the still-zero last slot
        previous = torch.cat([loss_steps[:, -1:], loss_steps[:, :i]], dim=1)
    rises = (current > previous).sum(dim=1)
    return rises <= k * rho


@dataclass
class _Rows:
    """What an APGD run tracks for each row (a point, or a point and a target); rows leave it together."""

    index: torch.Tensor  # each row's position in the run's input
    owner: torch.Tensor | None  # the point a row attacks: its rows stop when one succeeds
    x: torch.Tensor
    y: torch.Tensor
    target: torch.Tensor | None
    low: torch.Tensor | None  # Linf: the eps-cube within [0, 1]
    high: torch.Tensor | None
    x_adv: torch.Tensor
    x_adv_old: torch.Tensor
    x_best: torch.Tensor
    x_best_adv: torch.Tensor
    grad: torch.Tensor
    grad_best: torch.Tensor
    loss_best: torch.Tensor
    loss_best_last_check: torch.Tensor
    reduced_last_check: torch.Tensor
    step: torch.Tensor
    acc: torch.Tensor
    loss_steps: torch.Tensor  # (rows, n_iter)

    def select(self, keep: torch.Tensor) -> _Rows:
        """The rows where ``keep``."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return dataclasses.replace(self, **{name: v[keep] for name, v in values.items() if v is not None})


def _run(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    start: torch.Tensor,
    loss: ApgdLoss,
    target: torch.Tensor | None,
    threat: ThreatModel,
    n_iter: int,
    rho: float,
    eot_iter: int,
    owner: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One APGD run from ``start``: (fooled mask, last misclassified iterate, number of zero gradients).

    Without ``owner`` every row runs every iteration and the iterations never synchronise with the host.
    With ``owner`` (the point each row attacks), the rows of a point leave the run once one of them is
    misclassified (checked every iteration on the CPU, every ``_COMPACT_EVERY`` on other devices).
    """
    n_iter_2 = max(int(0.22 * n_iter), 1)
    n_iter_min = max(int(0.06 * n_iter), 1)
    size_decr = max(int(0.03 * n_iter), 1)
    every = 1 if x.device.type == "cpu" else _COMPACT_EVERY
    n = x.shape[0]

    low = high = None
    if threat.norm == "Linf":
        low, high = (x - threat.eps).clamp(min=0.0), (x + threat.eps).clamp(max=1.0)
    zeros_n = x.new_zeros(n)
    rows = _Rows(
        index=torch.arange(n, device=x.device),
        owner=owner,
        x=x,
        y=y,
        target=target,
        low=low,
        high=high,
        x_adv=start,
        x_adv_old=start,
        x_best=start,
        x_best_adv=start,
        grad=start,
        grad_best=start,
        loss_best=zeros_n,
        loss_best_last_check=zeros_n,
        reduced_last_check=torch.ones(n, dtype=torch.bool, device=x.device),
        step=torch.full((n, 1, 1, 1), STEP_FACTOR * threat.eps, dtype=x.dtype, device=x.device),
        acc=torch.ones(n, dtype=torch.bool, device=x.device),
        loss_steps=x.new_zeros(n, n_iter),
    )
    fooled_out = torch.zeros(n, dtype=torch.bool, device=x.device)
    found_out = start.clone()
    rows.grad, logits, rows.loss_best = _gradient(model, rows, loss, eot_iter)
    zero_grads = (rows.grad.flatten(1).abs().sum(dim=1) == 0).sum()
    rows.acc = logits.argmax(dim=1) == y
    rows.grad_best, rows.loss_best_last_check = rows.grad, rows.loss_best
    k, since_check = n_iter_2, 0
    for i in range(n_iter):
        if owner is not None and i % every == 0:
            rows = _leave_when_fooled(rows, fooled_out, found_out)
            if rows.index.numel() == 0:
                return fooled_out, found_out, zero_grads
        grad2 = rows.x_adv - rows.x_adv_old
        rows.x_adv_old = rows.x_adv
        rows.x_adv = _step(rows, grad2, MOMENTUM if i > 0 else 1.0, threat)
        rows.grad, logits, values = _gradient(model, rows, loss, eot_iter)

        correct = logits.argmax(dim=1) == rows.y
        rows.acc = rows.acc & correct
        rows.x_best_adv = torch.where(_rows(correct), rows.x_best_adv, rows.x_adv)
        rows.loss_steps[:, i] = values
        better = values > rows.loss_best
        rows.x_best = torch.where(_rows(better), rows.x_adv, rows.x_best)
        rows.grad_best = torch.where(_rows(better), rows.grad, rows.grad_best)
        rows.loss_best = torch.where(better, values, rows.loss_best)

        since_check += 1
        if since_check == k:
            reduce = _oscillating(rows.loss_steps, i, k, rho)
            reduce = reduce | (~rows.reduced_last_check & (rows.loss_best_last_check >= rows.loss_best))
            rows.reduced_last_check, rows.loss_best_last_check = reduce, rows.loss_best
            rows.step = torch.where(_rows(reduce), rows.step / 2.0, rows.step)
            rows.x_adv = torch.where(_rows(reduce), rows.x_best, rows.x_adv)
            rows.grad = torch.where(_rows(reduce), rows.grad_best, rows.grad)
            k, since_check = max(k - size_decr, n_iter_min), 0
    fooled_out[rows.index] = ~rows.acc
    found_out[rows.index] = rows.x_best_adv
    return fooled_out, found_out, zero_grads


def _leave_when_fooled(rows: _Rows, fooled_out: torch.Tensor, found_out: torch.Tensor) -> _Rows:
    """Record the rows of every point with a misclassified row in the outputs; return the others."""
    assert rows.owner is not None
    fooled = ~rows.acc
    leave = rows_of_finished_points(rows.owner, fooled, fooled_out.shape[0])
    if leave is None:
        return rows
    fooled_out[rows.index[leave]] = fooled[leave]
    found_out[rows.index[leave]] = rows.x_best_adv[leave]
    return rows.select(~leave)


register_attack("apgd-ce", APGD, loss="ce", name="apgd-ce")  # AutoAttack standard: 100 iterations, 1 restart
register_attack("apgd-dlr", APGD, loss="dlr", name="apgd-dlr")  # AutoAttack's "rand" version uses it
register_attack("apgd-t", APGD, loss="dlr-targeted", name="apgd-t")  # targeted DLR, top 9 other classes
