"""``timer``: stop training, with a checkpoint, before a wall-clock budget runs out.

After every optimizer step (``interval: step``) or every epoch (``interval: iteration``)
it asks whether one more of the longest step (or iteration) seen so far would take the
training time past ``max_time``; if so it sets ``trainer.should_stop``, and the loop
validates and saves at that step. The longest interval is measured between two checks,
so it includes a validation and a checkpoint that fell between them: the margin covers
the stop's own validation and save. Training time is counted from ``kit_train_begin``
and carried in the checkpoint, so it adds up across ``--mode continue``.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeGuard

from pydantic import BaseModel, ConfigDict, Field, field_validator

import kit

if TYPE_CHECKING:
    from kit import Trainer

__all__ = ["Timer", "format_duration", "parse_duration"]

_STATE = "timer"
_DDHHMMSS = re.compile(r"(\d+):(\d{1,2}):(\d{1,2}):(\d{1,2})")


def parse_duration(value: Any) -> float:
    """Seconds from ``"DD:HH:MM:SS"`` or a positive number of seconds; ``ValueError`` otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration: write \"DD:HH:MM:SS\" (e.g. \"00:23:30:00\") or "
                         "a number of seconds")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DDHHMMSS.fullmatch(value.strip())):
        days, hours, minutes, secs = (int(part) for part in match.groups())
        if hours > 23 or minutes > 59 or secs > 59:
            raise ValueError(f"{value!r} is out of range: hours go to 23, minutes and seconds to 59 "
                             "(DD:HH:MM:SS, e.g. \"00:23:30:00\")")
        seconds = float(((days * 24 + hours) * 60 + minutes) * 60 + secs)
    else:
        raise ValueError(f"{value!r} is not a duration: write \"DD:HH:MM:SS\" (e.g. \"00:23:30:00\") or "
                         "a number of seconds")
    if not 0 < seconds < float("inf"):
        raise ValueError(f"{value!r} is not a positive, finite duration")
    return seconds


def format_duration(seconds: float) -> str:
    """``DD:HH:MM:SS`` (whole seconds, rounded down), as ``max_time`` is written."""
    whole = int(max(seconds, 0.0))
    minutes, secs = divmod(whole, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return f"{days:02d}:{hours:02d}:{minutes:02d}:{secs:02d}"


class Timer:
    """Sets ``trainer.should_stop`` when the next step (or epoch) would overrun ``max_time``."""

    autoload: ClassVar[bool] = False

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        max_time: float = Field(description='the training-time budget: "DD:HH:MM:SS" or seconds')
        interval: Literal["step", "iteration"] = Field(
            "step", description="check after every optimizer step, or at the end of every epoch")

        @field_validator("max_time", mode="before")
        @classmethod
        def _duration(cls, value: Any) -> float:
            return parse_duration(value)

    def __init__(self, options: Options) -> None:
        self.options = options
        self.spent = 0.0  # training seconds before this process started (from the checkpoint)
        self.longest = 0.0  # the longest step or iteration seen, over the whole run
        self._started = 0.0
        self._checked_at = 0.0
        self._last_step = -1
        self._per_epoch = False
        self._active = False

    def elapsed(self) -> float:
        """Training seconds so far, over every continue."""
        return self.spent + (time.monotonic() - self._started if self._active else 0.0)

    @kit.hookimpl
    def kit_train_begin(self, trainer: Trainer) -> None:
        if not trainer.trains:
            return
        self._active = True
        self._started = self._checked_at = time.monotonic()
        self._last_step = trainer.global_step
        self._per_epoch = self.options.interval == "iteration" and trainer.config.training.type == "epoch"
        self._check(trainer)  # a continue whose budget is spent already stops at once

    @kit.hookimpl
    def kit_step_end(self, trainer: Trainer) -> None:
        # one check per optimizer step; in step-based training an iteration is one optimizer step
        if self._per_epoch or not self._active or trainer.global_step == self._last_step:
            return
        self._last_step = trainer.global_step
        self._measure(trainer)

    @kit.hookimpl
    def kit_loader_exhausted(self, trainer: Trainer) -> None:
        if self._per_epoch and self._active:  # an epoch's training ended; its validation and save follow
            self._measure(trainer)

    def _measure(self, trainer: Trainer) -> None:
        now = time.monotonic()
        self.longest = max(self.longest, now - self._checked_at)
        self._checked_at = now
        self._check(trainer)

    def _check(self, trainer: Trainer) -> None:
        elapsed, budget = self.elapsed(), self.options.max_time
        if trainer.should_stop or elapsed + self.longest <= budget:
            return
        trainer.should_stop = True
        unit = "epoch" if self._per_epoch else "step"
        kit.say(f"timer: stopping at step {trainer.global_step}: {elapsed:.1f} s trained of the "
                f"{format_duration(budget)} budget ({budget:g} s), and the longest {unit} took "
                f"{self.longest:.1f} s; go on with `--mode continue` and a larger max_time")

    # -- resuming -------------------------------------------------------------------

    @kit.hookimpl
    def kit_checkpoint_save(self, checkpoint: dict[str, Any]) -> None:
        if self._active:
            checkpoint["plugins"][_STATE] = {"elapsed": self.elapsed(), "longest": self.longest,
                                             "interval": self.options.interval}

    @kit.hookimpl
    def kit_checkpoint_load(self, trainer: Trainer, checkpoint: dict[str, Any]) -> None:
        if not trainer.trains:
            return
        plugins = checkpoint.get("plugins")
        state = plugins.get(_STATE) if isinstance(plugins, dict) else None
        if state is None:  # the run was started without a timer: its budget starts now
            return
        fields = state if isinstance(state, dict) else {}
        elapsed, longest = fields.get("elapsed"), fields.get("longest")
        if not (_seconds(elapsed) and _seconds(longest)):
            kit.warn("timer: the checkpoint's timer state is malformed; counting the budget from now")
            return
        self.spent = float(elapsed)
        # an epoch is longer than a step: a longest step does not bound an epoch
        self.longest = float(longest) if fields.get("interval") == self.options.interval else 0.0


def _seconds(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < float("inf")
