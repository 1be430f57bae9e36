"""Where a run stands: the one object the loop advances and every checkpoint records.

It used to be loose trainer attributes written from several places; now the loop owns
it, :meth:`RunState.to_dict` is exactly a checkpoint's ``progress`` (plain data, also
copied into the manifest), and the trainer exposes its fields read-only to plugins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, TypedDict

__all__ = ["Best", "Phase", "RunState"]

Phase = Literal["train", "end", "done"]
"""Where ``iteration`` stands: ``train`` (mid-iteration), ``end`` (trained; validation
and the iteration's end pending) or ``done``."""


class Best(TypedDict):
    """The best monitored value checkpointed so far."""

    name: str
    mode: Literal["min", "max"]
    value: float
    step: int


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

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint's ``progress``: plain data, for the checkpoint and its manifest."""
        return {"iteration": self.iteration, "global_step": self.global_step, "epoch": self.epoch,
                "epoch_batches": self.epoch_batches, "phase": self.phase, "best": self.best,
                "world_size": self.world_size}

    def load(self, progress: dict[str, Any], *, resume: bool) -> None:
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

    def key(self) -> tuple[int, int, str]:
        """What identifies a saved state: the same key is never saved twice."""
        return self.iteration, self.global_step, self.phase
