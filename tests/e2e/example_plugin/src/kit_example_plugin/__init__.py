"""An outside package extending kit through its public API and entry points only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

import kit

__all__ = ["Finetune", "LinesLogger", "StepCounter"]


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
    def kit_checkpoint_load(self, checkpoint: dict[str, Any]) -> None:
        self.steps = checkpoint["plugins"].get("step-counter", {}).get("steps", 0)

    @kit.hookimpl
    def kit_test_end(self, trainer: kit.Trainer) -> None:
        trainer.record("example/steps_counted", self.steps)

    @kit.hookimpl
    def kit_train_end(self, trainer: kit.Trainer) -> None:
        (trainer.run_dir / "step-counter.json").write_text(json.dumps({"steps": self.steps}))


class Finetune(kit.TrainNew):
    """A custom mode (``--mode finetune --checkpoint PATH``): a new run that starts from
    another run's weights, with a fresh optimizer, schedule and step count."""

    name: ClassVar[str] = "finetune"

    def open_run_dir(self) -> Path:
        requested = self.trainer.requested_checkpoint
        if requested in (None, "best", "last"):  # refuse before a run directory exists
            raise kit.ConfigError("finetune needs a checkpoint folder", key="--checkpoint",
                                  hint="pass --checkpoint runs/<experiment>/<run>/checkpoints/<step>")
        self.source = Path(str(requested))
        return super().open_run_dir()

    def restore(self) -> None:
        trainer = self.trainer
        checkpoint = trainer.read_checkpoint(self.source)
        assert trainer.model is not None
        trainer.model.load_state_dict(checkpoint["model"])
        kit.say(f"finetuning from {self.source}")
