"""Robust accuracy under an attack cascade (AutoAttack by default), resumable after a kill.

The cascade follows the reference AutoAttack: the clean accuracy first; then each attack in turn runs,
in batches, on the points still robust, each from the clean image with a generator seeded with ``seed``
for every batch; a point counts as robust only if no attack fooled it (the worst case per point).
Each point's logit margin ``z_y - max_{k != y} z_k`` is that of the strongest image found for it: the clean
image's, lowered to the margin of the image an attack returned for it whenever that is lower (read from the
forward pass that finds the fooled points, so it costs nothing more); a broken point's is negative.
With ``state_path`` the evaluation writes its state atomically after every batch (clean and robust flags,
margins, the current attack's points and which of its batches are done); calling again with the same
arguments continues from it, so a kill loses at most the batch in flight and the final numbers equal those
of an uninterrupted run (same device, same batch size).

Under ``torchrun`` (``across_ranks=True``) each attack's batches, the same as in one process, are dealt
round-robin to the ranks (:func:`cnn_aliasing.distributed.shard_batches`); after every round the points
each rank fooled (and their adversarial images) and its batches' margins are gathered on every rank, so
all ranks hold the same flags and margins, equal point by point to one process with the same seed, and
rank 0 alone writes the state. The state records the finished batches by index, so it resumes with any
number of ranks.

Only the clean pass (one forward over the images, before any attack) is not saved batch by batch. The
state and its files are :mod:`cnn_aliasing.attacks.cascade_state`; it records what it belongs to (the attack
settings, the model's identity with the hash of its weights, and the hash of the images and labels), and a
state of another model or other images is refused with :class:`cnn_aliasing.resume.StateMismatchError`.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnn_aliasing import distributed
from cnn_aliasing.attacks.autoattack import AttackPlan, check_model, check_square, resolve_attacks
from cnn_aliasing.attacks.base import (
    NORMS,
    Attack,
    AttackInvariantError,
    ThreatModel,
    check_adversarial,
    margin,
    with_batch_size,
)
from cnn_aliasing.attacks.cascade_state import CascadeState, CascadeStore
from cnn_aliasing.data import to_float
from cnn_aliasing.errors import CnnAliasingError
from cnn_aliasing.identity import data_sha256, model_identity
from cnn_aliasing.resume import StateMismatchError
from cnn_aliasing.runtime import check_unit_range, device_for, on_device, progress_bar, safe_on_cpu
from cnn_aliasing.validation import is_choice, is_int, is_number


@dataclass
class RobustAccuracy:
    """Result of :func:`robust_accuracy`. Accuracies are fractions in [0, 1]; ``per_attack`` lists the
    robust accuracy after each attack of the cascade, ``attack_seconds`` the time each took;
    ``clean_points`` and ``robust_points`` flag each image classified correctly before and after the
    attacks, ``margins`` (float64) is each image's logit margin ``z_y - max_{k != y} z_k`` at the strongest
    image found for it (the clean image's unless an attack returned one of lower margin; negative where
    broken); ``world_size`` and ``backend`` tell how many processes computed it (see
    :mod:`cnn_aliasing.distributed`)."""

    clean_accuracy: float
    robust_accuracy: float
    per_attack: list[tuple[str, float]]
    n_images: int
    eps: float
    norm: str
    seed: int
    elapsed: float
    attack: str
    attack_seconds: list[tuple[str, float]] = field(default_factory=list)
    adversarial: torch.Tensor | None = field(default=None, repr=False)
    model: dict[str, Any] = field(default_factory=dict)
    data_sha256: str | None = None
    clean_points: torch.Tensor | None = field(default=None, repr=False)
    robust_points: torch.Tensor | None = field(default=None, repr=False)
    margins: torch.Tensor | None = field(default=None, repr=False)
    world_size: int = 1
    backend: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of everything but the adversarial images and the per-point flags and margins."""
        return {
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy,
            "per_attack": [{"attack": n, "robust_accuracy": a} for n, a in self.per_attack],
            "attack_seconds": [{"attack": n, "seconds": s} for n, s in self.attack_seconds],
            "n_images": self.n_images,
            "eps": self.eps,
            "norm": self.norm,
            "seed": self.seed,
            "elapsed": self.elapsed,
            "attack": self.attack,
            "model": self.model,
            "data_sha256": self.data_sha256,
            "world_size": self.world_size,
            "backend": self.backend,
        }


