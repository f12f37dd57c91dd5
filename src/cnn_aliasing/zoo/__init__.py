"""The model zoo: RobustBench CIFAR-10 Linf models of the study's architectures, loadable offline and online.

>>> from cnn_aliasing.zoo import load_zoo_model, select
>>> [entry.name for entry in select("standard")]
['Standard']
"""

from cnn_aliasing.zoo.entry import EPS, ROBUST, STANDARD, TRAININGS, Paper, Training, ZooEntry
from cnn_aliasing.zoo.loader import (
    DEFAULT_MODEL_DIR,
    Downloader,
    checkpoint_path,
    download_checkpoint,
    gdown_downloader,
    load_weights,
    load_zoo_model,
)
from cnn_aliasing.zoo.registry import TAGS, ZOO, select, zoo_entry, zoo_tags

__all__ = [
    "DEFAULT_MODEL_DIR",
    "EPS",
    "ROBUST",
    "STANDARD",
    "TAGS",
    "TRAININGS",
    "ZOO",
    "Downloader",
    "Paper",
    "Training",
    "ZooEntry",
    "checkpoint_path",
    "download_checkpoint",
    "gdown_downloader",
    "load_weights",
    "load_zoo_model",
    "select",
    "zoo_entry",
    "zoo_tags",
]
