"""Where a run stands: the one object the loop advances and every checkpoint records.

It used to be loose trainer attributes written from several places; now the loop owns
it, :meth:`RunState.to_dict` is exactly a checkpoint's ``progress`` (plain data, also
copied into the manifest), and the trainer exposes its fields read-only to plugins.
The words a run's status and phase can be are spelt here once, as ``Literal`` types, so
mypy catches a misspelt one wherever it is written or compared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypedDict

__all__ = ["Best", "ListedStatus", "Phase", "Progress", "RunState", "RunStatus"]

Phase = Literal["train", "end", "done"]
"""Where ``iteration`` stands: ``train`` (mid-iteration), ``end`` (trained; validation
and the iteration's end pending) or ``done``."""

RunStatus = Literal["pending", "running", "finished", "interrupted", "failed"]
"""``trainer.status``: ``pending`` until its session starts, ``running``, then how the run
ended (``finished``, ``interrupted`` or ``failed``), which ``summary.json`` records."""

ListedStatus = Literal[RunStatus, "crashed"]
"""A run's status as seen from its files (``kit runs list``): a :data:`RunStatus`, or
``crashed`` when the process holding the run's lock died or nothing says how it ended."""


class Best(TypedDict):
    """The best monitored value checkpointed so far."""

    name: str
    mode: Literal["min", "max"]
    value: float
    step: int


class _Counts(TypedDict):
    iteration: int
    global_step: int
    epoch: int


class Progress(_Counts, total=False):
    """A checkpoint's ``progress``, as :meth:`RunState.to_dict` writes it (every key).

    A loaded one is guaranteed only the three counts, so the rest are read with defaults;
    ``check_kit_checkpoint`` checks ``epoch_batches``, ``phase`` and ``best`` when present.
    The manifest's copy is not checked that far: :class:`kit.manifest.Manifest` keeps it a
    plain dict.
    """

    epoch_batches: int
    phase: Phase
    best: Best | None
    world_size: int


@dataclass(slots=True)
class RunState:
    """The run's position; the loop is its only writer (restoring a checkpoint aside)."""

    iteration: int = 0
    """The current (or last finished) iteration, counting from 1."""
    global_step: int = 0
    """Optimizer steps taken so far."""
    epoch: int = 0
    """Passes started over the training loader, counting from 0."""
    epoch_batches: int = 0
    """Batches consumed from the current pass over the training loader (on each rank)."""
    batch_idx: int = 0
    """The training batch being processed, within its pass."""
    phase: Phase = "done"
    best: Best | None = None
    world_size: int = 1
    """How many processes trained this run: a resume with another count is not exact."""

    def to_dict(self) -> Progress:
        """The checkpoint's ``progress``: plain data, for the checkpoint and its manifest."""
        return {"iteration": self.iteration, "global_step": self.global_step, "epoch": self.epoch,
                "epoch_batches": self.epoch_batches, "phase": self.phase, "best": self.best,
                "world_size": self.world_size}

    def load(self, progress: Progress, *, resume: bool) -> None:
        """Restore :meth:`to_dict`'s output (already checked by ``check_kit_checkpoint``).

        ``resume=False`` (evaluation) takes only where the weights were taken.
        """
        self.iteration = int(progress["iteration"])
        self.global_step = int(progress["global_step"])
        self.epoch = int(progress["epoch"])
        if resume:
            self.epoch_batches = int(progress.get("epoch_batches", 0))
            phase = progress.get("phase", "done")
            self.phase = phase if phase in ("train", "end") else "done"
            self.best = progress.get("best")

    def key(self) -> tuple[int, int, Phase]:
        """What identifies a saved state: the same key is never saved twice."""
        return self.iteration, self.global_step, self.phase
