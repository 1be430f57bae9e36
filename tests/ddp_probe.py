"""A plugin for runs under torchrun: what fired on this rank, written where a test reads it.

Each rank appends ``(hook, iteration, batch_idx, global_step)`` for the loop's hooks and
``("metric", name)`` for every record, and writes them to ``<out>/rank<R>.json`` at the
end (the run directory is rank zero's; this file is the test's). ``signal_at_step`` makes
one rank send itself a signal there, as a scheduler or a crash would.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

import kit


class Probe:
    class Options(BaseModel):
        out: str
        signal_rank: int = -1
        signal_at_step: int = -1
        signum: int = 9
        mark_at_step: int = -1
        """Rank zero creates ``<out>/marked`` at this step (a test waits for it, then signals)."""
        step_sleep: float = 0.0
        veto_rank: int = -1
        """This rank vetoes the optimizer step at ``veto_at_step`` (-2: every rank does)."""
        veto_at_step: int = -1

    def __init__(self, options: Options) -> None:
        self.options = options
        self.events: list[list[Any]] = []
        self.rank = 0
        self.fired = False

    def _add(self, trainer: Any, name: str, batch_idx: int | None = None) -> None:
        self.events.append([name, trainer.iteration, batch_idx, trainer.global_step])

    @kit.hookimpl
    def kit_train_begin(self, trainer: Any) -> None:
        self.rank = trainer.rank
        self.events.append(["train_begin", trainer.rank, trainer.world_size, trainer.is_global_zero])

    @kit.hookimpl
    def kit_iteration_begin(self, trainer: Any) -> None:
        self._add(trainer, "iteration_begin")

    @kit.hookimpl
    def kit_step_begin(self, trainer: Any, batch_idx: int) -> None:
        self._add(trainer, "step_begin", batch_idx)

    @kit.hookimpl
    def kit_step_end(self, trainer: Any, batch_idx: int) -> None:
        self._add(trainer, "step_end", batch_idx)
        o = self.options
        if o.step_sleep:
            time.sleep(o.step_sleep)
        if trainer.is_global_zero and trainer.global_step == o.mark_at_step:
            Path(o.out).mkdir(parents=True, exist_ok=True)
            (Path(o.out) / "marked").touch()
        if trainer.rank == o.signal_rank and trainer.global_step == o.signal_at_step and not self.fired:
            self.fired = True
            os.kill(os.getpid(), o.signum)

    @kit.hookimpl
    def kit_skip_optimizer_step(self, trainer: Any) -> str | None:
        o = self.options
        if trainer.global_step == o.veto_at_step and o.veto_rank in (trainer.rank, -2):
            return f"vetoed by rank {trainer.rank}"
        return None

    @kit.hookimpl
    def kit_loader_exhausted(self, trainer: Any) -> None:
        self._add(trainer, "loader_exhausted")

    @kit.hookimpl
    def kit_val_begin(self, trainer: Any) -> None:
        self._add(trainer, "val_begin")

    @kit.hookimpl
    def kit_val_step_end(self, trainer: Any, batch_idx: int) -> None:
        self._add(trainer, "val_step_end", batch_idx)

    @kit.hookimpl
    def kit_val_end(self, trainer: Any) -> None:
        self._add(trainer, "val_end")

    @kit.hookimpl
    def kit_checkpoint_save(self, trainer: Any) -> None:
        self._add(trainer, "checkpoint_save")

    @kit.hookimpl
    def kit_iteration_end(self, trainer: Any) -> None:
        self._add(trainer, "iteration_end")

    @kit.hookimpl
    def kit_test_begin(self, trainer: Any) -> None:
        self._add(trainer, "test_begin")

    @kit.hookimpl
    def kit_test_step_end(self, trainer: Any, batch_idx: int) -> None:
        self._add(trainer, "test_step_end", batch_idx)

    @kit.hookimpl
    def kit_test_end(self, trainer: Any) -> None:
        self._add(trainer, "test_end")

    @kit.hookimpl
    def kit_metric_recorded(self, record: kit.MetricRecord) -> None:
        self.events.append(["metric", record.name, record.value])

    @kit.hookimpl
    def kit_interrupt(self, signum: int) -> None:
        self.events.append(["interrupt", signum])

    @kit.hookimpl
    def kit_train_end(self, trainer: Any) -> None:
        self.events.append(["train_end", trainer.status])
        out = Path(self.options.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"rank{trainer.rank}.json").write_text(json.dumps(self.events))
