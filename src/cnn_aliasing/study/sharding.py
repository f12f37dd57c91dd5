"""Splitting a study's models among independent jobs: ``--shard I/N`` runs the models whose 0-based index
in the config's expanded list is I modulo N, so N jobs (one per node of a batch system, e.g. a Slurm array
``--array=0-3`` with ``--shard $SLURM_ARRAY_TASK_ID/4``) share the models without talking to each other;
each writes its models' files into the one results folder."""

from __future__ import annotations

from dataclasses import dataclass

from cnn_aliasing.errors import CnnAliasingError


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
        """Whether this shard runs the model at 0-based ``position`` in the study's list."""
        return position % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"
