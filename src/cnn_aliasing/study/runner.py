"""Running a study: every model of a config measured on the same images, one result file per model.

For each model in order: load it (or train it), check its logits are finite, measure clean accuracy on the
study's images, robust accuracy on the first of them (resumable: the attack saves its state after every
batch, and a state of other settings, another model or other images is discarded), the aliasing of every
down-sampling op (with each image's AM per op), and the spectra of one map; keep each attacked image's
verdicts and logit margin; then write ``models/<slug>.json`` atomically (the model's
commit point: only then is its attack state removed). A model whose file is done with the same settings (a
fingerprint of the model and of the data, attack, aliasing and spectrum settings) is skipped unless
``force``; a model that raises is recorded as failed with a one-line reason and the others go on.
``study.json`` is written at the start and after every model. At the end the report is built from the
files. The file layout is ``docs/results-format.md``.

``shard`` (``--shard I/N``) runs only the models of one independent job (:mod:`cnn_aliasing.study.sharding`);
the study file then lists every model with the status its file has, and the report is built only once no
model is left. Under ``torchrun`` every rank goes through the models together: each model's clean
accuracy, attack and aliasing are shared among the ranks (``across_ranks``) and a recipe trains with DDP;
rank 0 alone writes files, prints and shows progress (see docs/distributed.md).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import torch

from cnn_aliasing import data, distributed, training, zoo
from cnn_aliasing.aliasing_report import AliasingReport
from cnn_aliasing.attacks import robust_accuracy
from cnn_aliasing.attacks.cascade_state import flag_string
from cnn_aliasing.attacks.robust import RobustAccuracy
from cnn_aliasing.clean_accuracy import clean_accuracy
from cnn_aliasing.errors import CnnAliasingError, DistributedError, error_line
from cnn_aliasing.files import JsonFileError, read_json_object, write_json_atomic
from cnn_aliasing.identity import data_sha256, model_identity
from cnn_aliasing.measurement import measure
from cnn_aliasing.plausibility import checkpoint_doubt
from cnn_aliasing.provenance import run_metadata
from cnn_aliasing.result_status import DONE, FAILED, PENDING, ResultStatus
from cnn_aliasing.resume import StateMismatchError
from cnn_aliasing.runtime import evaluation_mode, resolve_device, run_model
from cnn_aliasing.study.config import REPORTED, REPORTED_EPS, StudyConfig
from cnn_aliasing.study.sharding import Shard
from cnn_aliasing.study.specs import LoadContext, StudyModel, expand_models
from cnn_aliasing.study.spectra import capture_spectrum

SCHEMA = 2
"""The format of a model's file (2: per-image results and the training dose); part of its fingerprint, so a
file of another format is recomputed."""
STUDY_SCHEMA = 1  # the format of study.json
REPORTED_IMAGES = 10_000  # RobustBench's reported figures are on the whole CIFAR-10 test set
STANDARD_OBJECTIVE = "standard"  # the objective of normal training: dose 0
MARGIN_DIGITS = 6  # significant digits of the per-image margins written
Measurement = Literal["clean_accuracy", "robust_accuracy", "aliasing", "per_image", "spectrum"]
"""The measurement fields of a model's file (null in a failed model's)."""
MEASUREMENTS: tuple[Measurement, ...] = get_args(Measurement)


class StudyModelError(CnnAliasingError):
    """A model cannot be measured (non-finite logits or aliasing, no down-sampling op)."""


@dataclass(frozen=True)
class StudyPaths:
    """Where a study's files go (``docs/results-format.md``)."""

    root: Path

    @property
    def study_file(self) -> Path:
        return self.root / "study.json"

    def model_file(self, model: StudyModel) -> Path:
        return self.root / "models" / f"{model.slug}.json"

    def spectrum_file(self, model: StudyModel) -> Path:
        return self.root / "spectra" / f"{model.slug}.json"

    def state_file(self, model: StudyModel) -> Path:
        return self.root / "state" / f"{model.slug}.json"


