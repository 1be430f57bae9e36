"""kit's built-in modes. ``continue`` and ``evaluate`` build on the same template."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import yaml

from kit.interfaces import State
from kit.rundir import create_run_dir, write_text

__all__ = ["TrainNew"]


class TrainNew(State):
    """Train a new model in a new run directory, then test it."""

    name: ClassVar[str] = "new"

    def open_run_dir(self) -> Path:
        config = self.trainer.config
        run_dir = create_run_dir(config.runs_dir, config.experiment)
        write_text(run_dir / "config.yaml", yaml.safe_dump(config.resolved(), sort_keys=False))
        return run_dir

    def execute(self) -> None:
        trainer = self.trainer
        assert trainer.backend is not None
        trainer.backend.fit(trainer)
        if trainer.test_loader is not None:
            trainer.backend.test(trainer)
