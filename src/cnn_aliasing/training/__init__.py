"""Standard and adversarial training of the study's architectures, with aliasing tracked per epoch.

>>> from cnn_aliasing.training import get_recipe, train, load_trained_model
>>> recipe = get_recipe("small-fgsm-rs", epochs=3)          # a named recipe, any field overridden
>>> result = train(recipe, "data", "runs/small-fgsm-rs")    # doctest: +SKIP
>>> model = load_trained_model("runs/small-fgsm-rs")        # doctest: +SKIP

Recipes: ``paper-baseline`` (the study's normal training), ``pgd-at``, ``fgsm-rs``, ``fgsm``, ``trades``
and the small ones ``small-standard``, ``small-fgsm-rs`` and ``small-fgsm`` (minutes on two CPU cores).
See docs/training.md.
"""

from cnn_aliasing.training.loop import Trainer, TrainResult, train
from cnn_aliasing.training.objectives import (
    Objective,
    attack_step,
    get_objective,
    list_objectives,
    register_objective,
)
from cnn_aliasing.training.recipes import FIELDS, Recipe, get_recipe, list_recipes, register_recipe
from cnn_aliasing.training.run_folder import (
    has_sidecar,
    load_snapshot,
    load_trained_model,
    read_sidecar,
    snapshot_file,
    weights_file,
)
from cnn_aliasing.training.schedules import learning_rate, list_schedules, register_schedule
from cnn_aliasing.training.tracking import CatastrophicOverfittingWarning, track

__all__ = [
    "FIELDS",
    "CatastrophicOverfittingWarning",
    "Objective",
    "Recipe",
    "TrainResult",
    "Trainer",
    "attack_step",
    "get_objective",
    "get_recipe",
    "has_sidecar",
    "learning_rate",
    "list_objectives",
    "list_recipes",
    "list_schedules",
    "load_snapshot",
    "load_trained_model",
    "read_sidecar",
    "register_objective",
    "register_recipe",
    "register_schedule",
    "snapshot_file",
    "track",
    "train",
    "weights_file",
]
