"""Studies: a TOML config of models, data, attack and aliasing settings, run into resumable result files.

>>> from cnn_aliasing.study import load_config, run_study
>>> summary = run_study(load_config("quick"))  # doctest: +SKIP
"""

from cnn_aliasing.study.config import (
    AliasingConfig,
    AttackConfig,
    DataConfig,
    SpectrumConfig,
    StudyConfig,
    config_file,
    load_config,
    parse_config,
    shipped_configs,
)
from cnn_aliasing.study.runner import ModelOutcome, StudyModelError, StudySummary, run_study
from cnn_aliasing.study.specs import SPEC_KINDS, ModelSpec, StudyModel, expand_models, register_spec, slugify
from cnn_aliasing.study.spectra import capture_spectrum

__all__ = [
    "SPEC_KINDS",
    "AliasingConfig",
    "AttackConfig",
    "DataConfig",
    "ModelOutcome",
    "ModelSpec",
    "SpectrumConfig",
    "StudyConfig",
    "StudyModel",
    "StudyModelError",
    "StudySummary",
    "capture_spectrum",
    "config_file",
    "expand_models",
    "load_config",
    "parse_config",
    "register_spec",
    "run_study",
    "shipped_configs",
    "slugify",
]