@dataclass(frozen=True)
class ModelOutcome:
    """How one model ended in this run: done or failed, and whether an earlier run had finished it."""

    name: str
    status: ResultStatus
    error: str | None
    skipped: bool
    warnings: tuple[str, ...] = ()  # e.g. a zoo checkpoint whose clean accuracy is far below RobustBench's


@dataclass(frozen=True)
class StudySummary:
    """The outcome of :func:`run_study`."""

    output: Path
    models: list[ModelOutcome]
    report: Path | None
    wall_seconds: float
    left_to_other_shards: int = 0  # models not finished when this shard ended (no report built then)
    answer: tuple[str, ...] = ()  # the report's answer, its first lines (empty without a report)

    @property
    def failed(self) -> list[ModelOutcome]:
        """The models that failed."""
        return [m for m in self.models if m.status == FAILED]


def measurement_settings(config: StudyConfig, data_sha256: str) -> dict[str, Any]:
    """What a model's results depend on besides the model: seed, images, attack, aliasing, spectrum."""
    resolved = config.to_dict()
    return {
        "seed": config.seed,
        "data": {"split": config.data.split, "n_images": config.data.n_images, "sha256": data_sha256},
        "attack": resolved["attack"],
        "aliasing": resolved["aliasing"],
        "spectrum": resolved["spectrum"],
    }


def fingerprint(model: StudyModel, settings: dict[str, Any]) -> str:
    """A hash of the model file's format (:data:`SCHEMA`), the model's description and the measurement
    settings."""
    text = json.dumps(
        {"schema": SCHEMA, "model": model.describe(), "settings": settings}, sort_keys=True, default=str
    )
    return hashlib.sha256(text.encode()).hexdigest()


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return read_json_object(path)
    except JsonFileError:
        return None


def _status_on_disk(path: Path, wanted: str) -> ResultStatus:
    """The status a model's file records for fingerprint ``wanted`` (pending: no such file)."""
    record = _read_json(path)
    status = None if record is None or record.get("fingerprint") != wanted else record.get("status")
    return status if status in (DONE, FAILED) else PENDING


def _is_finished(path: Path, wanted: str) -> bool:
    return _status_on_disk(path, wanted) == DONE


