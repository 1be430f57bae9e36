"""An outside package extending kit through its public API and entry points only."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict

import kit

__all__ = ["LinesLogger", "StepCounter"]


class LinesLogger:
    """A logger: writes ``name value step`` lines for every record to a file in the run dir."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        filename: str = "lines.txt"

    def __init__(self, options: Options) -> None:
        self.options = options
        self.lines: list[str] = []
        self.path: Any = None

    @kit.hookimpl
    def kit_train_begin(self, trainer: kit.Trainer) -> None:
        self.path = trainer.run_dir / self.options.filename

    @kit.hookimpl
    def kit_metric_recorded(self, record: kit.MetricRecord) -> None:
        self.lines.append(f"{record.name} {record.value} {record.step}")

    @kit.hookimpl
    def kit_train_end(self) -> None:
        self.path.write_text("\n".join(self.lines) + "\n")


class StepCounter:
    """A hook plugin, autoloaded: counts steps and keeps the count in checkpoints."""

    def __init__(self) -> None:
        self.steps = 0

    @kit.hookimpl
    def kit_step_end(self) -> None:
        self.steps += 1

    @kit.hookimpl
    def kit_checkpoint_save(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["plugins"]["step-counter"] = {"steps": self.steps}

    @kit.hookimpl
    def kit_test_end(self, trainer: kit.Trainer) -> None:
        trainer.record("example/steps_counted", self.steps)

    @kit.hookimpl
    def kit_train_end(self, trainer: kit.Trainer) -> None:
        (trainer.run_dir / "step-counter.json").write_text(json.dumps({"steps": self.steps}))
