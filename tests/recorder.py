"""A plugin that implements every hook and records what fired, in order."""

from __future__ import annotations

from typing import Any

import kit


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.records: list[kit.MetricRecord] = []
        self.losses: list[Any] = []

    def names(self, *, metrics: bool = False) -> list[str]:
        return [e[0] for e in self.events if metrics or e[0] != "metric"]

    @kit.hookimpl
    def kit_train_begin(self, trainer: Any) -> None:
        self.events.append(("train_begin",))

    @kit.hookimpl
    def kit_train_end(self, trainer: Any) -> None:
        self.events.append(("train_end", trainer.status))

    @kit.hookimpl
    def kit_iteration_begin(self, iteration: int) -> None:
        self.events.append(("iteration_begin", iteration))

    @kit.hookimpl
    def kit_iteration_end(self, iteration: int, metrics: dict[str, float]) -> None:
        self.events.append(("iteration_end", iteration, tuple(sorted(metrics))))

    @kit.hookimpl
    def kit_step_begin(self, iteration: int, batch_idx: int) -> None:
        self.events.append(("step_begin", iteration, batch_idx))

    @kit.hookimpl
    def kit_before_backward(self, loss: Any) -> None:
        self.events.append(("before_backward",))

    @kit.hookimpl
    def kit_after_backward(self, trainer: Any) -> None:
        self.events.append(("after_backward",))

    @kit.hookimpl
    def kit_before_optimizer_step(self, trainer: Any) -> None:
        self.events.append(("before_optimizer_step", trainer.global_step))

    @kit.hookimpl
    def kit_skip_optimizer_step(self, trainer: Any) -> None:
        self.events.append(("skip_optimizer_step", trainer.global_step))

    @kit.hookimpl
    def kit_step_end(self, iteration: int, batch_idx: int, loss: Any) -> None:
        self.losses.append(loss)
        self.events.append(("step_end", iteration, batch_idx))

    @kit.hookimpl
    def kit_loader_exhausted(self, iteration: int) -> None:
        self.events.append(("loader_exhausted", iteration))

    @kit.hookimpl
    def kit_val_begin(self, iteration: int) -> None:
        self.events.append(("val_begin", iteration))

    @kit.hookimpl
    def kit_val_step_begin(self, batch_idx: int) -> None:
        self.events.append(("val_step_begin", batch_idx))

    @kit.hookimpl
    def kit_val_step_end(self, batch_idx: int, loss: Any) -> None:
        self.events.append(("val_step_end", batch_idx))

    @kit.hookimpl
    def kit_val_end(self, iteration: int, val_results: dict[str, float]) -> None:
        self.events.append(("val_end", iteration, tuple(sorted(val_results))))

    @kit.hookimpl
    def kit_test_begin(self) -> None:
        self.events.append(("test_begin",))

    @kit.hookimpl
    def kit_test_step_begin(self, batch_idx: int) -> None:
        self.events.append(("test_step_begin", batch_idx))

    @kit.hookimpl
    def kit_test_step_end(self, batch_idx: int, loss: Any) -> None:
        self.events.append(("test_step_end", batch_idx))

    @kit.hookimpl
    def kit_test_end(self, test_results: dict[str, float]) -> None:
        self.events.append(("test_end", tuple(sorted(test_results))))

    @kit.hookimpl
    def kit_metric_recorded(self, record: kit.MetricRecord) -> None:
        self.records.append(record)
        self.events.append(("metric", record.name))

    @kit.hookimpl
    def kit_checkpoint_save(self, checkpoint: dict[str, Any]) -> None:
        self.events.append(("checkpoint_save",))

    @kit.hookimpl
    def kit_checkpoint_load(self, checkpoint: dict[str, Any]) -> None:
        self.events.append(("checkpoint_load",))

    @kit.hookimpl
    def kit_exception(self, error: BaseException) -> None:
        self.events.append(("exception", type(error).__name__))

    @kit.hookimpl
    def kit_interrupt(self, signum: int) -> None:
        self.events.append(("interrupt", signum))
