"""Square Attack (Andriushchenko et al., ECCV 2020), Linf and L2, as AutoAttack runs it.

A score-based black-box attack: random search over square-shaped updates of the perturbation, accepting
an update when it lowers the margin loss ``f_y - max_{k != y} f_k``. Each point stops as soon as it is
misclassified. The window side shrinks with the iteration count by AutoAttack's schedule for ``p`` (the
fraction of pixels a window covers). Linf starts from vertical stripes of +-eps; L2 starts from a grid of
"pyramid" blocks and updates a window by moving the mass of a second window into it.

Deviation from the reference implementation (fra31/auto-attack): the reference draws one window position
(and one set of signs) per iteration for the whole batch; here every point draws its own, as in the paper.
Each point sees the same distribution of updates either way; this makes a point's attack independent of
the other points in the batch.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass, field

import torch
from torch import nn

from cnn_aliasing.attacks.base import BATCH_SIZE_OPTION, ThreatModel, check_options, register_attack
from cnn_aliasing.errors import CnnAliasingError
from cnn_aliasing.fields import checked
from cnn_aliasing.validation import is_bool, is_int, is_number, optional

_P_STEPS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)  # p halves after each of these iterations
_COMPACT_EVERY = 10  # iterations between host-side updates of the set of points still being attacked
_LOOKAHEAD = 8  # most iterations per forward pass off the CPU (where small batches cost launches)
_LOOKAHEAD_CPU = (4, 12)  # most iterations per forward pass on the CPU, and the rows it may fill


def p_schedule(iteration: int, n_queries: int, p_init: float, rescale: bool) -> float:
    """The fraction of pixels a window covers at ``iteration`` (0-based).

    ``p_init`` is halved after iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000; with
    ``rescale`` the iteration is first mapped onto a 10,000-query budget.
    """
    if rescale:
        iteration = int(iteration / n_queries * 10000)
    return p_init / 2 ** bisect_left(_P_STEPS, iteration)


def l2_window_pattern(size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The (size, size) L2 update of unit norm: a positive pyramid on top, a negative one below.

    A pyramid over an (h, w) rectangle has value ``sum_{k=m}^{K-1} 1/(k+1)^2`` at Chebyshev distance
    ``m`` from its centre ``(h // 2, w // 2)``, with ``K = max(h, w) // 2 + 1``.
    """
    top = size // 2
    pattern = torch.cat([_pyramid(top, size), -_pyramid(size - top, size)])
    return (pattern / pattern.norm()).to(device=device, dtype=dtype)


