"""Study configs: a TOML file read into frozen dataclasses with every default filled in.

Sections: top-level keys (name, output, seed, device, model_dir), ``[data]``, ``[attack]``,
``[aliasing]``, ``[spectrum]``, ``[report]`` and ``[[models]]`` (see :mod:`cnn_aliasing.study.specs`).
Unknown keys are errors naming the file, the section, the key and the valid keys. Relative paths resolve
against the current working directory. The reference with every key and default is ``docs/study.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from cnn_aliasing import data, spectral, zoo
from cnn_aliasing.attacks import NORMS, check_radius, resolve_attacks
from cnn_aliasing.eps import is_eps
from cnn_aliasing.errors import CnnAliasingError
from cnn_aliasing.fields import check_keys, checked, field_names, read_fields
from cnn_aliasing.files import read_toml
from cnn_aliasing.report_settings import DEFAULT_RESAMPLES, DEFAULT_SEED
from cnn_aliasing.study.specs import ModelSpec, parse_model_spec
from cnn_aliasing.study.toml_fields import is_path, is_str_list, is_table, to_json
from cnn_aliasing.validation import invalid, is_bool, is_choice, is_int, is_str

SHIPPED_PACKAGE = "cnn_aliasing"
SHIPPED_FOLDER = "configs"
DEFAULT_CONFIG = "quick"


def _metrics(value: Any, where: str) -> tuple[str, ...]:
    names = is_str_list(value, where)
    try:
        return spectral.check_metric_names(names)
    except CnnAliasingError as error:
        raise CnnAliasingError(f"{where}: {error}") from None


@dataclass(frozen=True)
class DataConfig:
    """``[data]``: the first ``n_images`` CIFAR-10 images of ``split``, for clean accuracy and aliasing."""

    dir: Path = field(default=Path("data"), metadata=checked(is_path))
    split: str = field(default="test", metadata=checked(is_choice(*data.SPLIT_FILES)))
    n_images: int = field(default=1000, metadata=checked(is_int(1)))
    batch_size: int = field(default=250, metadata=checked(is_int(1)))
    download: bool = field(default=False, metadata=checked(is_bool))


MEASURED, REPORTED = "measured", "reported"  # where [attack] takes robust accuracy from


@dataclass(frozen=True)
class AttackConfig:
    """``[attack]``: robust accuracy on the first ``n_images`` of the study's images (0: all of them).

    ``source = "reported"`` attacks nothing: zoo models get the AutoAttack accuracy RobustBench reports
    (Linf, 8/255, the full test set), so only clean accuracy and aliasing are measured.
    """

    enabled: bool = field(default=True, metadata=checked(is_bool))
    source: str = field(default=MEASURED, metadata=checked(is_choice(MEASURED, REPORTED)))
    name: str = field(default="standard", metadata=checked(is_str))
    eps: float = field(default=8 / 255, metadata=checked(is_eps()))
    norm: str = field(default="Linf", metadata=checked(is_choice(*NORMS)))
    n_images: int = field(default=0, metadata=checked(is_int(0)))
    batch_size: int = field(default=250, metadata=checked(is_int(1)))
    seed: int | None = field(default=None, metadata=checked(is_int(0)))  # None: the study's seed
    options: dict[str, Any] = field(default_factory=dict, metadata=checked(is_table))


NO_ATTACK = AttackConfig(enabled=False)
REPORTED_EPS = 8 / 255  # the radius of RobustBench's reported Linf CIFAR-10 figures


@dataclass(frozen=True)
class AliasingConfig:
    """``[aliasing]``: the Nyquist convention, scale-free variants beside AM, which ops, per-channel means."""

    nyquist: str = field(
        default=spectral.Nyquist.ZERO.value, metadata=checked(is_choice(*(n.value for n in spectral.Nyquist)))
    )
    metrics: tuple[str, ...] = field(default=(), metadata=checked(_metrics))
    include: tuple[str, ...] = field(default=(), metadata=checked(is_str_list))
    exclude: tuple[str, ...] = field(default=(), metadata=checked(is_str_list))
    per_channel: bool = field(default=False, metadata=checked(is_bool))


@dataclass(frozen=True)
class SpectrumConfig:
    """``[spectrum]``: which op (default: the first measured) and image give each model's spectrum figure."""

    enabled: bool = field(default=True, metadata=checked(is_bool))
    op: str | None = field(default=None, metadata=checked(is_str))
    image: int = field(default=0, metadata=checked(is_int(0)))


@dataclass(frozen=True)
class ReportConfig:
    """``[report]``: models named in the figures (default: all when there are few) and the bootstrap's
    resamples and seed. Read by :mod:`cnn_aliasing.report` from ``study.json``."""

    highlight: tuple[str, ...] = field(default=(), metadata=checked(is_str_list))
    n_resamples: int = field(default=DEFAULT_RESAMPLES, metadata=checked(is_int(1)))
    seed: int = field(default=DEFAULT_SEED, metadata=checked(is_int(0)))


def device_setting(value: Any, where: str) -> str | None:
    """A torch device name (cpu, cuda, cuda:1, ...) or "auto" (None: cuda if available, else cpu).

    Only the name is checked here, so a config for a GPU loads anywhere; whether the device is usable is
    checked when the study runs.
    """
    text = is_str(value, where)
    if text == "auto":
        return None
    try:
        torch.device(text)
    except RuntimeError:
        raise invalid(where, '"auto" or a torch device name such as cpu, cuda or cuda:1', value) from None
    return text


