"""Where a robust-accuracy cascade stands, and the files that keep it across a kill.

The state (:class:`CascadeState`) holds the clean and robust flags, the margins, the finished attacks and,
for the attack in progress, the points it attacks and which of their batches are done; it is written as a
:class:`cnn_aliasing.resume.JsonStateFile` after every batch. With the adversarial images kept, each batch's
new ones go to a safetensors file of their own in ``<state>.adv/``. The state records what it belongs to
(its ``config``: the attack settings, the model's identity, the images' hash), which
:func:`cnn_aliasing.resume.check_identity` compares before a run continues from it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from cnn_aliasing.files import atomic_file
from cnn_aliasing.resume import JsonStateFile, check_identity

STATE_FORMAT = "cnn-aliasing robust-accuracy state"
STATE_VERSION = 3  # 1 counted the finished batches of the attack in progress, 2 listed them, 3 adds margins
OLD_VERSIONS = "states before 3 hold no margins"


def flag_string(mask: torch.Tensor) -> str:
    """Per-point flags as a string of 0 and 1 (how state and study files store them)."""
    return "".join("1" if v else "0" for v in mask.tolist())


def _mask(bits: str) -> torch.Tensor:
    return torch.tensor([c == "1" for c in bits], dtype=torch.bool)


def _margins(stored: Any) -> torch.Tensor | None:
    """A state's margins (float64; NaN was written as null)."""
    if stored is None:
        return None
    if not isinstance(stored, list):
        raise ValueError(f"margins must be a list of numbers, got {json.dumps(stored)[:80]}")
    return torch.tensor([float("nan") if m is None else float(m) for m in stored], dtype=torch.float64)


def _batches_done(stored: Any) -> set[int]:
    """The finished batches of the attack in progress, as a state lists them."""
    if not isinstance(stored, list):
        raise ValueError(f"batches_done must be a list of batch indices, got {stored!r}")
    return {int(b) for b in stored}


@dataclass
class CascadeState:
    """Where an evaluation stands: clean and robust flags, margins (float64), finished attacks, and for the
    attack in progress the points it attacks (robust when it began) and which of their batches are done."""

    config: dict[str, Any]
    clean: torch.Tensor | None = None
    robust: torch.Tensor | None = None
    margins: torch.Tensor | None = None
    per_attack: list[tuple[str, float]] = field(default_factory=list)
    attack_seconds: list[tuple[str, float]] = field(default_factory=list)
    stage_points: torch.Tensor | None = None
    batches_done: set[int] = field(default_factory=set)
    stage_seconds: float = 0.0
    elapsed: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The state file's body (beside its format and version)."""
        return {
            "config": self.config,
            "clean": None if self.clean is None else flag_string(self.clean),
            "robust": None if self.robust is None else flag_string(self.robust),
            "margins": None if self.margins is None else self.margins.tolist(),  # float64: exact in JSON
            "per_attack": self.per_attack,
            "attack_seconds": self.attack_seconds,
            "stage_points": None if self.stage_points is None else self.stage_points.tolist(),
            "batches_done": sorted(self.batches_done),
            "stage_seconds": self.stage_seconds,
            "elapsed": self.elapsed,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> CascadeState:
        """The state a state file's JSON object holds (KeyError, TypeError, ValueError if malformed)."""
        return cls(
            config=raw["config"],
            clean=None if raw["clean"] is None else _mask(raw["clean"]),
            robust=None if raw["robust"] is None else _mask(raw["robust"]),
            margins=_margins(raw["margins"]),
            per_attack=[(n, a) for n, a in raw["per_attack"]],
            attack_seconds=[(n, s) for n, s in raw["attack_seconds"]],
            stage_points=None if raw["stage_points"] is None else torch.tensor(raw["stage_points"]),
            batches_done=_batches_done(raw["batches_done"]),
            stage_seconds=float(raw["stage_seconds"]),
            elapsed=float(raw["elapsed"]),
        )


def state_file(path: Path) -> JsonStateFile:
    """The cascade's state file at ``path``."""
    return JsonStateFile(path, STATE_FORMAT, STATE_VERSION, OLD_VERSIONS)


class CascadeStore:
    """Writes the state (and, if asked, each batch's new adversarial examples) next to ``path``; without a
    ``path`` (no state file, or a rank other than 0) it writes nothing."""

    def __init__(self, path: Path | None, keep_adversarial: bool) -> None:
        self.file = None if path is None else state_file(path)
        self.adv_dir = None if path is None or not keep_adversarial else path.with_name(path.name + ".adv")

    def load(self, config: dict[str, Any]) -> CascadeState | None:
        """The state in the file (None: no file), refused unless it was written for ``config``."""
        if self.file is None or not self.file.path.exists():
            return None
        state = self.file.read(CascadeState.from_json)
        check_identity(
            f"state file {self.file.path}",
            state.config,
            config,
            "pass the same arguments (model, images, attack) or delete the state file",
        )
        return state

    def save(self, state: CascadeState) -> None:
        if self.file is not None:
            self.file.write(state.to_json())

    def clear_adversarial(self) -> None:
        if self.adv_dir is not None and self.adv_dir.is_dir():
            for chunk in self.adv_dir.glob("*.safetensors"):
                chunk.unlink()

    def save_adversarial(self, stage: int, batch: int, index: torch.Tensor, images: torch.Tensor) -> None:
        if self.adv_dir is None or index.numel() == 0:
            return
        with atomic_file(self.adv_dir / f"{stage:03d}-{batch:06d}.safetensors") as tmp:
            save_file({"index": index.contiguous(), "images": images.contiguous()}, tmp)

    def load_adversarial(self, into: torch.Tensor, state: CascadeState) -> None:
        """Fill ``into`` with the adversarial examples of the batches the state counts as done."""
        if self.adv_dir is None or not self.adv_dir.is_dir():
            return
        finished = len(state.per_attack)
        current = state.batches_done if state.stage_points is not None else set()
        for chunk in sorted(self.adv_dir.glob("*.safetensors")):
            stage, batch = (int(part) for part in chunk.stem.split("-"))
            if stage < finished or (stage == finished and batch in current):
                tensors = load_file(chunk)
                into[tensors["index"]] = tensors["images"]