def _pyramid(height: int, width: int) -> torch.Tensor:
    """A pyramid over a (height, width) rectangle scaled to unit L2 norm (see ``l2_window_pattern``)."""
    rings = max(height, width) // 2 + 1
    weights = 1.0 / torch.arange(1, rings + 1, dtype=torch.float64) ** 2
    tail = weights.flip(0).cumsum(0).flip(0)  # tail[m] = sum_{k >= m} weights[k]
    rows = (torch.arange(height) - height // 2).abs()
    cols = (torch.arange(width) - width // 2).abs()
    pyramid = tail[torch.maximum(rows[:, None], cols[None, :])]
    return pyramid / pyramid.norm()


@dataclass(frozen=True)
class Square:
    """Square Attack with the margin loss; ``rescale_schedule=False`` is AutoAttack's setting.

    ``lookahead``: iterations evaluated per forward pass (see :meth:`_run`); more makes fewer, larger
    passes, which pays where a small batch costs more in fixed overhead (Python, kernel launches) than in
    arithmetic; the default depends on the device and the number of points left (:meth:`_lookahead`).
    ``batch_size``: the most rows a pass may take (default: the number of images given;
    ``robust_accuracy`` sets its batch size).
    """

    n_queries: int = field(default=5000, metadata=checked(is_int(1)))
    p_init: float = field(default=0.8, metadata=checked(is_number(0.0, 1.0, open_low=True)))
    n_restarts: int = field(default=1, metadata=checked(is_int(1)))
    rescale_schedule: bool = field(default=False, metadata=checked(is_bool))
    lookahead: int | None = field(
        default=None, metadata=checked(optional(is_int(1), "per device, up to 4 on the CPU and 8 elsewhere"))
    )
    batch_size: int | None = field(default=None, metadata=BATCH_SIZE_OPTION)
    name: str = field(init=False, default="square")

    def __post_init__(self) -> None:
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

        Points the model already misclassifies are returned unchanged. ``images`` are (n, c, h, w);
        the L2 initialisation needs ``h >= 5``.
        """
        if images.dim() != 4:
            raise CnnAliasingError(
                f"the square attack needs images of shape (n, c, h, w), got {tuple(images.shape)}"
            )
        if threat.norm == "L2" and images.shape[2] < 5:
            raise CnnAliasingError(
                f"the square attack in L2 needs images >= 5 pixels high, got {images.shape[2]}"
            )
        with torch.inference_mode():
            robust = model(images).argmax(dim=1) == labels
            adv = images.clone()
            for _ in range(self.n_restarts):
                todo = robust.nonzero().squeeze(1)
                if todo.numel() == 0:
                    break
                x, y = images.index_select(0, todo), labels.index_select(0, todo)
                found = self._run(model, x, y, threat, generator, rows=self.batch_size or images.shape[0])
                fooled = model(found).argmax(dim=1) != y
                adv.index_copy_(0, todo, torch.where(fooled.view(-1, 1, 1, 1), found, x))
                robust.index_copy_(0, todo, ~fooled)
        return adv.clone()  # a normal tensor, usable outside inference mode

    def _run(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        threat: ThreatModel,
        generator: torch.Generator,
        rows: int | None = None,
    ) -> torch.Tensor:
        """One run of random search from a fresh start; returns the best point found for each image.

        Each step evaluates the candidates of the next iterations (see :meth:`_lookahead`; ``rows`` is the
        most rows a pass may take) for every point still correct, all made from
        its current best point, in one forward pass; the iterations up to the first candidate that improves
        some point count as done (that point takes it), the rest are discarded. Every point so follows
        Square's sequence (each candidate made from its best point at that iteration), with fewer, larger
        forward passes once few points remain.
        """
        eps = threat.eps
        if threat.norm == "Linf":
            stripes = _random_signs((x.shape[0], x.shape[1], 1, x.shape[3]), x, generator)
            x_best = (x + eps * stripes).clamp(0.0, 1.0)
        else:
            delta = _l2_init(x, generator)
            x_best = (x + eps * delta / _l2(delta).clamp_min(1e-12)).clamp(0.0, 1.0)
        margin_best = _margin(model(x_best), y)
        patterns: dict[int, torch.Tensor] = {}
        iteration, compact_at = 0, 0
        while iteration < self.n_queries:
            if iteration >= compact_at:  # the points still classified correctly (a host sync)
                active = (margin_best > 0).nonzero().squeeze(1)
                if active.numel() == 0:
                    break
                x_curr, y_curr = x.index_select(0, active), y.index_select(0, active)
                compact_at = iteration + _COMPACT_EVERY
            best_curr, margin_curr = x_best.index_select(0, active), margin_best.index_select(0, active)
            k = min(self._lookahead(x.device, active.numel(), rows or x.shape[0]), self.n_queries - iteration)
            candidates = [
                self._candidate(x_curr, best_curr, iteration + j, threat, patterns, generator)
                for j in range(k)
            ]
            margins = _margin(model(torch.cat(candidates)), y_curr.repeat(k)).view(k, -1)
            improved = (margins < margin_curr) & (margin_curr > 0)
            if k == 1:
                taken, accept = 0, improved[0]
            else:  # the first iteration at which some point improves (a host sync)
                first = torch.where(improved, torch.arange(k, device=x.device).view(-1, 1), k).amin(dim=0)
                taken = min(int(first.min()), k - 1)
                accept = first == taken
            margin_best.index_copy_(0, active, torch.where(accept, margins[taken], margin_curr))
            x_best.index_copy_(0, active, torch.where(accept.view(-1, 1, 1, 1), candidates[taken], best_curr))
            iteration += taken + 1
        return x_best

    def _lookahead(self, device: torch.device, n_active: int, rows: int) -> int:
        """Iterations per forward pass: ``lookahead`` if set; else as many as keep the pass within a
        small batch on the CPU (up to 4 within 12 rows: larger CPU batches cost in proportion) and within
        the batch given elsewhere (up to 8: small GPU batches cost launches more than arithmetic)."""
        if self.lookahead is not None:
            return self.lookahead
        most, budget = _LOOKAHEAD_CPU if device.type == "cpu" else (_LOOKAHEAD, rows)
        return max(min(most, budget // n_active), 1)

    def _candidate(
        self,
        x: torch.Tensor,
        x_best: torch.Tensor,
        iteration: int,
        threat: ThreatModel,
        patterns: dict[int, torch.Tensor],
        generator: torch.Generator,
    ) -> torch.Tensor:
        """The update of ``x_best`` that iteration ``iteration`` tries (window side by the p schedule)."""
        h, w = x.shape[2:]
        p = p_schedule(iteration, self.n_queries, self.p_init, self.rescale_schedule)
        side = round(math.sqrt(p * h * w))
        if threat.norm == "Linf":
            return _linf_update(x, x_best, min(max(side, 1), h, w), threat.eps, generator)
        side = max(side, 3)
        side = min(side + 1 - side % 2, h, w)
        if side not in patterns:
            patterns[side] = l2_window_pattern(side, x.dtype, x.device)
        return _l2_update(x, x_best, patterns[side], threat.eps, generator)


def _margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``f_y - max_{k != y} f_k`` per example: positive while the point is classified correctly."""
    correct = logits.gather(1, y.unsqueeze(1)).squeeze(1)
    others = logits.scatter(1, y.unsqueeze(1), float("-inf")).amax(dim=1)
    return correct - others


def _l2(delta: torch.Tensor) -> torch.Tensor:
    """Per-example L2 norm of (n, c, h, w) ``delta``, shaped (n, 1, 1, 1)."""
    return delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)


def _channel_norm(delta: torch.Tensor) -> torch.Tensor:
    """Per-example, per-channel L2 norm of (n, c, h, w) ``delta``, shaped (n, c, 1, 1)."""
    return delta.square().sum(dim=(2, 3), keepdim=True).sqrt()


def _random_signs(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Independent +-1 of ``shape``, with the dtype and device of ``like``."""
    bits = torch.randint(0, 2, shape, generator=generator, device=like.device)
    return (2 * bits - 1).to(like.dtype)


def _random_corners(
    n: int, side: int, h: int, w: int, like: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-left corners (rows, cols) of ``n`` random side x side windows in an h x w image.

    As in the reference, a corner lies in ``[0, h - side)`` (so the last row and column are reachable
    only by windows of full size).
    """
    rows = torch.randint(0, max(h - side, 1), (n,), generator=generator, device=like.device)
    cols = torch.randint(0, max(w - side, 1), (n,), generator=generator, device=like.device)
    return rows, cols


def _offsets(corners: torch.Tensor, length: int) -> torch.Tensor:
    """(n, length) offsets of every pixel index from each corner."""
    return torch.arange(length, device=corners.device) - corners.unsqueeze(1)


def _window_mask(rows: torch.Tensor, cols: torch.Tensor, side: int, h: int, w: int) -> torch.Tensor:
    """(n, 1, h, w) mask of the side x side windows with the given top-left corners."""
    in_rows = (_offsets(rows, h) >= 0) & (_offsets(rows, h) < side)
    in_cols = (_offsets(cols, w) >= 0) & (_offsets(cols, w) < side)
    return (in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1)


def _linf_update(
    x: torch.Tensor, x_best: torch.Tensor, side: int, eps: float, generator: torch.Generator
) -> torch.Tensor:
    """Set a random window of each image to the clean image +-eps (one random sign per channel)."""
    n, c, h, w = x.shape
    rows, cols = _random_corners(n, side, h, w, x, generator)
    mask = _window_mask(rows, cols, side, h, w)
    signs = _random_signs((n, c, 1, 1), x, generator)
    x_new = torch.where(mask, x_best + 2 * eps * signs, x_best)
    return torch.minimum(torch.maximum(x_new, x - eps), x + eps).clamp(0.0, 1.0)


def _place(
    pattern: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, transpose: torch.Tensor, h: int, w: int
) -> torch.Tensor:
    """(n, 1, h, w) images holding ``pattern`` (transposed where ``transpose``) at the given corners."""
    side = pattern.shape[0]
    r = _offsets(rows, h)
    q = _offsets(cols, w)
    inside = ((r >= 0) & (r < side))[:, :, None] & ((q >= 0) & (q < side))[:, None, :]
    r, q = r.clamp(0, side - 1)[:, :, None], q.clamp(0, side - 1)[:, None, :]
    index = torch.where(transpose.view(-1, 1, 1), q * side + r, r * side + q)
    return torch.where(inside, pattern.flatten()[index], 0.0).unsqueeze(1)


def _l2_init(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The L2 starting direction: a grid of L2 window patterns with random signs and orientations.

    The blocks have side ``h // 5`` and the grid starts ``(h - 5 * side) // 2`` pixels in (rows and
    columns alike, as in the reference); blocks running over the border are cropped.
    """
    n, c, h, w = x.shape
    side = h // 5
    start = (h - 5 * side) // 2
    pattern = l2_window_pattern(side, x.dtype, x.device)
    delta = torch.zeros_like(x)
    for top in range(start, start + (h // side) * side, side):
        for left in range(start, start + (w // side) * side, side):
            transpose = torch.randint(0, 2, (n,), generator=generator, device=x.device).bool()
            signs = _random_signs((n, c, 1, 1), x, generator)
            rows = torch.full((n,), top, device=x.device)
            cols = torch.full((n,), left, device=x.device)
            delta += _place(pattern, rows, cols, transpose, h, w) * signs
    return delta


def _l2_update(
    x: torch.Tensor, x_best: torch.Tensor, pattern: torch.Tensor, eps: float, generator: torch.Generator
) -> torch.Tensor:
    """Move the perturbation mass of a second random window into a first one, with a new pattern on it.

    Per channel, the first window gets its old content (normalised) plus the pattern with a random sign,
    rescaled so that the two windows together keep their energy plus an equal share of what the whole
    perturbation lacks to reach eps; the second window is cleared. The result is rescaled to norm eps.
    """
    n, c, h, w = x.shape
    side = pattern.shape[0]
    delta = x_best - x
    rows, cols = _random_corners(n, side, h, w, x, generator)
    rows2, cols2 = _random_corners(n, side, h, w, x, generator)
    mask = _window_mask(rows, cols, side, h, w)
    mask2 = _window_mask(rows2, cols2, side, h, w)
    transpose = torch.randint(0, 2, (n,), generator=generator, device=x.device).bool()
    signs = _random_signs((n, c, 1, 1), x, generator)
    old = delta * mask
    new = _place(pattern, rows, cols, transpose, h, w) * signs + old / (1e-12 + _channel_norm(old))
    lacking = (eps**2 - _l2(delta).square()).clamp_min(0.0)
    budget = lacking / c + _channel_norm(delta * (mask | mask2)).square()
    new = new / (1e-12 + _channel_norm(new)) * budget.sqrt()
    delta = torch.where(mask, new, torch.where(mask2, 0.0, delta))
    return (x + eps * delta / (1e-12 + _l2(delta))).clamp(0.0, 1.0)


register_attack("square", Square)
