"""Splitting a study's models among independent jobs: ``--shard I/N`` runs the models whose group's 0-based
index is I modulo N, so N jobs (one per node of a batch system, e.g. a Slurm array ``--array=0-3`` with
``--shard $SLURM_ARRAY_TASK_ID/4``) share the models without talking to each other; each writes its models'
files into the one results folder. A group is one model, or all the snapshots of one training run (they
share its run folder, so one job trains it); groups are numbered in the order of the config's expanded
list."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cnn_aliasing.errors import CnnAliasingError

if TYPE_CHECKING:
    from cnn_aliasing.study.specs import StudyModel


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (0-based) of ``count`` jobs."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"I/N"`` with integers 0 <= I < N; anything else is an error saying what is valid."""
        index, sep, count = text.strip().partition("/")
        try:
            shard = cls(int(index), int(count)) if sep else None
        except ValueError:
            shard = None
        if shard is None or not 0 <= shard.index < shard.count:
            raise CnnAliasingError(
                f"--shard must be I/N with integers 0 <= I < N (0-based: the jobs of a 4-way split are 0/4, "
                f"1/4, 2/4 and 3/4), got {text!r}"
            )
        return shard

    def runs(self, position: int) -> bool:
        """Whether this shard runs the group at 0-based ``position`` (see :func:`group_index`)."""
        return position % self.count == self.index

    def select(self, models: Sequence[StudyModel]) -> list[StudyModel]:
        """The models of ``models`` (the study's expanded list) this shard runs, in order."""
        return [m for m in models if self.runs(group_index(models, m))]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def group_index(models: Sequence[StudyModel], model: StudyModel) -> int:
    """The 0-based index of ``model``'s group among ``models``: snapshots of one training run (the same
    ``source["run"]``) form one group, every other model its own."""
    keys = list(dict.fromkeys(m.source.get("run", m.name) for m in models))
    return keys.index(model.source.get("run", model.name))