def check_radius(eps: float, norm: str, image_shape: tuple[int, ...] | None = None) -> None:
    """Refuse a radius a user cannot have meant, for images in [0, 1]: eps of 0 or less (it attacks
    nothing), a Linf eps of 1 or more (the whole pixel range: 8 where 8/255 was meant), and, given the shape
    of one image, an L2 eps above the diameter of [0, 1]^n, sqrt(n). The error suggests the /255 form."""
    if eps <= 0:
        raise CnnAliasingError(
            f"eps must be above 0, got {eps:g}: a radius of 0 attacks nothing (robust accuracy would be the "
            "clean accuracy); give e.g. 8/255"
        )
    if norm == "Linf" and eps >= 1:
        raise CnnAliasingError(
            f"a Linf eps of {eps:g} covers the whole pixel range: images are in [0, 1], so every image can "
            f"be changed into any other; did you mean {eps:g}/255 ({eps / 255:.4g})?"
        )
    if norm == "L2" and image_shape is not None:
        diameter = math.sqrt(math.prod(image_shape))
        if eps > diameter:
            raise CnnAliasingError(
                f"an L2 eps of {eps:g} is above {diameter:.4g}, the largest L2 distance between two images "
                f"of shape {tuple(image_shape)} in [0, 1]; did you mean {eps:g}/255 ({eps / 255:.4g})?"
            )


# ---------------------------------------------------------------------------------------- the evaluation
def _as_images(images: torch.Tensor) -> torch.Tensor:
    if images.dim() != 4:
        raise CnnAliasingError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    images = to_float(images.detach())
    check_unit_range(images)
    return images.cpu()


def _check_arguments(
    images: torch.Tensor, labels: torch.Tensor, eps: float, norm: str, batch_size: int
) -> torch.Tensor:
    is_choice(*NORMS)(norm, "norm")
    is_number(0.0)(eps, "eps")
    is_int(1)(batch_size, "batch_size")
    if labels.shape != (images.shape[0],):
        raise CnnAliasingError(
            f"labels must be ({images.shape[0]},) to match the images, got {tuple(labels.shape)}"
        )
    return labels.detach().to(torch.int64).cpu()


def _attack_label(attack: str | Sequence[str | Attack], plan: AttackPlan) -> str:
    return attack if isinstance(attack, str) else "+".join(plan.names)


