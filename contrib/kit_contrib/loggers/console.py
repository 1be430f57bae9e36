"""``console``: progress bars on a terminal, plain lines elsewhere, a results table at the end.

The bars live in a separate plugin that is registered only on a terminal, so a run
whose output goes to a file or a pipe pays nothing per step for them. The loss shown
on the bar is the one the trainer already logged: the console never syncs the device.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

import kit

if TYPE_CHECKING:
    from kit import MetricRecord, Trainer

__all__ = ["ConsoleLogger"]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class ConsoleLogger:
    """Human-readable output of a run."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        progress: bool | None = Field(None, description="progress bars; default: on a terminal")
        refresh_per_second: float = Field(10.0, gt=0)

    def __init__(self, options: Options | None = None, *, console: Console | None = None) -> None:
        self.options = options or self.Options()
        self.console = console or Console(highlight=False)
        self.bars: _Bars | None = None

    @kit.hookimpl
    def kit_train_begin(self, trainer: Trainer) -> None:
        cfg = trainer.config
        params = sum(p.numel() for p in trainer.model.parameters()) if trainer.model else 0
        self.console.print(
            f"kit {kit.__version__} · {trainer.mode} · experiment {cfg.experiment} · "
            f"backend {cfg.backend} · device {trainer.device} · {params:,} parameters"
        )
        if trainer.run_dir is not None:
            self.console.print(f"run directory: {trainer.run_dir}")
        progress = self.options.progress
        if progress is None:
            progress = self.console.is_terminal
        if progress:
            self.bars = _Bars(self.console, self.options.refresh_per_second)
            trainer.add_plugin(self.bars, name="console.progress")
            self.bars.start(trainer)

    @kit.hookimpl
    def kit_iteration_end(self, trainer: Trainer, iteration: int, metrics: dict[str, float]) -> None:
        step_based = trainer.config.training.type == "step"
        if step_based and not any(k.startswith("val/") for k in metrics):
            return
        unit = "step" if step_based else "epoch"
        total = trainer.config.training.iterations
        parts = "  ".join(f"{k} {_fmt(v)}" for k, v in sorted(metrics.items()))
        self.console.print(f"{unit} {iteration}/{total}  {parts}")

    @kit.hookimpl
    def kit_train_end(self, trainer: Trainer) -> None:
        if self.bars is not None:
            self.bars.stop()
            self.bars = None
        if trainer.results and trainer.trains:  # a mode that only evaluates prints its own table
            table = Table(title=f"results ({trainer.status})")
            table.add_column("metric")
            for split in trainer.results:
                table.add_column(split, justify="right")
            names = sorted({n for values in trainer.results.values() for n in values})
            for name in names:
                table.add_row(name, *(_fmt(v.get(name, "")) for v in trainer.results.values()))
            self.console.print(table)
        where = f" in {trainer.run_dir}" if trainer.run_dir is not None else ""
        self.console.print(f"{'run' if trainer.trains else trainer.mode} {trainer.status}{where}")


class _Bars:
    """Train/val/test progress bars; throttled so a step costs a counter increment."""

    def __init__(self, console: Console, refresh_per_second: float) -> None:
        self.progress = Progress(
            TextColumn("{task.description:>5}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[loss]}"),
            console=console,
            refresh_per_second=refresh_per_second,
            transient=False,
        )
        self.interval = 1.0 / refresh_per_second
        self.train: TaskID | None = None
        self.eval: TaskID | None = None
        self.pending = 0
        self.next_update = 0.0
        self.loss = ""
        self.started = 0.0
        self.done = 0

    def start(self, trainer: Trainer) -> None:
        self.progress.start()
        if trainer.config.training.type == "step":
            cfg = trainer.config.training
            self._new_train(cfg.iterations * cfg.grad_accum, trainer.iteration * cfg.grad_accum)

    def stop(self) -> None:
        self._flush()
        self.progress.stop()

    def _new_train(self, total: int | None, completed: int = 0) -> None:
        if self.train is not None:
            self._flush()
            self.progress.remove_task(self.train)
        self.train = self.progress.add_task("train", total=total, completed=completed,
                                            loss="", rate="")
        self.started, self.done = time.perf_counter(), completed

    def _flush(self) -> None:
        if self.train is None or not self.pending:
            return
        self.done += self.pending
        elapsed = time.perf_counter() - self.started
        rate = f"{self.done / elapsed:,.1f} it/s" if elapsed > 0 else ""
        self.progress.update(self.train, advance=self.pending, loss=self.loss, rate=rate)
        self.pending = 0

    @kit.hookimpl
    def kit_iteration_begin(self, trainer: Trainer, iteration: int) -> None:
        if trainer.config.training.type == "epoch":
            try:
                total: int | None = len(trainer.train_loader)  # type: ignore[arg-type]
            except TypeError:
                total = None
            self._new_train(total)
            self.progress.update(self.train, description=f"ep {iteration}")  # type: ignore[arg-type]

    @kit.hookimpl
    def kit_step_end(self) -> None:
        self.pending += 1
        now = time.perf_counter()
        if now >= self.next_update:
            self.next_update = now + self.interval
            self._flush()

    @kit.hookimpl
    def kit_metric_recorded(self, record: MetricRecord) -> None:
        if record.name == "train/loss":
            self.loss = f"loss {_fmt(record.value)}"

    def _eval_begin(self, name: str, loader: Any) -> None:
        self._flush()
        try:
            total: int | None = len(loader)
        except TypeError:
            total = None
        self.eval = self.progress.add_task(name, total=total, loss="", rate="")

    def _eval_end(self) -> None:
        if self.eval is not None:
            self.progress.remove_task(self.eval)
            self.eval = None

    @kit.hookimpl
    def kit_val_begin(self, trainer: Trainer) -> None:
        self._eval_begin("val", trainer.val_loader)

    @kit.hookimpl
    def kit_test_begin(self, trainer: Trainer) -> None:
        self._eval_begin("test", trainer.test_loader)

    @kit.hookimpl
    def kit_val_step_end(self) -> None:
        if self.eval is not None:
            self.progress.advance(self.eval)

    @kit.hookimpl
    def kit_test_step_end(self) -> None:
        if self.eval is not None:
            self.progress.advance(self.eval)

    @kit.hookimpl
    def kit_val_end(self) -> None:
        self._eval_end()

    @kit.hookimpl
    def kit_test_end(self) -> None:
        self._eval_end()
