"""``early_stopping``: stop training when a validation metric stops improving.

It watches one validation result (``monitor: val/loss``) at every validation, in
``kit_val_end``, whose results are reduced over every rank, so every rank counts alike
and reaches the same decision. That hook fires before the iteration's checkpoint, so a
stop is saved with the count that caused it, and the count (best value, evaluations
without improvement) resumes exactly with ``--mode continue``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeGuard

from pydantic import BaseModel, ConfigDict, Field, field_validator

import kit

if TYPE_CHECKING:
    from kit import Trainer

__all__ = ["EarlyStopping"]

_STATE = "early_stopping"
_PREFIX = "val/"


class EarlyStopping:
    """Sets ``trainer.should_stop`` after ``patience`` validations without improvement."""

    autoload: ClassVar[bool] = False

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        monitor: str = Field(description="a validation result to watch, e.g. val/loss or val/accuracy")
        mode: Literal["min", "max"] = Field("min", description="whether a lower or higher value is better")
        patience: int = Field(3, ge=1, description="validations without improvement before stopping")
        min_delta: float = Field(0.0, ge=0, allow_inf_nan=False,
                                 description="how much better than the best a value must be to count")

        @field_validator("monitor")
        @classmethod
        def _validation_result(cls, value: str) -> str:
            if not value.startswith(_PREFIX) or value == _PREFIX:
                raise ValueError(f"{value!r} is not a validation result: early_stopping decides at each "
                                 "validation, so name one as val/<name>, e.g. val/loss or val/accuracy")
            return value

    def __init__(self, options: Options) -> None:
        self.options = options
        self.best: float | None = None
        self.best_iteration: int | None = None
        self.wait = 0
        self._checked = False  # whether the monitor's presence was checked in this process

    # -- deciding -------------------------------------------------------------------

    def _improves(self, value: float) -> bool:
        if not math.isfinite(value):  # a NaN or an infinity is never progress
            return False
        if self.best is None:
            return True
        delta = self.options.min_delta
        return value < self.best - delta if self.options.mode == "min" else value > self.best + delta

    @kit.hookimpl
    def kit_train_begin(self, trainer: Trainer) -> None:
        if trainer.trains and trainer.val_loader is None:
            self._checked = True
            kit.warn(f"early_stopping: this run has no validation data, so {self.options.monitor} never "
                     "appears and early_stopping will not stop it (give the data factory a val split)")

    @kit.hookimpl
    def kit_val_end(self, trainer: Trainer, iteration: int, val_results: dict[str, float]) -> None:
        if not trainer.trains:  # --mode evaluate validates without training: nothing to stop
            return
        key = self.options.monitor[len(_PREFIX):]
        if key not in val_results:
            if not self._checked:
                self._checked = True
                names = ", ".join(_PREFIX + name for name in sorted(val_results)) or "none"
                kit.warn(f"early_stopping: {self.options.monitor} is not among the validation results "
                         f"({names}), so early_stopping will not stop this run (set its monitor to one "
                         "of them)")
            return
        self._checked = True
        value = float(val_results[key])
        if self._improves(value):
            self.best, self.best_iteration, self.wait = value, iteration, 0
        else:
            self.wait += 1
        trainer.record("early_stopping/wait", self.wait, split="val")
        if self.wait >= self.options.patience and not trainer.should_stop:
            trainer.should_stop = True
            best = "no finite value yet" if self.best is None else \
                f"best {self.best:.6g} at iteration {self.best_iteration}"
            kit.say(f"early_stopping: {self.options.monitor} has not improved for {self.wait} "
                    f"validation{'s' * (self.wait != 1)} (patience {self.options.patience}, "
                    f"min_delta {self.options.min_delta:g}; {best}): stopping after iteration {iteration}")

    # -- resuming -------------------------------------------------------------------

    @kit.hookimpl
    def kit_checkpoint_save(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["plugins"][_STATE] = {
            "monitor": self.options.monitor, "mode": self.options.mode,
            "best": self.best, "best_iteration": self.best_iteration, "wait": self.wait,
        }

    @kit.hookimpl
    def kit_checkpoint_load(self, trainer: Trainer, checkpoint: dict[str, Any]) -> None:
        if not trainer.trains:
            return
        plugins = checkpoint.get("plugins")
        state = plugins.get(_STATE) if isinstance(plugins, dict) else None
        if state is None:  # the run was started without early_stopping: count from here
            return
        restored = _restore(state)
        if restored is None:
            kit.warn("early_stopping: the checkpoint's early_stopping state is malformed; counting "
                     "validations afresh from here")
            return
        monitor, mode, best, best_iteration, wait = restored
        if (monitor, mode) != (self.options.monitor, self.options.mode):
            kit.say(f"early_stopping: the checkpoint watched {monitor} ({mode}) and this run watches "
                    f"{self.options.monitor} ({self.options.mode}): counting validations afresh")
            return
        self.best, self.best_iteration, self.wait = best, best_iteration, wait


def _restore(state: Any) -> tuple[str, str, float | None, int | None, int] | None:
    """``state`` as saved by :meth:`EarlyStopping.kit_checkpoint_save`, or ``None`` when any
    field has the wrong type or an impossible value (a checkpoint is not trusted)."""
    if not isinstance(state, dict):
        return None
    monitor, mode = state.get("monitor"), state.get("mode")
    best, best_iteration, wait = state.get("best"), state.get("best_iteration"), state.get("wait")
    if not (isinstance(monitor, str) and isinstance(mode, str) and _count(wait)):
        return None
    if best is None and best_iteration is None:  # no finite value seen yet
        return monitor, mode, None, None, wait
    if not (_count(best_iteration) and isinstance(best, float | int) and not isinstance(best, bool)
            and math.isfinite(best)):
        return None
    return monitor, mode, float(best), best_iteration, wait


def _count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
