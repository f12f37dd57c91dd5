"""FAB, the fast adaptive boundary attack (Croce & Hein, ICML 2020), as AutoAttack runs it.

FAB looks for a minimally distorted adversarial example: at each step it linearises the decision boundary
around the current iterate, projects both the iterate and the clean image onto that hyperplane (within
the [0, 1] box, in the attacked norm), and moves to a convex combination of the two projections biased
towards the clean image (``alpha_max``), extrapolated by ``eta``. When the iterate is adversarial it is
recorded if it is the closest so far and pulled back towards the clean image by ``beta``.

``fab-t`` is AutoAttack's targeted version: one run per target, the targets being the classes with the
2nd, 3rd, ... highest clean logit, each run on the points still robust. ``fab`` is the untargeted version
(hyperplane of the closest linearised class boundary). As in AutoAttack's FAB there is no final search
after the iterations; random starts (only from the second restart on) draw from the given generator.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from cnn_aliasing.attacks.base import (
    BATCH_SIZE_OPTION,
    Norm,
    ThreatModel,
    check_options,
    random_tensor,
    register_attack,
    rows_of_finished_points,
    target_groups,
)
from cnn_aliasing.fields import checked
from cnn_aliasing.validation import is_bool, is_int, is_number

_NOT_FOUND = 1e10  # distance recorded while no adversarial example has been found
_COMPACT_EVERY = 4  # iterations between checks for finished points off the CPU (each a host sync)


def _norm(delta: torch.Tensor, norm: Norm) -> torch.Tensor:
    """Per-example ``norm`` of ``delta`` (shape (n, ...)) as shape (n,)."""
    flat = delta.flatten(1)
    return flat.abs().amax(dim=1) if norm == "Linf" else flat.norm(dim=1)


def project_onto_hyperplane_box(
    points: torch.Tensor, w: torch.Tensor, c: torch.Tensor, norm: Norm
) -> torch.Tensor:
    """Smallest step ``d`` (in ``norm``) with ``<w, d> = -c`` and ``points + d`` in [0, 1]^D.

    ``points`` and ``w`` are (n, D), ``c`` is (n,): ``c = <w, points> - b`` is the signed value of the
    linear function whose zero set is the hyperplane. Where the hyperplane misses the box the step goes to
    the box corner that gets closest to it. Both norms are the same one-dimensional problem: with
    ``c >= 0`` (flip the sign of ``w`` otherwise) the optimal step is ``d_i = -sign(w_i) min(lam s_i,
    u_i)``, ``u_i`` being the room in the box in direction ``-sign(w_i)`` and ``s_i = 1`` (Linf) or
    ``|w_i|`` (L2), where ``lam >= 0`` solves ``sum_i q_i min(lam, r_i) = c`` with ``q_i = |w_i| s_i`` and
    breakpoints ``r_i = u_i / s_i``. That left side is piecewise linear and increasing in ``lam``, so the
    solution comes from sorting the breakpoints once (exact, no bisection loop).
    """
    flip = torch.where(c < 0, -1.0, 1.0).to(w.dtype)
    w = w * flip.unsqueeze(1)
    c = c * flip
    sign = w.sign()
    room = torch.where(w > 0, points, 1.0 - points)
    abs_w = w.abs()
    scale = torch.ones_like(abs_w) if norm == "Linf" else abs_w
    q = abs_w * scale
    active = abs_w > 1e-12  # smaller weights would overflow the L2 breakpoints; they cannot matter
    q = torch.where(active, q, 0.0)
    breaks = torch.where(active, room / torch.where(active, scale, 1.0), 0.0)

    breaks_sorted, order = breaks.sort(dim=1)
    q_sorted = q.gather(1, order)
    q_total = q.sum(dim=1, keepdim=True)
    below = torch.cumsum(q_sorted * breaks_sorted, dim=1)  # sum_{j<=k} q_j r_j
    above = q_total - torch.cumsum(q_sorted, dim=1)  # sum_{j>k} q_j
    reached = torch.cummax(below + breaks_sorted * above, dim=1).values  # left side at lam = r_(k)
    k = torch.searchsorted(reached, c.unsqueeze(1).contiguous())  # first breakpoint reaching c
    feasible = k.squeeze(1) < points.shape[1]
    zero = torch.zeros_like(below[:, :1])
    below_prev = torch.cat([zero, below], dim=1).gather(1, k)
    above_prev = torch.cat([q_total, above], dim=1).gather(1, k)
    lam = ((c.unsqueeze(1) - below_prev) / above_prev.clamp_min(1e-30)).clamp_min(0.0)
    lam = torch.where(feasible.unsqueeze(1), lam, torch.full_like(lam, float("inf")))
    return torch.where(active, -sign * torch.minimum(lam * scale, room), 0.0)


def _target_classes(logits: torch.Tensor, n_targets: int) -> torch.Tensor:
    """(n_targets, n) targets: the classes with the 2nd, 3rd, ... highest logit."""
    return logits.argsort(dim=1, descending=True)[:, 1 : n_targets + 1].T


@dataclass(frozen=True)
class FAB:
    """FAB attack in the Linf or L2 norm; ``targeted`` gives AutoAttack's FAB-T.

    By default a run stops working on a point once it has an adversarial example within eps, and FAB-T
    runs several targets of the remaining points in one batch (as many as fit in ``batch_size`` rows; by
    default the number of images given, and ``robust_accuracy`` sets its batch size), all of a point's
    targets stopping when one succeeds: the same verdict per point as in the reference's order,
    with a less minimal (but valid) adversarial image. ``reference=True`` keeps the reference's order
    (each target in turn, each point for every iteration).
    """

    targeted: bool = True
    n_target_classes: int = field(default=9, metadata=checked(is_int(1)))
    n_iter: int = field(default=100, metadata=checked(is_int(1)))
    n_restarts: int = field(default=1, metadata=checked(is_int(1)))
    alpha_max: float = field(default=0.1, metadata=checked(is_number(0.0, 1.0)))
    eta: float = field(default=1.05, metadata=checked(is_number(0.0, open_low=True)))
    beta: float = field(default=0.9, metadata=checked(is_number(0.0, 1.0)))
    reference: bool = field(default=False, metadata=checked(is_bool))
    batch_size: int | None = field(default=None, metadata=BATCH_SIZE_OPTION)
    name: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", "fab-t" if self.targeted else "fab")
        check_options(self)

    def __call__(
        self,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        threat: ThreatModel,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Adversarial examples within ``threat`` where found, else the clean images.

        Points the model already misclassifies are returned unchanged (they need no perturbation).
        """
        images = images.detach()
        with torch.inference_mode():
            logits = model(images)
        robust = logits.argmax(dim=1) == labels
        adv = images.clone()
        n_targets = min(self.n_target_classes, logits.shape[1] - 1) if self.targeted else 1
        targets = _target_classes(logits, n_targets) if self.targeted else None
        groups = target_groups(
            n_targets,
            self.n_restarts,
            reference=self.reference,
            batch_rows=self.batch_size or images.shape[0],
            points_left=lambda: int(robust.sum()),
        )
        for first, k, restart in groups:
            todo = robust.nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            rows = todo.repeat(k)  # target-major
            x, y = images.index_select(0, rows), labels.index_select(0, rows)
            row_targets = None if targets is None else targets[first : first + k][:, todo].reshape(-1)
            owner = None if self.reference else torch.arange(todo.numel(), device=x.device).repeat(k)
            found = self._run(model, x, y, row_targets, threat, restart > 0, generator, owner=owner)
            with torch.inference_mode():
                fooled = model(found).argmax(dim=1) != y
            fooled = (fooled & (_norm(found - x, threat.norm) <= threat.eps)).view(k, -1)
            found = found.view(k, todo.numel(), *images.shape[1:])
            point_adv = images.index_select(0, todo)
            for j in reversed(range(k)):
                point_adv = torch.where(fooled[j].view(-1, *[1] * (images.dim() - 1)), found[j], point_adv)
            adv.index_copy_(0, todo, point_adv)
            robust.index_copy_(0, todo, ~fooled.any(dim=0))
        return adv

    def _run(
        self,
        model: nn.Module,
        x0: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        threat: ThreatModel,
        random_start: bool,
        generator: torch.Generator,
        owner: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One FAB run: the closest adversarial example found for each point, or the clean point.

        With ``owner`` (the point each row attacks), the rows of a point leave the run once one of them has
        an adversarial example within eps (checked every iteration on the CPU, every ``_COMPACT_EVERY``
        elsewhere); a row that leaves returns the first such example it found.
        """
        n = x0.shape[0]
        expand = (-1, *[1] * (x0.dim() - 1))
        x1 = _random_start(x0, threat, generator) if random_start else x0.clone()
        best = x0.clone()
        best_out = best
        best_dist = torch.full((n,), _NOT_FOUND, dtype=x0.dtype, device=x0.device)
        index = torch.arange(n, device=x0.device)
        every = 1 if x0.device.type == "cpu" else _COMPACT_EVERY
        for i in range(self.n_iter):
            if owner is not None and i % every == 0 and i > 0:
                leave = rows_of_finished_points(owner, best_dist <= threat.eps, n)
                if leave is not None:
                    best_out = best_out.index_copy(0, index[leave], best[leave])
                    keep = ~leave
                    x0, y, x1, best, best_dist, index, owner = (
                        v[keep] for v in (x0, y, x1, best, best_dist, index, owner)
                    )
                    target = None if target is None else target[keep]
                    if index.numel() == 0:
                        return best_out
            flat0 = x0.flatten(1)
            m = x0.shape[0]
            df, dg = self._closest_boundary(model, x1, y, target, threat.norm)
            w = dg.flatten(1)
            c1 = df
            c0 = df + (w * (flat0 - x1.flatten(1))).sum(dim=1)
            steps = project_onto_hyperplane_box(
                torch.cat([x1.flatten(1), flat0]), torch.cat([w, w]), torch.cat([c1, c0]), threat.norm
            )
            d1, d0 = steps[:m].view_as(x0), steps[m:].view_as(x0)
            a1 = _norm(d1, threat.norm).clamp_min(1e-8)
            a0 = _norm(d0, threat.norm).clamp_min(1e-8)
            alpha = (a1 / (a1 + a0)).clamp(0.0, self.alpha_max).view(expand)
            x1 = ((x1 + self.eta * d1) * (1 - alpha) + (x0 + self.eta * d0) * alpha).clamp(0.0, 1.0)

            with torch.inference_mode():
                is_adv = model(x1).argmax(dim=1) != y
            dist = _norm(x1 - x0, threat.norm)
            better = is_adv & (dist < best_dist)
            best = torch.where(better.view(expand), x1, best)
            best_dist = torch.where(better, dist, best_dist)
            x1 = torch.where(is_adv.view(expand), x0 + (x1 - x0) * self.beta, x1)
        if owner is None:
            return best
        return best_out.index_copy(0, index, best)

    def _closest_boundary(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, norm: Norm
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Value (n,) and input gradient (n, ...) of ``f_k - f_y`` at ``x`` for the boundary to cross.

        Targeted: ``k`` is the target. Untargeted: the class whose linearised boundary is closest in
        ``norm`` (distance ``|f_k - f_y| / ||grad||_dual``).
        """
        xg = x.detach().requires_grad_(True)
        y = y.unsqueeze(1)
        with torch.enable_grad():
            logits = model(xg)
            if target is not None:
                diff = (logits.gather(1, target.unsqueeze(1)) - logits.gather(1, y)).squeeze(1)
                (grad,) = torch.autograd.grad(diff.sum(), xg)
                return diff.detach(), grad
            n_classes = logits.shape[1]
            jac = torch.stack(
                [
                    torch.autograd.grad(logits[:, k].sum(), xg, retain_graph=k < n_classes - 1)[0]
                    for k in range(n_classes)
                ],
                dim=1,
            ).flatten(2)
        logits = logits.detach()
        df = logits - logits.gather(1, y)
        dg = jac - jac.gather(1, y.unsqueeze(2).expand(-1, 1, jac.shape[2]))
        dual = dg.abs().sum(dim=2) if norm == "Linf" else dg.norm(dim=2)
        dist = (df.abs() / (dual + 1e-12)).scatter(1, y, float("inf"))
        k = dist.argmin(dim=1, keepdim=True)
        closest = dg.gather(1, k.unsqueeze(2).expand(-1, 1, dg.shape[2])).squeeze(1)
        return df.gather(1, k).squeeze(1), closest.view_as(x)


def _random_start(x0: torch.Tensor, threat: ThreatModel, generator: torch.Generator) -> torch.Tensor:
    """A random point at distance ``eps / 2`` from ``x0`` in ``threat.norm``, clamped to [0, 1] (drawn on
    the generator's device)."""
    t = random_tensor(tuple(x0.shape), generator, x0.device, normal=threat.norm == "L2", dtype=x0.dtype)
    if threat.norm == "Linf":
        t = 2 * t - 1
    t = t / _norm(t, threat.norm).clamp_min(1e-12).view(-1, *[1] * (x0.dim() - 1))
    return (x0 + 0.5 * threat.eps * t).clamp(0.0, 1.0)


register_attack("fab-t", FAB, targeted=True)
register_attack("fab", FAB, targeted=False)
