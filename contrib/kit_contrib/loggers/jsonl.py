"""``jsonl``: every recorded metric as one JSON line in ``<run>/metrics.jsonl``.

A resumed run reads each (name, step) once: every checkpoint records how many lines the
file held when it was taken, and a run continued from it first cuts the file back to
that many, dropping what the stopped run logged after its checkpoint (the resumed run
logs it again, identically). A run restarted from the beginning starts the file afresh.
Only modes that train write here: ``--mode evaluate`` (which may run beside training)
writes its results to ``evaluate-<checkpoint>.json`` instead.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

import kit

if TYPE_CHECKING:
    from kit import MetricRecord, Trainer

__all__ = ["JsonlLogger"]

_STATE = "jsonl"


def keep_lines(path: Path, keep: int | None, *, max_step: int) -> int:
    """Cut ``path`` back to its first ``keep`` lines (``None``: the lines with ``step <= max_step``),
    atomically; a torn last line always goes. Returns the number of lines kept."""
    data = path.read_bytes()
    lines = [line for line in data.splitlines(keepends=True) if line.endswith(b"\n")]
    kept = lines[:keep] if keep is not None else [line for line in lines if _step(line) <= max_step]
    if b"".join(kept) != data:

        def write(tmp: Path) -> None:
            with tmp.open("wb") as out:
                out.writelines(kept)
                out.flush()
                os.fsync(out.fileno())

        kit.atomic_write(path, write)
    return len(kept)


def _step(line: bytes) -> float:
    try:
        step = json.loads(line).get("step")
    except (ValueError, AttributeError):
        return math.inf
    return step if isinstance(step, int) else math.inf


class JsonlLogger:
    """Appends records to ``metrics.jsonl``; flushed every couple of seconds and at the end."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        filename: kit.RunPath = Field("metrics.jsonl", description="inside the run directory")
        flush_seconds: float = 2.0

    def __init__(self, options: Options | None = None) -> None:
        self.options = options or self.Options()
        self._fh: IO[str] | None = None
        self._flush_at = 0.0
        self._lines = 0
        self._resume: dict[str, Any] | None = None

    @kit.hookimpl
    def kit_checkpoint_load(self, checkpoint: dict[str, Any]) -> None:
        state = (checkpoint.get("plugins") or {}).get(_STATE)
        self._resume = state if isinstance(state, dict) else None

    @kit.hookimpl
    def kit_train_begin(self, trainer: Trainer) -> None:
        if trainer.run_dir is None or not trainer.trains:  # an evaluation writes its own results file
            return
        path = kit.run_path(trainer.run_dir, self.options.filename, key="loggers.jsonl.filename")
        if path.is_file():
            resume = self._resume or {}
            keep = resume.get("lines") if resume.get("filename") == self.options.filename else None
            if trainer.global_step == 0 and not self._resume:
                keep = 0  # restarted from the beginning: nothing before counts
            counted = isinstance(keep, int) and not isinstance(keep, bool) and keep >= 0
            self._lines = keep_lines(path, keep if counted else None, max_step=trainer.global_step)
        self._fh = path.open("a", encoding="utf-8")

    @kit.hookimpl
    def kit_metric_recorded(self, record: MetricRecord) -> None:
        if self._fh is None:
            return
        line: dict[str, Any] = {
            "name": record.name, "value": record.value, "kind": record.kind, "split": record.split,
            "step": record.step, "iteration": record.iteration, "wall_time": record.wall_time,
        }
        self._fh.write(json.dumps(line) + "\n")
        self._lines += 1
        if record.wall_time >= self._flush_at:  # readable while running, without a flush per line
            self._fh.flush()
            self._flush_at = record.wall_time + self.options.flush_seconds

    @kit.hookimpl
    def kit_checkpoint_save(self, checkpoint: dict[str, Any]) -> None:
        if self._fh is None:
            return
        self._fh.flush()  # what the checkpoint counts is in the file before the checkpoint is
        checkpoint["plugins"][_STATE] = {"filename": self.options.filename, "lines": self._lines}

    @kit.hookimpl
    def kit_train_end(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
