"""A kill at any moment loses nothing finished: real child processes are SIGKILLed at many points of a
training run, an attack and a study (inside an epoch, inside an attack batch, between any two files), and
the rerun in the test must end with the files and numbers of an uninterrupted run while doing only the work
that was left.

The expected work is read off the uninterrupted run's trace of events (training steps, attack batches,
models measured, and every file committed by ``os.replace``, in order): work counts as saved exactly when a
file that records it (the training state, the attack state, the model's result file) was committed before
the kill. A resume that started over, or that trusted a file written after the state it rests on, fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from safetensors import safe_open
from safetensors.torch import load_file

import kill_jobs
from attack_models import single_thread
from cifar_fixtures import make_layout
from cnn_aliasing.attacks.robust import _Cascade
from cnn_aliasing.study.runner import _ModelRun
from cnn_aliasing.training import Trainer

TESTS = Path(__file__).parent


@dataclass(frozen=True)
class Event:
    kind: str  # "replace" (a file committed), "step", "attack_batch", "model" (a study model begins)
    detail: str = ""  # the committed file relative to the job's folder, or the model's name


@dataclass(frozen=True)
class KillPoint:
    """Kill before the ``nth`` event of ``kind`` whose detail ends with ``suffix``."""

    kind: str
    nth: int
    suffix: str = ""

    def __str__(self) -> str:
        return f"{self.kind}{':' + self.suffix if self.suffix else ''}#{self.nth}"

    def position(self, trace: list[Event]) -> int:
        """Index in ``trace`` of the event the child is killed before."""
        matches = [i for i, e in enumerate(trace) if e.kind == self.kind and e.detail.endswith(self.suffix)]
        return matches[self.nth - 1]

    def call_number(self, trace: list[Event]) -> int:
        """Which call of the killed function that event is (as the child counts them)."""
        at = self.position(trace)
        return sum(1 for e in trace[: at + 1] if e.kind == self.kind)


class Recorder:
    """Records the events of a job run in this process, in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
        self.trace: list[Event] = []
        replace, step, batch, run = os.replace, Trainer.step, _Cascade._attack_batch, _ModelRun.run

        def replacing(src: Any, dst: Any, *args: Any, **kwargs: Any) -> Any:
            path = Path(dst)
            self.trace.append(
                Event("replace", path.relative_to(root).as_posix() if root in path.parents else str(path))
            )
            return replace(src, dst, *args, **kwargs)

        def stepping(*args: Any, **kwargs: Any) -> Any:
            self.trace.append(Event("step"))
            return step(*args, **kwargs)

        def attacking(*args: Any, **kwargs: Any) -> Any:
            self.trace.append(Event("attack_batch"))
            return batch(*args, **kwargs)

        def measuring(runner: Any, model: Any, *args: Any, **kwargs: Any) -> Any:
            self.trace.append(Event("model", model.name))
            return run(runner, model, *args, **kwargs)

        monkeypatch.setattr(os, "replace", replacing)
        monkeypatch.setattr(Trainer, "step", stepping)
        monkeypatch.setattr(_Cascade, "_attack_batch", attacking)
        monkeypatch.setattr(_ModelRun, "run", measuring)

    def count(self, kind: str) -> int:
        return sum(1 for e in self.trace if e.kind == kind)


def saved_work(prefix: list[Event]) -> dict[str, int]:
    """The steps, attack batches and study models that the files committed in ``prefix`` hold."""
    steps = batches = models = 0
    pending_steps = pending_batches = 0
    for event in prefix:
        if event.kind == "step":
            pending_steps += 1
        elif event.kind == "attack_batch":
            pending_batches += 1
        elif event.kind == "model":
            pending_steps = pending_batches = 0  # a new model: nothing of the last one is pending
        elif event.detail.endswith("state.pt"):  # a training state: the epoch's steps and tracking saved
            steps, batches = steps + pending_steps, batches + pending_batches
            pending_steps = pending_batches = 0
        elif event.detail.endswith("attack.state.json") or event.detail.startswith("study/state/"):
            batches, pending_batches = batches + pending_batches, 0  # an attack state: its batches are saved
        elif event.detail.startswith("study/models/"):  # a study model's result: all of it is saved
            models, steps, batches = models + 1, steps + pending_steps, batches + pending_batches
            pending_steps = pending_batches = 0
    return {"step": steps, "attack_batch": batches, "model": models}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    make_layout(root, train_sizes=(16, 16, 16, 8, 8), test_size=8)
    return root


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """One thread, as in the children (float sums depend on the thread count)."""
    with single_thread():
        yield