@dataclass(frozen=True)
class StudyConfig:
    """A whole study: settings, sections, and the model specs in order."""

    name: str = field(metadata=checked(is_str))
    output: Path = field(metadata=checked(is_path))
    seed: int = field(default=0, metadata=checked(is_int(0)))
    device: str | None = field(
        default=None, metadata=checked(device_setting)
    )  # None ("auto"): cuda, else cpu
    model_dir: Path = field(default=zoo.DEFAULT_MODEL_DIR, metadata=checked(is_path))
    data: DataConfig = DataConfig()
    attack: AttackConfig = NO_ATTACK
    aliasing: AliasingConfig = AliasingConfig()
    spectrum: SpectrumConfig = SpectrumConfig()
    report: ReportConfig = ReportConfig()
    models: tuple[ModelSpec, ...] = ()
    path: Path | None = None  # the file it was read from

    @property
    def attack_seed(self) -> int:
        """The attack's seed: its own, else the study's."""
        return self.seed if self.attack.seed is None else self.attack.seed

    @property
    def attack_images(self) -> int:
        """How many of the study's images the attack uses."""
        return self.attack.n_images or self.data.n_images

    def to_dict(self) -> dict[str, Any]:
        """The resolved config, JSON-ready, every default filled in (``attack.seed`` and ``n_images`` too)."""
        out = to_json(self)
        out.pop("path")
        out["attack"].update(seed=self.attack_seed, n_images=self.attack_images)
        return out


_SECTIONS = {
    "data": DataConfig,
    "attack": AttackConfig,
    "aliasing": AliasingConfig,
    "spectrum": SpectrumConfig,
    "report": ReportConfig,
}


def parse_config(raw: dict[str, Any], file: str, *, default_name: str) -> StudyConfig:
    """A study config from parsed TOML; ``file`` names the source in errors."""
    check_keys(raw, [*field_names(StudyConfig), *_SECTIONS, "models"], file, "top-level key")
    sections: dict[str, Any] = {
        key: read_fields(cls, raw[key], f"{file}: [{key}]") for key, cls in _SECTIONS.items() if key in raw
    }
    if "attack" in raw and not sections["attack"].enabled:
        sections["attack"] = NO_ATTACK
    models_raw = raw.get("models", [])
    if not isinstance(models_raw, list) or not models_raw:
        raise CnnAliasingError(f"{file}: [[models]] must list at least one model")
    specs = tuple(parse_model_spec(m, f"{file}: [[models]] #{i}") for i, m in enumerate(models_raw, start=1))
    top = {key: raw[key] for key in field_names(StudyConfig) if key in raw}
    top.setdefault("name", default_name)
    top.setdefault("output", f"runs/{top['name']}")
    config = read_fields(StudyConfig, top, file, **sections, models=specs)
    config = replace(
        config,
        model_dir=config.model_dir.absolute(),
        data=replace(config.data, dir=config.data.dir.absolute()),
    )
    _check_consistent(config, file)
    return config


def _check_consistent(config: StudyConfig, file: str) -> None:
    """Cross-section checks: attack images within the study's, the attack and its options exist."""
    if config.attack.n_images > config.data.n_images:
        raise CnnAliasingError(
            f"{file}: [attack] n_images = {config.attack.n_images} is more than [data] n_images = "
            f"{config.data.n_images}; the attack uses the first of the study's images"
        )
    if config.spectrum.image >= config.data.n_images:
        raise CnnAliasingError(
            f"{file}: [spectrum] image = {config.spectrum.image} is not among the study's "
            f"{config.data.n_images} images (valid: 0..{config.data.n_images - 1})"
        )
    if config.attack.enabled and config.attack.source == REPORTED:
        if config.attack.norm != "Linf" or abs(config.attack.eps - REPORTED_EPS) > 1e-12:
            raise CnnAliasingError(
                f'{file}: [attack] source = "reported" uses RobustBench\'s figures at Linf 8/255; this '
                f'config asks for {config.attack.norm} eps = {config.attack.eps:.6g} (set eps = "8/255", '
                'norm = "Linf", or source = "measured")'
            )
    if config.attack.enabled:
        try:
            check_radius(config.attack.eps, config.attack.norm, data.IMAGE_SHAPE)
            resolve_attacks(config.attack.name, config.attack.options)
        except CnnAliasingError as error:
            raise CnnAliasingError(f"{file}: [attack] {error}") from None


def shipped_configs() -> list[str]:
    """Names of the configs shipped with the package (``quick``, ``paper-wrn28``, ...)."""
    folder = resources.files(SHIPPED_PACKAGE) / SHIPPED_FOLDER
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))


def config_file(name_or_path: str | Path | None) -> Path:
    """The file of a config given as a path to a .toml file or as the name of a shipped config."""
    text = str(name_or_path or DEFAULT_CONFIG)
    path = Path(text).expanduser()
    if path.suffix == ".toml" or path.is_file():
        if not path.is_file():
            raise CnnAliasingError(f"study config {path} does not exist")
        return path
    shipped = shipped_configs()
    if text not in shipped:
        raise CnnAliasingError(
            f"no study config {text!r}: give a .toml file or one of the shipped configs: {', '.join(shipped)}"
        )
    return Path(str(resources.files(SHIPPED_PACKAGE) / SHIPPED_FOLDER / f"{text}.toml"))


def load_config(name_or_path: str | Path | None = None) -> StudyConfig:
    """Read a study config (a .toml path or a shipped config name; default ``quick``)."""
    path = config_file(name_or_path)
    config = parse_config(read_toml(path), str(path), default_name=path.stem)
    return replace(config, path=path.resolve())
