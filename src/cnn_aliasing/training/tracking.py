"""Aliasing and robustness while training: per-epoch measurements on fixed held-out batches, and the
catastrophic-overfitting check of fast adversarial training.

The same images (the first ``eval_images`` of the test split) are used at every epoch, so the curves
compare like with like: AM of every down-sampling op (:func:`cnn_aliasing.measure`), the clean accuracy
and the robust accuracy under PGD (``eval_pgd_steps`` steps of ``eval_pgd_step`` at the recipe's eps,
one random start with a fixed seed), all in float32 with the model in eval mode. With the recipe's
``eval_sample_channels`` set, AM is the channel-sampled estimate of :func:`cnn_aliasing.measure` (the same
channels at every epoch, drawn with the tracking seed), and each op's 95% interval is recorded beside it.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from cnn_aliasing.attacks import robust_accuracy
from cnn_aliasing.measurement import measure
from cnn_aliasing.runtime import evaluation_mode
from cnn_aliasing.training.recipes import Recipe

TRACKING_SEED = 0


class CatastrophicOverfittingWarning(UserWarning):
    """The PGD robust accuracy collapsed while training against single-step attacks (Wong et al. 2020)."""


def track(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, recipe: Recipe) -> dict[str, Any]:
    """``{"clean_accuracy", "pgd_accuracy", "aliasing": {op name: AM}}`` of ``model`` on the fixed batch
    (float images in [0, 1] on the model's device), plus ``"aliasing_ci95": {op name: [low, high]}`` when
    the recipe samples channels; the model comes back in its own mode."""
    with evaluation_mode(model):
        report = measure(
            model,
            [images],
            progress=False,
            sample_channels=recipe.eval_sample_channels,
            seed=TRACKING_SEED,
        )
        result = robust_accuracy(
            model,
            images,
            labels,
            recipe.eps,
            attack="pgd",
            attack_options={"pgd": {"steps": recipe.eval_pgd_steps, "step_size": recipe.eval_pgd_step}},
            batch_size=len(images),
            seed=TRACKING_SEED,
            progress=False,
        )
    tracked = {
        "clean_accuracy": result.clean_accuracy,
        "pgd_accuracy": result.robust_accuracy,
        "aliasing": {op.name: op.aliasing for op in report.ops},
    }
    if report.sampled:
        tracked["aliasing_ci95"] = {op.name: list(op.ci95 or ()) for op in report.ops}
    return tracked


def overfitting_warning(history: list[dict[str, Any]], recipe: Recipe, robust: bool) -> str | None:
    """A message if the last epoch's PGD accuracy fell more than ``overfit_drop`` (absolute) below the
    best earlier one while training a robust objective (catastrophic overfitting), else None.

    Also issues it as a :class:`CatastrophicOverfittingWarning`.
    """
    evals = [h["eval"]["pgd_accuracy"] for h in history if h.get("eval") is not None]
    if not robust or len(evals) < 2 or history[-1].get("eval") is None:
        return None
    best, last = max(evals[:-1]), evals[-1]
    if best - last <= recipe.overfit_drop:
        return None
    message = (
        f"catastrophic overfitting at epoch {history[-1]['epoch']}: PGD robust accuracy fell from "
        f"{best:.3f} to {last:.3f} while training with {recipe.objective} (more than overfit_drop="
        f"{recipe.overfit_drop}); consider the weights of an earlier epoch, a smaller step or PGD-AT"
    )
    warnings.warn(message, CatastrophicOverfittingWarning, stacklevel=2)
    return message
