"""Reading a study's result files (docs/results-format.md) into dataclasses, and the per-(model, op) table.

Nothing here runs a model: the report is made from ``study.json``, ``models/*.json`` and ``spectra/*.json``
alone. A missing key is a :class:`ResultsError` naming the file and the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnn_aliasing.aliasing_report import AM, AliasingReport, OpAliasing
from cnn_aliasing.errors import CnnAliasingError, ReportFormatError
from cnn_aliasing.files import read_json_object, required_key, write_csv_atomic, write_json_atomic
from cnn_aliasing.report_settings import ReportSettings
from cnn_aliasing.result_status import DONE

#: With at most this many finished models every point of a scatter plot is named.
LABEL_ALL_UP_TO = 8


class ResultsError(CnnAliasingError):
    """A result file is missing, is not JSON, or lacks a key the report needs."""


def _get(obj: dict[str, Any], key: str, path: Path, where: str = "") -> Any:
    """``obj[key]``; a missing key names the file and the full key (``where`` is the parent's key path)."""
    return required_key(obj, key, where, error=ResultsError, file=path)


@dataclass(frozen=True)
class OpResult:
    """One down-sampling op of one model: AM with its std and count, and the scale-free variants' means."""

    name: str
    kind: str
    factor: tuple[int, int]
    aliasing: float
    std: float
    count: int
    variants: dict[str, float] = field(default_factory=dict)
    full_size: tuple[int, int] | None = None  # (H, W) of the stride-1 output; None: not known

    @property
    def layer_group(self) -> str:
        """The first part of the op's module path (``layer2`` of ``layer2.0.conv1``)."""
        return self.name.split(".", 1)[0]


@dataclass(frozen=True)
class EpochRecord:
    """One epoch of a model trained by the study; eval fields are None when the epoch was not evaluated."""

    epoch: int
    train_loss: float | None
    train_accuracy: float | None
    clean_accuracy: float | None
    pgd_accuracy: float | None
    aliasing: dict[str, float]


@dataclass(frozen=True)
class PerImageResult:
    """One model's per-image results. The attacked images are the first ``len(margin)`` of the measured
    images (the study attacks a prefix of the images it measures).

    ``aliasing`` maps each op to its per-image AM, shape (n_measured,): the mean over the image's maps (its
    channels) of sum |Y - Z|. ``clean`` and ``robust`` flag each attacked image classified correctly before
    and after the attack, ``margin`` is each attacked image's logit margin ``z_y - max_{k != y} z_k`` at the
    strongest image the attack found (the clean image's when it is misclassified; negative when broken).
    """

    aliasing: dict[str, np.ndarray]
    clean: np.ndarray
    robust: np.ndarray
    margin: np.ndarray

    @property
    def n_attacked(self) -> int:
        """How many images were attacked (a prefix of the measured ones)."""
        return int(self.margin.shape[0])


@dataclass
class ModelResult:
    """One model of the study, finished or failed, as read from ``models/<slug>.json``."""

    name: str
    file: str
    status: str
    error: str | None
    robust: bool
    arch: str | None
    tags: list[str]
    source: dict[str, Any]
    clean_accuracy: float | None = None
    robust_accuracy: float | None = None
    attack: dict[str, Any] | None = None
    ops: list[OpResult] = field(default_factory=list)
    training: list[EpochRecord] = field(default_factory=list)
    spectrum: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    n_images: int | None = None
    dose: float | None = None  # the training eps of a study-trained model (0.0: standard); None: unknown
    warnings: list[str] = field(default_factory=list)  # what the study found doubtful (a wrong checkpoint)
    per_image: PerImageResult | None = None  # None: a file written without per-image results

    @property
    def done(self) -> bool:
        """Whether the model finished (its measurements are present)."""
        return self.status == DONE

    def op(self, name: str) -> OpResult | None:
        """The op with this name, or None if the model has none."""
        return next((o for o in self.ops if o.name == name), None)


@dataclass(frozen=True)
class SpectrumResult:
    """The spectra of one map (one image, one channel of one op): X, Y and Z as complex arrays."""

    file: str
    model: str
    op: str
    image: int
    channel: int
    factor: tuple[int, int]
    nyquist: str
    aliasing: float
    full: np.ndarray
    actual: np.ndarray
    alias_free: np.ndarray


@dataclass
class StudyResults:
    """Everything the report needs: the study's metadata, every model and every spectrum file."""

    root: Path
    name: str
    config: dict[str, Any]
    config_path: str | None
    run: dict[str, Any]
    wall_seconds: float | None
    models: list[ModelResult]
    spectra: list[SpectrumResult]

    @property
    def done_models(self) -> list[ModelResult]:
        """The finished models, in study order."""
        return [m for m in self.models if m.done]

    @property
    def op_names(self) -> list[str]:
        """Every op name of the finished models, in first-seen forward order."""
        names: dict[str, None] = {}
        for model in self.done_models:
            names.update((o.name, None) for o in model.ops)
        return list(names)

    @property
    def variant_names(self) -> list[str]:
        """The scale-free variants measured by any finished model, in first-seen order."""
        names: dict[str, None] = {}
        for model in self.done_models:
            for op in model.ops:
                names.update((k, None) for k in op.variants)
        return list(names)

    @property
    def settings(self) -> ReportSettings:
        """The ``report`` table of the study's config (absent: the defaults); a bad value is an error naming
        study.json and the key."""
        section = self.config.get("report")
        table = section if isinstance(section, dict) else {}
        return ReportSettings.from_table(table, f"{self.root / 'study.json'}: report")

    @property
    def highlight(self) -> list[str]:
        """The models whose points are named in figures: ``report.highlight`` of the config, else every
        finished model when there are at most :data:`LABEL_ALL_UP_TO` of them, else none."""
        chosen = self.settings.highlight
        if chosen is not None:
            return list(chosen)
        done = self.done_models
        return [m.name for m in done] if len(done) <= LABEL_ALL_UP_TO else []


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def _parse_aliasing(raw: Any, path: Path) -> AliasingReport:
    """A model file's ``aliasing`` entry, read by :meth:`AliasingReport.from_dict`."""
    try:
        return AliasingReport.from_dict(raw, where="aliasing.")
    except ReportFormatError as error:
        raise ResultsError(f"{path}: {error}") from None


def _op_result(op: OpAliasing) -> OpResult:
    """The report's view of one measured op: AM with its std and count, and the variants' means."""
    return OpResult(
        name=op.name,
        kind=op.kind,
        factor=op.factor,
        aliasing=op.aliasing,
        std=op.std,
        count=op.count,
        variants={k: v.mean for k, v in op.metrics.items() if k != AM},
        full_size=op.full_size,
    )


def _parse_training(raw: Any, path: Path) -> list[EpochRecord]:
    """The per-epoch history: ``training`` is null, the history list, or a dict holding ``history``."""
    if raw is None:
        return []
    history = _get(raw, "history", path, "training.") if isinstance(raw, dict) else raw
    records = []
    for i, entry in enumerate(history):
        where = f"training.history[{i}]."
        evaluation = entry.get("eval") or {}
        records.append(
            EpochRecord(
                epoch=int(_get(entry, "epoch", path, where)),
                train_loss=_float_or_none(entry.get("train_loss")),
                train_accuracy=_float_or_none(entry.get("train_accuracy")),
                clean_accuracy=_float_or_none(evaluation.get("clean_accuracy")),
                pgd_accuracy=_float_or_none(evaluation.get("pgd_accuracy")),
                aliasing={k: float(v) for k, v in (evaluation.get("aliasing") or {}).items()},
            )
        )
    return records


def _flags(raw: dict[str, Any], key: str, n: int, path: Path) -> np.ndarray:
    """``per_image.<key>``: a string of ``n`` characters 0 or 1, as a bool array."""
    bits = _get(raw, key, path, "per_image.")
    if not isinstance(bits, str) or len(bits) != n or set(bits) - {"0", "1"}:
        found = f"{len(bits)} characters" if isinstance(bits, str) else type(bits).__name__
        raise ResultsError(
            f"{path}: per_image.{key} must be a string of n_attacked = {n} characters 0 or 1; got {found}"
        )
    return np.frombuffer(bits.encode("ascii"), dtype=np.uint8) == ord("1")


def _parse_per_image(raw: dict[str, Any], aliasing: AliasingReport, path: Path) -> PerImageResult | None:
    """The per-image results of a done model: each op's AM per measured image (``aliasing.per_image``) and
    each attacked image's verdicts and margin (``per_image``). None for a file written before they existed
    (neither key); empty verdicts and margins when no attack was measured (``per_image`` null)."""
    attacked = raw.get("per_image")
    if aliasing.per_image is None:
        if attacked is not None:
            raise ResultsError(f"{path}: per_image is given but aliasing.per_image is missing")
        return None
    per_op = {op: np.asarray(v, dtype=np.float64) for op, v in aliasing.per_image.items()}
    if attacked is None:
        none = np.zeros(0, dtype=bool)
        return PerImageResult(per_op, none, none, np.zeros(0))
    n_measured, n_attacked = (_get(attacked, k, path, "per_image.") for k in ("n_measured", "n_attacked"))
    if n_measured != aliasing.n_images:
        raise ResultsError(
            f"{path}: per_image.n_measured = {n_measured!r} differs from aliasing.n_images = "
            f"{aliasing.n_images}"
        )
    if not isinstance(n_attacked, int) or isinstance(n_attacked, bool) or not 0 <= n_attacked <= n_measured:
        raise ResultsError(
            f"{path}: per_image.n_attacked must be an integer from 0 to n_measured = {n_measured}; got "
            f"{n_attacked!r}"
        )
    margin = _get(attacked, "margin", path, "per_image.")
    if not isinstance(margin, list) or len(margin) != n_attacked:
        found = f"{len(margin)} values" if isinstance(margin, list) else type(margin).__name__
        raise ResultsError(
            f"{path}: per_image.margin must list n_attacked = {n_attacked} values; got {found}"
        )
    try:
        margins = np.array([np.nan if m is None else m for m in margin], dtype=np.float64).reshape(n_attacked)
    except (TypeError, ValueError):
        raise ResultsError(f"{path}: per_image.margin must hold numbers (null for NaN)") from None
    return PerImageResult(
        per_op,
        _flags(attacked, "clean", n_attacked, path),
        _flags(attacked, "robust", n_attacked, path),
        margins,
    )


def load_model_result(path: Path, file: str) -> ModelResult:
    """One ``models/<slug>.json``; ``file`` is its path relative to the results folder."""
    raw = read_json_object(path, error=ResultsError)
    status = str(_get(raw, "status", path))
    model = ModelResult(
        name=str(_get(raw, "name", path)),
        file=file,
        status=status,
        error=raw.get("error"),
        robust=bool(_get(raw, "robust", path) if status == DONE else raw.get("robust", False)),
        arch=raw.get("arch"),
        tags=[str(t) for t in raw.get("tags") or []],
        source=raw.get("source") or {},
        timings={k: float(v) for k, v in (raw.get("timings") or {}).items() if v is not None},
        warnings=[str(w) for w in raw.get("warnings") or []],
        dose=_float_or_none(raw.get("dose")),
    )
    if status != DONE:
        return model
    attack = raw.get("robust_accuracy")
    clean = raw.get("clean_accuracy")
    aliasing = _parse_aliasing(_get(raw, "aliasing", path), path)
    model.clean_accuracy = (
        float(_get(clean, "accuracy", path, "clean_accuracy."))
        if clean is not None
        else _float_or_none(attack.get("clean_accuracy") if attack else None)
    )
    if attack is not None:
        model.robust_accuracy = float(_get(attack, "robust_accuracy", path, "robust_accuracy."))
        model.attack = {k: attack.get(k) for k in ("attack", "eps", "norm", "n_images", "seed")}
        model.attack["source"] = attack.get("source", "measured")
    model.ops = [_op_result(op) for op in aliasing.ops]
    model.n_images = aliasing.n_images
    model.per_image = _parse_per_image(raw, aliasing, path)
    model.training = _parse_training(raw.get("training"), path)
    model.spectrum = raw.get("spectrum")
    return model


def _complex(raw: dict[str, Any], key: str, path: Path) -> np.ndarray:
    part = _get(raw, key, path)
    re = np.asarray(_get(part, "re", path, f"{key}."), dtype=np.float64)
    im = np.asarray(_get(part, "im", path, f"{key}."), dtype=np.float64)
    if re.ndim != 2 or re.shape != im.shape:
        raise ResultsError(f"{path}: {key}.re and {key}.im must be matrices of one shape")
    return re + 1j * im


def load_spectrum(path: Path, file: str) -> SpectrumResult:
    """One ``spectra/<slug>.json``; ``file`` is its path relative to the results folder."""
    raw = read_json_object(path, error=ResultsError)
    factor = _get(raw, "factor", path)
    return SpectrumResult(
        file=file,
        model=str(_get(raw, "model", path)),
        op=str(_get(raw, "op", path)),
        image=int(_get(raw, "image", path)),
        channel=int(_get(raw, "channel", path)),
        factor=(int(factor[0]), int(factor[1])),
        nyquist=str(raw.get("nyquist", "zero")),
        aliasing=float(_get(raw, "aliasing", path)),
        full=_complex(raw, "full", path),
        actual=_complex(raw, "actual", path),
        alias_free=_complex(raw, "alias_free", path),
    )


def _missing_model(entry: dict[str, Any], file: str) -> ModelResult:
    """A model listed in study.json whose result file is not (yet) written."""
    return ModelResult(
        name=str(entry["name"]),
        file=file,
        status="missing" if entry.get("status") in (None, DONE) else str(entry["status"]),
        error=f"no result file {file} (the study was stopped before this model finished?)",
        robust=bool(entry.get("robust", False)),
        arch=entry.get("arch"),
        tags=[],
        source={},
    )


def load_results(results_dir: str | Path) -> StudyResults:
    """Read ``study.json`` and every model and spectrum file it points to from a results folder."""
    root = Path(results_dir)
    if not root.is_dir():
        raise ResultsError(f"{root}: not a folder (expected a study's results folder holding study.json)")
    study_path = root / "study.json"
    study = read_json_object(study_path, error=ResultsError)
    models = []
    for i, entry in enumerate(_get(study, "models", study_path)):
        _get(entry, "name", study_path, f"models[{i}].")
        file = str(_get(entry, "file", study_path, f"models[{i}]."))
        path = root / file
        models.append(load_model_result(path, file) if path.is_file() else _missing_model(entry, file))
    spectra = [load_spectrum(root / m.spectrum, m.spectrum) for m in models if m.done and m.spectrum]
    wall = study.get("wall_seconds")
    return StudyResults(
        root=root,
        name=str(study.get("name") or root.name),
        config=study.get("config") or {},
        config_path=study.get("config_path"),
        run=study.get("run") or {},
        wall_seconds=_float_or_none(wall),
        models=models,
        spectra=spectra,
    )


def table_rows(results: StudyResults) -> list[dict[str, Any]]:
    """One row per (finished model, op) with the columns of docs/results-format.md; a variant a model did
    not measure is None (an empty CSV cell)."""
    variants = results.variant_names
    rows = []
    for model in results.done_models:
        for op in model.ops:
            row: dict[str, Any] = {
                "model": model.name,
                "tags": ";".join(model.tags),
                "robust": model.robust,
                "arch": model.arch,
                "clean_accuracy": model.clean_accuracy,
                "robust_accuracy": model.robust_accuracy,
                "op": op.name,
                "layer_group": op.layer_group,
                "kind": op.kind,
                "factor": f"{op.factor[0]}x{op.factor[1]}",
                "aliasing": op.aliasing,
                "aliasing_std": op.std,
                "aliasing_count": op.count,
            }
            row.update({v: op.variants.get(v) for v in variants})
            rows.append(row)
    return rows


def write_tables(results: StudyResults, rows: list[dict[str, Any]]) -> list[Path]:
    """Write ``results.csv`` and ``results.json`` (the rows, NaN as null) into the results folder."""
    csv_path = results.root / "results.csv"
    json_path = results.root / "results.json"
    write_csv_atomic(csv_path, rows)
    write_json_atomic(json_path, rows)  # writes NaN as null (files.json_safe)
    return [csv_path, json_path]
