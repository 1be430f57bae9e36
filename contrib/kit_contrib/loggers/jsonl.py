"""``jsonl``: every recorded metric as one JSON line in ``<run>/metrics.jsonl``."""

from __future__ import annotations

import json
from typing import IO, TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

import kit

if TYPE_CHECKING:
    from kit import MetricRecord, Trainer

__all__ = ["JsonlLogger"]


class JsonlLogger:
    """Appends records to ``metrics.jsonl``; flushed every couple of seconds and at the end."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        filename: str = "metrics.jsonl"
        flush_seconds: float = 2.0

    def __init__(self, options: Options | None = None) -> None:
        self.options = options or self.Options()
        self._fh: IO[str] | None = None
        self._flush_at = 0.0

    @kit.hookimpl
    def kit_train_begin(self, trainer: Trainer) -> None:
        if trainer.run_dir is not None:
            self._fh = (trainer.run_dir / self.options.filename).open("a", encoding="utf-8")

    @kit.hookimpl
    def kit_metric_recorded(self, record: MetricRecord) -> None:
        if self._fh is None:
            return
        line: dict[str, Any] = {
            "name": record.name, "value": record.value, "kind": record.kind, "split": record.split,
            "step": record.step, "iteration": record.iteration, "wall_time": record.wall_time,
        }
        self._fh.write(json.dumps(line) + "\n")
        if record.wall_time >= self._flush_at:  # readable while running, without a flush per line
            self._fh.flush()
            self._flush_at = record.wall_time + self.options.flush_seconds

    @kit.hookimpl
    def kit_train_end(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
