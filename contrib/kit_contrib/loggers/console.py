"""``console``: progress bars on a terminal, plain lines elsewhere, a results table at the end.

The bars live in a separate plugin that is registered only on a terminal, so a run
whose output goes to a file or a pipe pays nothing per step for them. The loss shown
on the bar is the one the trainer already logged: the console never syncs the device.

On a terminal the bars are a transient ``rich`` live display: lines printed through
the same console land above it, a finished epoch's bar gives way to that epoch's line,
and nothing of the bars is left once training ends. The display is redrawn only from
the training thread (``auto_refresh=False``): rich's refresh thread would race the
printing of an epoch line and, in a scrolling terminal, leave a stale bar where the line
belonged. Everything printed is a ``Text``, never markup: a run directory or a metric
name containing ``[brackets]`` or ``:colons:`` prints as it is. The rate (it/s) appears
once a second of training has been timed, measured over a window of training time.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

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
        refresh_per_second: float = Field(10.0, gt=0, description="bar redraws per second, at most")

    def __init__(self, options: Options | None = None, *, console: Console | None = None) -> None:
        self.options = options or self.Options()
        self.console = console or Console(highlight=False, markup=False, emoji=False)
        self.bars: _Bars | None = None

    def _print(self, text: str, *, path: bool = False) -> None:
        """Print ``text`` literally, whatever the console's markup and emoji settings.

        A line ending in a path is left to the terminal to wrap, so that it copies whole.
        """
        self.console.print(Text(text), soft_wrap=path)

    @kit.hookimpl
    def kit_train_begin(self, trainer: Trainer) -> None:
        cfg = trainer.config
        params = sum(p.numel() for p in trainer.model.parameters()) if trainer.model else 0
        self._print(
            f"kit {kit.__version__} · {trainer.mode} · experiment {cfg.experiment} · "
            f"backend {cfg.backend.name} · device {trainer.device} · {params:,} parameters"
        )
        if trainer.run_dir is not None:
            self._print(f"run directory: {trainer.run_dir}", path=True)
        progress = self.options.progress
        if progress is None:
            progress = self.console.is_terminal
        if progress:
            bars = _EpochBars if cfg.training.type == "epoch" else _Bars
            self.bars = bars(self.console, self.options.refresh_per_second)
            trainer.add_plugin(self.bars, name="console.progress")
            self.bars.start(trainer)

    @kit.hookimpl
    def kit_iteration_end(self, trainer: Trainer, iteration: int, metrics: dict[str, float]) -> None:
        step_based = trainer.config.training.type == "step"
        if step_based and not any(k.startswith("val/") for k in metrics):
            return
        if self.bars is not None and not step_based:
            self.bars.end_pass()  # the epoch's line takes its bar's place
        unit = "step" if step_based else "epoch"
        total = trainer.config.training.iterations
        parts = "  ".join(f"{k} {_fmt(v)}" for k, v in sorted(metrics.items()))
        self._print(f"{unit} {iteration}/{total}  {parts}")

    @kit.hookimpl
    def kit_train_end(self, trainer: Trainer) -> None:
        if self.bars is not None:
            self.bars.stop()
            self.bars = None
        if trainer.results and trainer.trains:  # a mode that only evaluates prints its own table
            table = Table(title=Text(f"results ({trainer.status})"))
            table.add_column("metric")
            for split in trainer.results:
                table.add_column(Text(split), justify="right")
            names = sorted({n for values in trainer.results.values() for n in values})
            for name in names:
                table.add_row(Text(name), *(Text(_fmt(v.get(name, ""))) for v in trainer.results.values()))
            self.console.print(table)
        where = f" in {trainer.run_dir}" if trainer.run_dir is not None else ""
        self._print(f"{'run' if trainer.trains else trainer.mode} {trainer.status}{where}", path=True)


class _Rate:
    """Training steps per second over a sliding window of training time.

    A pass's first reading is only a baseline: the steps before it carry loader start-up
    and warm-up, and one batch says nothing about throughput. Time between passes
    (validation, test, the end of an epoch) is not training time and is left out.
    ``value`` stays None until the window spans ``min_span`` seconds of training.
    """

    def __init__(self, window: float = 10.0, min_span: float = 1.0) -> None:
        self.window, self.min_span = window, min_span
        self.clock = 0.0  # training seconds counted so far
        self.steps = 0  # steps counted so far
        self.last: float | None = None  # time of the previous reading; None while paused
        self.samples: deque[tuple[float, int]] = deque([(0.0, 0)])

    def pause(self) -> None:
        self.last = None

    def add(self, steps: int, now: float) -> None:
        """``steps`` more steps were done by ``now`` (a ``time.perf_counter()``)."""
        if self.last is not None:
            self.clock += now - self.last
            self.steps += steps
            self.samples.append((self.clock, self.steps))
            while len(self.samples) > 2 and self.samples[1][0] <= self.clock - self.window:
                self.samples.popleft()
        self.last = now

    def value(self) -> float | None:
        (t0, n0), (t1, n1) = self.samples[0], self.samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 - t0 >= self.min_span else None


def _speed(rate: float | None, remaining: float | None) -> str:
    """``12.3 it/s`` (``4.2 s/it`` when slow), and the time left at that rate."""
    if rate is None or rate <= 0:
        return ""
    text = f"{rate:,.1f} it/s" if rate >= 1 else f"{1 / rate:,.1f} s/it"
    if remaining is not None:
        text += f" eta {timedelta(seconds=round(remaining / rate))}"
    return text


class _Progress(Progress):
    """Bars that leave the last two columns free.

    The terminal echoes a Ctrl-C as ``^C`` at the cursor, the end of the last bar: on a
    full-width line it would wrap onto a new line that rich does not know about, and
    the next redraw would leave a stale bar above it.
    """

    def get_renderables(self) -> Iterable[RenderableType]:
        yield _Narrower(self.make_tasks_table(self.tasks), by=2)


class _Narrower:
    """``renderable`` drawn ``by`` columns narrower than it is given."""

    def __init__(self, renderable: RenderableType, by: int) -> None:
        self.renderable, self.by = renderable, by

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield from console.render(self.renderable, options.update_width(max(options.max_width - self.by, 1)))


class _Bars:
    """A training bar and a val/test bar, throttled so a step costs a counter increment.

    Step-based training has one training bar for the whole run.
    """

    def __init__(self, console: Console, refresh_per_second: float) -> None:
        self.progress = _Progress(
            TextColumn("{task.description:>5}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[speed]}", markup=False),
            TextColumn("{task.fields[loss]}", markup=False),
            console=console,
            auto_refresh=False,
            transient=True,
            # kit's notices go above the bars; a stderr that is a file or a pipe keeps them
            redirect_stderr=sys.stderr is not None and sys.stderr.isatty(),
        )
        self.interval = 1.0 / refresh_per_second
        self.next_update = 0.0
        self.rate = _Rate()
        self.train: TaskID | None = None
        self.total: int | None = None
        self.done = 0
        self.pending = 0  # training steps not yet shown
        self.loss = ""
        self.eval: TaskID | None = None
        self.eval_pending = 0

    def start(self, trainer: Trainer) -> None:
        self.progress.start()
        cfg = trainer.config.training
        if trainer.trains:  # a mode that only evaluates has a test bar and nothing else
            self._new_train("train", cfg.iterations * cfg.grad_accum, trainer.iteration * cfg.grad_accum)

    def stop(self) -> None:
        self.pause()
        self.progress.stop()

    def _new_train(self, description: str, total: int | None, completed: int = 0) -> None:
        self.end_pass()
        self.total, self.done = total, completed
        self.train = self.progress.add_task(description, total=total, completed=completed,
                                            loss=self.loss, speed=self._speed())

    def end_pass(self) -> None:
        """The training pass is over: its bar goes, its last steps are not timed."""
        self.pause()
        if self.train is not None:
            self.progress.remove_task(self.train)
            self.train = None

    def pause(self) -> None:
        """Show the steps not shown yet; stop the rate's clock until the next step."""
        self.rate.pause()
        self._show_train()
        self.next_update = 0.0  # the next step draws at once and restarts the clock

    def _speed(self) -> str:
        remaining = self.total - self.done if self.total is not None else None
        return _speed(self.rate.value(), remaining)

    def _show_train(self) -> None:
        if self.train is not None and self.pending:
            self.done += self.pending
            self.progress.update(self.train, advance=self.pending, loss=self.loss, speed=self._speed())
            self.progress.refresh()
        self.pending = 0

    @kit.hookimpl
    def kit_step_end(self) -> None:
        self.pending += 1
        now = time.perf_counter()
        if now >= self.next_update:
            self.next_update = now + self.interval
            self.rate.add(self.pending, now)
            self._show_train()

    @kit.hookimpl
    def kit_metric_recorded(self, record: MetricRecord) -> None:
        if record.name == "train/loss":
            self.loss = f"loss {_fmt(record.value)}"

    def _eval_begin(self, name: str, loader: Any) -> None:
        self.pause()
        try:
            total: int | None = len(loader)
        except TypeError:
            total = None
        self.eval = self.progress.add_task(name, total=total, loss="", speed="")

    def _eval_step(self) -> None:
        self.eval_pending += 1
        now = time.perf_counter()
        if now >= self.next_update and self.eval is not None:
            self.next_update = now + self.interval
            self.progress.update(self.eval, advance=self.eval_pending)
            self.eval_pending = 0
            self.progress.refresh()

    def _eval_end(self) -> None:
        self.eval_pending = 0
        self.next_update = 0.0
        if self.eval is not None:
            self.progress.remove_task(self.eval)
            self.eval = None
            self.progress.refresh()

    @kit.hookimpl
    def kit_val_begin(self, trainer: Trainer) -> None:
        self._eval_begin("val", trainer.val_loader)

    @kit.hookimpl
    def kit_test_begin(self, trainer: Trainer) -> None:
        self._eval_begin("test", trainer.test_loader)

    @kit.hookimpl
    def kit_val_step_end(self) -> None:
        self._eval_step()

    @kit.hookimpl
    def kit_test_step_end(self) -> None:
        self._eval_step()

    @kit.hookimpl
    def kit_val_end(self) -> None:
        self._eval_end()

    @kit.hookimpl
    def kit_test_end(self) -> None:
        self._eval_end()


class _EpochBars(_Bars):
    """One training bar per epoch; step-based runs never pay for this per-iteration hook."""

    def start(self, trainer: Trainer) -> None:
        # Measured before the first pass: a resumed pass shortens the loader's length.
        try:
            self.epoch_len: int | None = len(trainer.train_loader)  # type: ignore[arg-type]
        except TypeError:
            self.epoch_len = None
        self.progress.start()

    @kit.hookimpl
    def kit_iteration_begin(self, trainer: Trainer, iteration: int) -> None:
        self._new_train(f"ep {iteration}", self.epoch_len, trainer.epoch_batches)