def robust_accuracy(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    *,
    norm: str = "Linf",
    attack: str | Sequence[str | Attack] = "standard",
    batch_size: int = 500,
    seed: int = 0,
    device: str | torch.device | None = None,
    state_path: str | os.PathLike[str] | None = None,
    return_adversarial: bool = False,
    progress: bool = True,
    attack_options: Mapping[str, Mapping[str, Any]] | None = None,
    channels_last: bool = False,
    across_ranks: bool = False,
) -> RobustAccuracy:
    """Clean and robust accuracy of ``model`` on ``images`` (N x C x H x W in [0, 1], or uint8) under
    ``attack`` at radius ``eps`` of ``norm`` ("Linf" or "L2").

    ``attack``: a preset ("standard", "apgd-ce", "apgd-ce+apgd-t", "rand"), registered attack names joined
    by "+", or a list of names or attack objects; ``attack_options`` overrides options per attack name
    (e.g. ``{"apgd-ce": {"n_iter": 20}}``). ``device`` defaults to the model's; the model is moved there
    (and back) and left in its mode, which should be eval (the checks warn otherwise). ``state_path``
    makes the run resumable (see the module docstring). ``channels_last`` runs the model in that memory
    format (often faster for convolutions on GPUs, may change float rounding; off by default; on the CPU it
    runs with oneDNN off, see :func:`cnn_aliasing.runtime.use_channels_last`). ``across_ranks``: share
    the batches among the ranks of the process group (see the module docstring); every rank calls with the
    same arguments and gets the same result; only rank 0 writes the state and shows progress.
    """
    flat = _as_images(images)
    labels = _check_arguments(flat, labels, eps, norm, batch_size)
    plan = resolve_attacks(attack, attack_options)
    threat = ThreatModel(norm, float(eps))  # type: ignore[arg-type]
    target = device_for(model, device)
    path = None if state_path is None else Path(state_path)
    config = {
        "attacks": plan.names,
        "options": json.loads(json.dumps(plan.options, default=repr)),
        "eps": threat.eps,
        "norm": norm,
        "seed": seed,
        "batch_size": batch_size,
        "n_images": flat.shape[0],
        "data_sha256": data_sha256(images.detach(), labels),  # as given: uint8 images hash as uint8
        "model": model_identity(model),
        "return_adversarial": return_adversarial,
    }
    context = distributed.current() if across_ranks else distributed.SINGLE
    store = CascadeStore(path if context.is_main else None, return_adversarial)
    opened = _open_state(store, config, flat) if context.is_main else None
    state, adversarial = _raise_error(distributed.broadcast_object(opened, ctx=context))

    start = time.perf_counter()
    elapsed_before = state.elapsed
    with on_device(model, target, channels_last=channels_last), safe_on_cpu(model, target):
        if flat.shape[0]:
            first = _to(flat[:batch_size], target, channels_last)
            check_model(model, first, labels[:batch_size].to(target), plan)
        runner = _Cascade(
            model,
            flat,
            labels,
            threat,
            plan,
            batch_size,
            seed,
            target,
            channels_last,
            progress,
            context,
        )
        runner.run(state, store, adversarial, lambda: elapsed_before + time.perf_counter() - start)
    assert state.clean is not None and state.robust is not None
    n = max(flat.shape[0], 1)
    clean_acc, robust_acc = state.clean.sum().item() / n, state.robust.sum().item() / n
    if bool((state.robust & ~state.clean).any()) or robust_acc > clean_acc:
        raise AttackInvariantError("robust accuracy exceeds clean accuracy: a point became robust again")
    check_square(state.per_attack, clean_acc)
    return RobustAccuracy(
        clean_accuracy=clean_acc,
        robust_accuracy=robust_acc,
        per_attack=list(state.per_attack),
        n_images=flat.shape[0],
        eps=threat.eps,
        norm=norm,
        seed=seed,
        elapsed=state.elapsed,
        attack=_attack_label(attack, plan),
        attack_seconds=list(state.attack_seconds),
        adversarial=adversarial,
        model=config["model"],
        data_sha256=config["data_sha256"],
        clean_points=state.clean.clone(),
        robust_points=state.robust.clone(),
        margins=None if state.margins is None else state.margins.clone(),
        **context.meta(),
    )


_Opened = tuple[CascadeState, torch.Tensor | None]


def _open_state(
    store: CascadeStore, config: dict[str, Any], flat: torch.Tensor
) -> _Opened | StateMismatchError:
    """The state to start from (read from the state file if there is one, else new and written) with the
    adversarial images it has, or the error that refused the file (to be raised on every rank)."""
    try:
        state = store.load(config)
    except StateMismatchError as error:
        return error
    if state is None:
        state = CascadeState(config)
        store.clear_adversarial()
        store.save(state)
    adversarial = None
    if config["return_adversarial"]:
        adversarial = flat.clone()
        store.load_adversarial(adversarial, state)
    return state, adversarial


def _raise_error(opened: _Opened | StateMismatchError | None) -> _Opened:
    if not isinstance(opened, tuple):
        raise opened or StateMismatchError("rank 0 sent no state")
    return opened


