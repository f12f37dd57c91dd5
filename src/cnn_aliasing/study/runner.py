"""Running a study: every model of a config measured on the same images, one result file per model.

For each model in order: load it (or train it), check its logits are finite, measure clean accuracy on the
study's images, robust accuracy on the first of them (resumable: the attack saves its state after every
batch, and a state of other settings, another model or other images is discarded), the aliasing of every
down-sampling op, and the spectra of one map; then write ``models/<slug>.json`` atomically (the model's
commit point: only then is its attack state removed). A model whose file is done with the same settings (a
fingerprint of the model and of the data, attack, aliasing and spectrum settings) is skipped unless
``force``; a model that raises is recorded as failed with a one-line reason and the others go on.
``study.json`` is written at the start and after every model. At the end the report is built from the
files. The file layout is ``docs/results-format.md``.
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
from typing import Any

import torch

from cnn_aliasing import data, zoo
from cnn_aliasing.attacks import robust_accuracy
from cnn_aliasing.attacks.robust import StateMismatchError
from cnn_aliasing.errors import CnnAliasingError
from cnn_aliasing.evaluation import clean_accuracy
from cnn_aliasing.identity import data_sha256, model_identity
from cnn_aliasing.measure import AliasingReport, measure
from cnn_aliasing.provenance import JsonFileError, read_json_object, run_metadata, write_json_atomic
from cnn_aliasing.result_status import DONE, FAILED, PENDING
from cnn_aliasing.runtime import evaluation_mode, resolve_device, run_model
from cnn_aliasing.study.config import REPORTED, REPORTED_EPS, StudyConfig
from cnn_aliasing.study.specs import LoadContext, StudyModel, expand_models
from cnn_aliasing.study.spectra import capture_spectrum

SCHEMA = 1
REPORTED_IMAGES = 10_000  # RobustBench's reported figures are on the whole CIFAR-10 test set
MEASUREMENTS = ("clean_accuracy", "robust_accuracy", "aliasing", "spectrum")


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
    status: str
    error: str | None
    skipped: bool


@dataclass(frozen=True)
class StudySummary:
    """The outcome of :func:`run_study`."""

    output: Path
    models: list[ModelOutcome]
    report: Path | None
    wall_seconds: float

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
    """A hash of the model's description and the measurement settings."""
    text = json.dumps({"model": model.describe(), "settings": settings}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return read_json_object(path)
    except JsonFileError:
        return None


def _is_finished(path: Path, wanted: str) -> bool:
    record = _read_json(path)
    return record is not None and record.get("status") == DONE and record.get("fingerprint") == wanted


def one_line_reason(error: BaseException) -> str:
    """An exception as one line: its message (with the type unless it is one of ours)."""
    text = " ".join(str(error).split())
    if isinstance(error, CnnAliasingError):
        return text or type(error).__name__
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


@contextlib.contextmanager
def _timed(timings: dict[str, float], key: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = round(time.perf_counter() - start, 3)


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
    ) -> None:
        self.config, self.paths, self.images, self.labels = config, paths, images, labels
        self.data_sha256 = data_sha256(images, labels)
        self.device, self.progress = device, progress
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
            "training": None,
            "spectrum": None,
            "timings": {},
            "fingerprint": fp,
            "run": run_metadata(),
        }
        try:
            self._measure(model, record, force)
            record["status"] = DONE
        except Exception as error:  # one model failing must not stop the study; interrupts do
            record["error"] = one_line_reason(error)
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
            )
        record["clean_accuracy"] = {"accuracy": result.accuracy, "n_images": result.total}

        if self.config.attack.enabled and self.config.attack.source == REPORTED:
            record["robust_accuracy"] = reported_robust_accuracy(model)
        elif self.config.attack.enabled:
            self.say(f"robust accuracy ({self.config.attack.name}, {self.config.attack_images} images)")
            with _timed(timings, "attack_s"):
                record["robust_accuracy"] = self._attack(module, model, force)

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
            )
        _check_finite_aliasing(report)
        record["aliasing"] = report.to_dict()

        spectrum = self.config.spectrum
        if spectrum.enabled:
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
        """The study's images and labels in batches, on the study's device."""
        return data.iterate_batches(self.images, self.labels, self.config.data.batch_size, device=self.device)

    def _check_logits(self, module: torch.nn.Module) -> None:
        batch = data.to_float(self.images[: self.config.data.batch_size]).to(self.device)
        with torch.no_grad(), evaluation_mode(module):
            logits = run_model(module, batch)
        if not bool(torch.isfinite(logits).all()):
            raise StudyModelError("the model gives non-finite logits (NaN or inf) on the study's images")

    def _attack(self, module: torch.nn.Module, model: StudyModel, force: bool) -> dict[str, Any]:
        state = self.paths.state_file(model)
        if force:
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
        )
        try:
            result = run()
        except StateMismatchError:  # written for other settings, another model or other images
            self.say("discarding an attack state of other settings")
            state.unlink()
            result = run()
        return result.to_dict()


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


def run_study(
    config: StudyConfig,
    *,
    force: bool = False,
    progress: bool = True,
    device: str | torch.device | None = None,
    report: bool = True,
) -> StudySummary:
    """Run (or resume) a study: measure every model of ``config`` into ``config.output``, then the report.

    ``force`` recomputes models already done (training is still resumed from its folder); ``device``
    overrides the config's. Returns what happened to each model; failures are in the result files too.
    """
    start = time.perf_counter()
    say = _printer(progress)
    target = torch.device(device) if device is not None else resolve_device(config.device)
    models = expand_models(config.models, config.model_dir)
    paths = StudyPaths(config.output)
    images, labels = data.load_cifar10(
        config.data.dir,
        config.data.split,
        n_images=config.data.n_images,
        download=config.data.download,
        progress=progress,
    )
    runner = _ModelRun(config, paths, images, labels, target, progress)
    settings = measurement_settings(config, runner.data_sha256)
    prints = {model.name: fingerprint(model, settings) for model in models}
    statuses = {
        m.name: DONE if _is_finished(paths.model_file(m), prints[m.name]) and not force else PENDING
        for m in models
    }
    study: dict[str, Any] = {
        "schema": SCHEMA,
        "name": config.name,
        "config": config.to_dict(),
        "config_path": None if config.path is None else str(config.path),
        "run": run_metadata(),
        "models": [],
        "wall_seconds": None,
    }

    def save_study() -> None:
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
    for i, model in enumerate(models, start=1):
        prefix = f"[{i}/{len(models)}] {model.name}"
        if statuses[model.name] == DONE:
            say(f"{prefix}: done in an earlier run, skipped (--force recomputes)")
            outcomes.append(ModelOutcome(model.name, DONE, None, skipped=True))
            continue
        record = runner.run(model, prints[model.name], force, functools.partial(_say_stage, say, prefix))
        write_json_atomic(paths.model_file(model), record)
        paths.state_file(model).unlink(missing_ok=True)  # after the commit: a kill before it keeps the state
        statuses[model.name] = record["status"]
        save_study()
        say(f"{prefix}: {record['status']}" + (f" ({record['error']})" if record["error"] else ""))
        outcomes.append(ModelOutcome(model.name, record["status"], record["error"], skipped=False))
        if target.type == "cuda":
            torch.cuda.empty_cache()
    save_study()
    report_path = None
    if report:
        from cnn_aliasing.report import build_report  # here, not at import: matplotlib is slow to load

        report_path = build_report(paths.root, progress=progress)
    return StudySummary(paths.root, outcomes, report_path, time.perf_counter() - start)