@dataclass
class Reference:
    root: Path
    trace: list[Event]
    result: Any


_REFERENCES: dict[str, Reference] = {}


def reference(job: str, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """The uninterrupted run of ``job`` and its trace (made once per job)."""
    if job not in _REFERENCES:
        root = tmp_path_factory.mktemp(f"{job}-whole")
        with pytest.MonkeyPatch.context() as patch:
            recorder = Recorder(patch, root)
            result = kill_jobs.JOBS[job](data_dir, root)
        _REFERENCES[job] = Reference(root, recorder.trace, result)
    return _REFERENCES[job]


KILLS: dict[str, list[KillPoint]] = {
    "train": [
        KillPoint("step", 2),  # inside the first epoch: nothing saved yet
        KillPoint("step", 7),  # inside the second epoch
        KillPoint("step", 12),  # inside the last epoch
        *(KillPoint("replace", n, "run/state.pt") for n in (1, 3)),  # before an epoch's first file
        *(KillPoint("replace", n, "run/model.safetensors") for n in (1, 2, 3)),  # state written, no weights
        *(KillPoint("replace", n, "run/model.json") for n in (1, 3)),  # weights written, no sidecar
    ],
    "attack": [  # 3 batches of APGD-CE, then 1 of APGD-T
        KillPoint("replace", 1, "attack.state.json"),  # before anything is saved
        KillPoint("replace", 2, "attack.state.json"),  # the clean pass done, not saved
        KillPoint("attack_batch", 1),  # inside the first batch
        KillPoint("attack_batch", 2),  # inside a batch of the first attack
        KillPoint("replace", 5, "attack.state.json"),  # the first attack's last batch done, not saved
        KillPoint("replace", 6, "attack.state.json"),  # the first attack's end not saved
        KillPoint("attack_batch", 4),  # inside the second attack
        KillPoint("replace", 9, "attack.state.json"),  # all done, the last state not saved
    ],
    "study": [
        KillPoint("replace", 1, "study/models/m0.json"),  # m0 measured, its result not written
        KillPoint("replace", 2, "study/study.json"),  # m0 written, study.json not updated
        KillPoint("step", 6),  # inside the trained model's second epoch
        KillPoint("replace", 2, "training/trained/model.safetensors"),  # last epoch: state only
        KillPoint("replace", 2, "training/trained/model.json"),  # last epoch: state and weights only
        KillPoint("replace", 2, "study/state/trained.json"),  # inside the trained model's attack
        KillPoint("replace", 1, "study/models/trained.json"),
        KillPoint("replace", 1, "study/models/m1.json"),  # between the last two files of the study
    ],
}


def _kill_and_resume(
    job: str, kill: KillPoint, data_dir: Path, tmp_path: Path, tmp_path_factory, monkeypatch
) -> tuple[Reference, Path, Any]:
    """Run ``job`` in a child killed at ``kill``, resume it here; check the resumed run did only the work
    left. Returns the uninterrupted reference, the killed-and-resumed folder and the resumed result."""
    ref = reference(job, data_dir, tmp_path_factory)
    call = kill.call_number(ref.trace)
    command = [
        sys.executable,
        str(TESTS / "kill_jobs.py"),
        job,
        str(data_dir),
        str(tmp_path),
        kill.kind,
        str(call),
    ]
    child = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert child.returncode == -9, f"{job} {kill} ended with {child.returncode}: {child.stderr[-1500:]}"
    recorder = Recorder(monkeypatch, tmp_path)
    result = kill_jobs.JOBS[job](data_dir, tmp_path)
    monkeypatch.undo()
    saved = saved_work(ref.trace[: kill.position(ref.trace)])
    for kind in ("step", "attack_batch", "model"):
        left = sum(1 for e in ref.trace if e.kind == kind) - saved[kind]
        assert recorder.count(kind) == left, (
            f"{kind}: the resumed run did {recorder.count(kind)}, left {left}"
        )
    return ref, tmp_path, result


_TIMING = {"seconds", "images_per_second", "elapsed", "attack_seconds", "timings", "run", "wall_seconds"}


def _untimed(value: Any, root: Path | None = None) -> Any:
    """A JSON value without wall times and provenance (they differ between any two runs), and with the
    job's folder ``root`` in paths and path-derived fingerprints written as ROOT."""
    if root is not None:
        text = json.dumps(value).replace(str(root), "ROOT")
        return _untimed({k: v for k, v in json.loads(text).items() if k != "fingerprint"})
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if k not in _TIMING}
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