def _to(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@dataclass
class _Cascade:
    model: nn.Module
    images: torch.Tensor
    labels: torch.Tensor
    threat: ThreatModel
    plan: AttackPlan
    batch_size: int
    seed: int
    device: torch.device
    channels_last: bool
    progress: bool
    context: distributed.Context

    def _batches(self, points: torch.Tensor) -> list[torch.Tensor]:
        return list(points.split(self.batch_size)) if points.numel() else []

    def _rounds(self, batches: Sequence[int]) -> list[int | None]:
        """This rank's batch of each round over ``batches`` (None where it has none in that round)."""
        mine = distributed.shard_batches(len(batches), self.context)
        return [
            batches[mine[k]] if k < len(mine) else None
            for k in range(distributed.rounds(len(batches), self.context))
        ]

    def run(
        self,
        state: CascadeState,
        store: CascadeStore,
        adversarial: torch.Tensor | None,
        clock: Callable[[], float],
    ) -> None:
        if state.clean is None:
            state.clean, state.margins = self._clean_pass()
            state.robust = state.clean.clone()
            state.elapsed = clock()
            store.save(state)
        assert state.robust is not None and state.margins is not None
        for stage, planned in enumerate(self.plan.attacks):
            if stage < len(state.per_attack):
                continue
            attack = with_batch_size(planned, self.batch_size)
            if state.stage_points is None:
                state.stage_points = state.robust.nonzero().squeeze(1)
                state.batches_done, state.stage_seconds = set(), 0.0
            batches = self._batches(state.stage_points)
            pending = [b for b in range(len(batches)) if b not in state.batches_done]
            bar = progress_bar(
                show=self.progress,
                context=self.context,
                total=len(batches),
                initial=len(state.batches_done),
                desc=attack.name,
            )
            with bar:
                for mine in self._rounds(pending):
                    began = time.perf_counter()
                    outcome = None if mine is None else (mine, *self._attack_batch(attack, batches[mine]))
                    finished = [
                        o for o in distributed.all_gather_object(outcome, self.context) if o is not None
                    ]
                    for b, fooled_index, fooled_adv, margins in finished:
                        index = batches[b]
                        state.margins[index] = torch.minimum(state.margins[index], margins)
                        state.robust[fooled_index] = False
                        if adversarial is not None:
                            adversarial[fooled_index] = fooled_adv
                            store.save_adversarial(stage, b, fooled_index, fooled_adv)
                        state.batches_done.add(b)
                    state.stage_seconds += time.perf_counter() - began
                    state.elapsed = clock()
                    store.save(state)
                    bar.update(len(finished))
                    bar.set_postfix(robust=f"{state.robust.float().mean().item():.2%}")
            state.per_attack.append((attack.name, state.robust.sum().item() / max(len(state.robust), 1)))
            state.attack_seconds.append((attack.name, state.stage_seconds))
            state.stage_points, state.batches_done, state.stage_seconds = None, set(), 0.0
            state.elapsed = clock()
            store.save(state)
        state.elapsed = clock()
        store.save(state)

    def _clean_pass(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Which images the model classifies correctly, and their logit margins (float64), from one
        forward pass (each rank classifies its batches, all get all)."""
        n = self.images.shape[0]
        flags = torch.zeros(n, dtype=torch.bool)
        margins = torch.full((n,), float("nan"), dtype=torch.float64)
        batches = self._batches(torch.arange(n))
        mine = distributed.shard_batches(len(batches), self.context)
        scored = []
        with torch.inference_mode():
            for b in progress_bar(mine, show=self.progress, context=self.context, desc="clean"):
                logits = self.model(_to(self.images[batches[b]], self.device, self.channels_last))
                y = self.labels[batches[b]].to(self.device)
                hit = (logits.argmax(dim=1) == y).cpu()
                scored.append((batches[b], hit, margin(logits, y).to(torch.float64).cpu()))
        for rank in distributed.all_gather_object(scored, self.context):
            for points, hit, values in rank:
                flags[points] = hit
                margins[points] = values
        return flags, margins

    def _attack_batch(
        self, attack: Attack, index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run ``attack`` on the images at ``index``; return the indices it fooled, their images, and the
        margins (float64) of the images it returned for every point of ``index``, all on the CPU."""
        x = _to(self.images[index], self.device, self.channels_last)
        y = self.labels[index].to(self.device)
        on_cpu = getattr(attack, "reference", False)  # the reference draws its random numbers on the CPU
        generator = torch.Generator(device="cpu" if on_cpu else self.device).manual_seed(self.seed)
        adv = attack(self.model, x, y, self.threat, generator).detach()
        check_adversarial(adv, x, self.threat, name=attack.name)
        with torch.inference_mode():
            logits = self.model(adv)
            fooled = (logits.argmax(dim=1) != y).cpu()
            margins = margin(logits, y).to(torch.float64).cpu()
        return index[fooled], adv[fooled.to(adv.device)].float().cpu(), margins