@contextlib.contextmanager
def _timed(timings: dict[str, float], key: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = round(time.perf_counter() - start, 3)


def training_dose(training_record: Any) -> float | None:
    """The training eps of a model the study trained (its file's ``training.recipe``): the recipe's ``eps``
    when its objective is adversarial, 0.0 when it is standard; None for a model without a recipe and for
    other objectives (a control such as gaussian-noise is neither a dose of 0 nor of eps)."""
    recipe = training_record.get("recipe") if isinstance(training_record, dict) else None
    if not isinstance(recipe, dict) or "eps" not in recipe or "objective" not in recipe:
        return None
    if training.get_objective(recipe["objective"]).robust:
        return float(recipe["eps"])
    return 0.0 if recipe["objective"] == STANDARD_OBJECTIVE else None


def per_image_record(result: RobustAccuracy, n_measured: int) -> dict[str, Any]:
    """The per-image verdicts of an attack on the first ``result.n_images`` of the ``n_measured`` images:
    clean and robust as strings of 0 and 1, and the margins to :data:`MARGIN_DIGITS` significant digits."""
    if result.clean_points is None or result.robust_points is None or result.margins is None:
        raise StudyModelError("the attack returned no per-image results")
    return {
        "n_measured": n_measured,
        "n_attacked": result.n_images,
        "clean": flag_string(result.clean_points),
        "robust": flag_string(result.robust_points),
        "margin": [float(f"{m:.{MARGIN_DIGITS}g}") for m in result.margins.tolist()],
    }


def _check_finite_aliasing(report: AliasingReport) -> None:
    if not report.ops:
        raise StudyModelError("no down-sampling op was measured (check [aliasing] include/exclude)")
    bad = [op.name for op in report.ops if not all(math.isfinite(m.mean) for m in op.metrics.values())]
    if bad:
        raise StudyModelError(f"non-finite aliasing (NaN or inf) in {', '.join(bad)}")


class _ModelRun:
    """Measuring one model of a study into its result record."""

    def __init__(
        self,
        config: StudyConfig,
        paths: StudyPaths,
        images: torch.Tensor,
        labels: torch.Tensor,
        device: torch.device,
        progress: bool,
        context: distributed.Context = distributed.SINGLE,
    ) -> None:
        self.config, self.paths, self.images, self.labels = config, paths, images, labels
        self.data_sha256 = data_sha256(images, labels)
        self.device, self.progress, self.context = device, progress, context
        self.say: Callable[[str], None] = _printer(False)

    def run(self, model: StudyModel, fp: str, force: bool, say: Callable[[str], None]) -> dict[str, Any]:
        """The model's result record: done with every measurement, or failed with its reason.

        ``fp`` is the model's fingerprint; ``say`` reports each stage.
        """
        self.say = say
        record: dict[str, Any] = {
            "schema": SCHEMA,
            "name": model.name,
            "status": FAILED,
            "error": None,
            **{k: v for k, v in model.describe().items() if k != "name"},
            "model_identity": None,
            "data_sha256": self.data_sha256,
            "clean_accuracy": None,
            "robust_accuracy": None,
            "aliasing": None,
            "per_image": None,
            "dose": None,
            "training": None,
            "spectrum": None,
            "timings": {},
            "fingerprint": fp,
            "run": {**run_metadata(), **self.context.meta()},
        }
        try:
            self._measure(model, record, force)
            record["status"] = DONE
        except DistributedError:  # a dead peer stops the study: the next model would meet it too
            raise
        except Exception as error:  # one model failing must not stop the study; interrupts do
            record["error"] = error_line(error)
            record.update(dict.fromkeys(MEASUREMENTS))  # a failed model has no (partial) measurements
        return record

    def _measure(self, model: StudyModel, record: dict[str, Any], force: bool) -> None:
        timings = record["timings"]
        self.say("loading" if model.source["type"] != "recipe" else "training (resumes if interrupted)")
        torch.manual_seed(self.config.seed)
        context = LoadContext(
            self.config.output,
            self.config.model_dir,
            self.config.data.dir,
            self.device,
            self.progress,
            self.config.seed,
        )
        start = time.perf_counter()
        loaded = model.load(context)
        if loaded.train_s is not None:
            timings["train_s"] = round(loaded.train_s, 3)
        timings["load_s"] = round(time.perf_counter() - start - (loaded.train_s or 0.0), 3)
        record.update(loaded.record)
        record["dose"] = training_dose(record.get("training"))
        module = loaded.module.to(self.device).eval()
        record["model_identity"] = model_identity(module)
        self._check_logits(module)

        self.say("clean accuracy")
        with _timed(timings, "clean_s"):
            result = clean_accuracy(
                module,
                self._batches(),
                progress=self.progress,
                total_images=len(self.images),
                across_ranks=True,
            )
        record["clean_accuracy"] = {"accuracy": result.accuracy, "n_images": result.total}
        reported = (record.get("reported") or {}).get("clean_accuracy")
        doubt = (
            None
            if reported is None
            else checkpoint_doubt(model.name, result.accuracy, result.total, reported)
        )
        if doubt is not None:
            record["warnings"] = [doubt]
            self.say(f"warning: {doubt}")

        attacked = None
        if self.config.attack.enabled and self.config.attack.source == REPORTED:
            record["robust_accuracy"] = reported_robust_accuracy(model)
        elif self.config.attack.enabled:
            self.say(f"robust accuracy ({self.config.attack.name}, {self.config.attack_images} images)")
            with _timed(timings, "attack_s"):
                attacked = self._attack(module, model, force)
            record["robust_accuracy"] = attacked.to_dict()

        self.say("aliasing")
        aliasing = self.config.aliasing
        with _timed(timings, "aliasing_s"):
            report = measure(
                module,
                self._batches(),
                device=self.device,
                include=aliasing.include,
                exclude=aliasing.exclude,
                nyquist=aliasing.nyquist,
                metrics=aliasing.metrics,
                per_channel=aliasing.per_channel,
                progress=self.progress,
                total_images=len(self.images),
                across_ranks=True,
                per_image=True,
            )
        _check_finite_aliasing(report)
        record["aliasing"] = report.to_dict()
        if attacked is not None:
            record["per_image"] = per_image_record(attacked, report.n_images)

        spectrum = self.config.spectrum
        if spectrum.enabled and self.context.is_main:  # one image: rank 0 alone
            self.say("spectrum")
            with _timed(timings, "spectrum_s"):
                spectra = capture_spectrum(
                    module,
                    data.to_float(self.images[spectrum.image]),
                    spectrum.op or report.ops[0].name,
                    nyquist=aliasing.nyquist,
                    model_name=model.name,
                    index=spectrum.image,
                )
            path = write_json_atomic(self.paths.spectrum_file(model), spectra)
            record["spectrum"] = path.relative_to(self.paths.root).as_posix()

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's share of the study's images and labels (all in one process) in batches, on the
        study's device."""
        mine = distributed.shard_range(len(self.images), self.context)
        part = slice(mine.start, mine.stop)
        batch = self.config.data.batch_size
        return data.iterate_batches(self.images[part], self.labels[part], batch, device=self.device)

    def _check_logits(self, module: torch.nn.Module) -> None:
        batch = data.to_float(self.images[: self.config.data.batch_size]).to(self.device)
        with torch.no_grad(), evaluation_mode(module):
            logits = run_model(module, batch)
        if not bool(torch.isfinite(logits).all()):
            raise StudyModelError("the model gives non-finite logits (NaN or inf) on the study's images")

    def _attack(self, module: torch.nn.Module, model: StudyModel, force: bool) -> RobustAccuracy:
        state = self.paths.state_file(model)
        if force and self.context.is_main:
            state.unlink(missing_ok=True)
        attack, n = self.config.attack, self.config.attack_images
        run = functools.partial(
            robust_accuracy,
            module,
            self.images[:n],
            self.labels[:n],
            attack.eps,
            norm=attack.norm,
            attack=attack.name,
            batch_size=attack.batch_size,
            seed=self.config.attack_seed,
            device=self.device,
            state_path=state,
            progress=self.progress,
            attack_options=attack.options,
            across_ranks=True,
        )
        try:
            result = run()
        except StateMismatchError:  # written for other settings, another model or other images
            self.say("discarding an attack state of other settings")
            if self.context.is_main:
                state.unlink()
            result = run()
        return result


def reported_robust_accuracy(model: StudyModel) -> dict[str, Any]:
    """The robust accuracy RobustBench reports for a zoo model, in the form of a measured result (with
    ``"source": "reported"``); another kind of model is an error (it has no reported figure)."""
    if model.source["type"] != "zoo":
        raise StudyModelError(
            f'[attack] source = "reported" needs zoo models; {model.name!r} is a {model.source["type"]} '
            'model with no reported figure (use source = "measured")'
        )
    entry = zoo.zoo_entry(model.source["zoo"])
    return {
        "source": REPORTED,
        "clean_accuracy": entry.clean_acc / 100,
        "robust_accuracy": entry.autoattack_acc / 100,
        "attack": "AutoAttack standard, reported by RobustBench",
        "eps": REPORTED_EPS,
        "norm": "Linf",
        "n_images": REPORTED_IMAGES,
        "seed": None,
    }


def _say_stage(say: Callable[[str], None], prefix: str, stage: str) -> None:
    """Report one stage of a model's work under its ``[i/n] name`` prefix."""
    say(f"{prefix}: {stage}")


def _printer(enabled: bool) -> Callable[[str], None]:
    def say(message: str) -> None:
        if enabled:
            print(message, file=sys.stderr, flush=True)

    return say


def _load_images(config: StudyConfig, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The study's images; under several ranks rank 0 reads (and downloads) first."""

    def load() -> tuple[torch.Tensor, torch.Tensor]:
        return data.load_cifar10(
            config.data.dir,
            config.data.split,
            n_images=config.data.n_images,
            download=config.data.download,
            progress=progress,
        )

    first = load() if distributed.is_main() else None
    distributed.barrier()
    return first if first is not None else load()


def run_study(
    config: StudyConfig,
    *,
    force: bool = False,
    progress: bool = True,
    device: str | torch.device | None = None,
    report: bool = True,
    shard: Shard | None = None,
) -> StudySummary:
    """Run (or resume) a study: measure every model of ``config`` into ``config.output``, then the report.

    ``force`` recomputes models already done (training is still resumed from its folder); ``device``
    overrides the config's. ``shard`` runs only that shard's models (see
    :mod:`cnn_aliasing.study.sharding`) and builds the report only if no model is left then. Returns what
    happened to each model run here; failures are in the result files too. Under ``torchrun`` every rank
    calls it alike (see the module docstring).
    """
    start = time.perf_counter()
    target = resolve_device(device if device is not None else config.device)
    context = distributed.init_from_env(target)
    target = context.device(target)
    progress = progress and context.is_main
    say = _printer(progress)
    models = expand_models(config.models, config.model_dir)
    mine = models if shard is None else shard.select(models)
    paths = StudyPaths(config.output)
    images, labels = _load_images(config, progress)
    runner = _ModelRun(config, paths, images, labels, target, progress, context)
    settings = measurement_settings(config, runner.data_sha256)
    prints = {model.name: fingerprint(model, settings) for model in models}
    statuses = {
        m.name: DONE if _is_finished(paths.model_file(m), prints[m.name]) and not force else PENDING
        for m in models
    }
    study: dict[str, Any] = {
        "schema": STUDY_SCHEMA,
        "name": config.name,
        "config": config.to_dict(),
        "config_path": None if config.path is None else str(config.path),
        "run": {**run_metadata(), **context.meta(), "shard": None if shard is None else str(shard)},
        "models": [],
        "wall_seconds": None,
    }

    def save_study() -> None:
        if not context.is_main:
            return
        for m in models:  # the models of other shards: as their files say now
            if m not in mine:
                statuses[m.name] = _status_on_disk(paths.model_file(m), prints[m.name])
        study["models"] = [
            {
                "name": m.name,
                "file": paths.model_file(m).relative_to(paths.root).as_posix(),
                "status": statuses[m.name],
            }
            for m in models
        ]
        study["wall_seconds"] = round(time.perf_counter() - start, 3)
        write_json_atomic(paths.study_file, study)

    save_study()
    outcomes = []
    for model in mine:
        prefix = f"[{models.index(model) + 1}/{len(models)}] {model.name}"
        if statuses[model.name] == DONE:
            say(f"{prefix}: done in an earlier run, skipped (--force recomputes)")
            outcomes.append(ModelOutcome(model.name, DONE, None, skipped=True))
            continue
        record = runner.run(model, prints[model.name], force, functools.partial(_say_stage, say, prefix))
        if context.is_main:
            write_json_atomic(paths.model_file(model), record)
            paths.state_file(model).unlink(missing_ok=True)  # after the commit: a kill before it keeps it
        statuses[model.name] = record["status"]
        save_study()
        say(f"{prefix}: {record['status']}" + (f" ({record['error']})" if record["error"] else ""))
        warned = tuple(record.get("warnings") or ())
        outcomes.append(ModelOutcome(model.name, record["status"], record["error"], False, warned))
        if target.type == "cuda":
            torch.cuda.empty_cache()
    save_study()
    left = sum(statuses[m.name] == PENDING for m in models)
    report_path, answer = None, tuple[str, ...]()
    if report and context.is_main and left == 0:
        from cnn_aliasing.report import make_report  # here, not at import: matplotlib is slow to load

        built = make_report(paths.root, progress=progress)
        report_path, answer = built.html, tuple(built.statistics.answer)
    distributed.barrier()  # every rank returns once rank 0 has written
    return StudySummary(paths.root, outcomes, report_path, time.perf_counter() - start, left, answer)