def _same_run_folder(a: Path, b: Path) -> None:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(wa[k].equal(wb[k]) for k in wa)
    commits = []
    for folder in (a, b):
        with safe_open(folder / "model.safetensors", framework="pt") as f:
            commits.append(f.metadata()["commit"])
    sidecars = [json.loads((f / "model.json").read_text()) for f in (a, b)]
    assert commits[0] == commits[1] == sidecars[0]["commit"] == sidecars[1]["commit"]
    assert _untimed(sidecars[0]) == _untimed(sidecars[1])
    assert sidecars[1]["complete"] and sidecars[1]["epochs_done"] == sidecars[1]["epochs"]


@pytest.mark.parametrize("kill", KILLS["train"], ids=str)
def test_a_killed_training_run_resumes_to_the_same_weights(
    kill: KillPoint, data_dir, tmp_path, tmp_path_factory, monkeypatch
) -> None:
    ref, root, result = _kill_and_resume("train", kill, data_dir, tmp_path, tmp_path_factory, monkeypatch)
    _same_run_folder(ref.root / "run", root / "run")
    assert _untimed(result.history) == _untimed(ref.result.history)


@pytest.mark.parametrize("kill", KILLS["attack"], ids=str)
def test_a_killed_attack_resumes_to_the_same_robust_accuracy(
    kill: KillPoint, data_dir, tmp_path, tmp_path_factory, monkeypatch
) -> None:
    ref, _, result = _kill_and_resume("attack", kill, data_dir, tmp_path, tmp_path_factory, monkeypatch)
    assert _untimed(result.to_dict()) == _untimed(ref.result.to_dict())
    assert 0 < ref.result.robust_accuracy < ref.result.clean_accuracy  # both attacks had points to attack


@pytest.mark.parametrize("kill", KILLS["study"], ids=str)
def test_a_killed_study_resumes_to_the_same_results(
    kill: KillPoint, data_dir, tmp_path, tmp_path_factory, monkeypatch
) -> None:
    ref, root, _ = _kill_and_resume("study", kill, data_dir, tmp_path, tmp_path_factory, monkeypatch)
    for name in ("m0", "trained", "m1"):
        a, b = (json.loads((r / "study" / "models" / f"{name}.json").read_text()) for r in (ref.root, root))
        assert a["status"] == "done" and _untimed(a, ref.root) == _untimed(b, root)
    studies = [json.loads((r / "study" / "study.json").read_text()) for r in (ref.root, root)]
    assert studies[0]["models"] == studies[1]["models"]
    assert not list((root / "study" / "state").glob("*"))  # no attack state outlives its model
    _same_run_folder(ref.root / "study" / "training" / "trained", root / "study" / "training" / "trained")
