"""``lr_monitor``: record every optimizer parameter group's learning rate (and momentum).

``lr/group<i>`` is the learning rate group ``i`` uses for the coming optimizer step,
recorded at ``global_step`` (the steps taken so far) when a training batch begins: every
``every_n_steps`` optimizer steps, and at the start of each iteration after a scheduler
with ``interval: iteration`` has stepped. Recording there, rather than after a step,
gives each (name, step) one value that a resumed run records exactly as a straight one.
A learning rate is a Python float on the host, so this costs no device sync.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

import kit

if TYPE_CHECKING:
    from kit import Trainer

__all__ = ["LearningRateMonitor"]


class LearningRateMonitor:
    """Records ``lr/group<i>`` (and ``momentum/group<i>``) for every parameter group."""

    autoload: ClassVar[bool] = False

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        every_n_steps: int | None = Field(
            None, ge=1, description="record every N optimizer steps; default: training.log_every_n_steps")
        momentum: bool = Field(False, description="also record momentum/group<i> (SGD's momentum, "
                                                  "Adam's beta1)")

    def __init__(self, options: Options | None = None) -> None:
        self.options = options or self.Options()
        self.every = 1
        self._last = -1  # the step recorded last, so a step with several micro-batches records once
        self._per_iteration = False  # a scheduler steps at each iteration's end
        self._iteration_starts = False

    @kit.hookimpl
    def kit_train_begin(self, trainer: Trainer) -> None:
        self.every = self.options.every_n_steps or trainer.config.training.log_every_n_steps
        scheduler = trainer.config.scheduler
        self._per_iteration = trainer.scheduler is not None and scheduler is not None \
            and scheduler.interval == "iteration"
        optimizer = trainer.optimizer
        if self.options.momentum and optimizer is not None and trainer.trains \
                and not any(_momentum(group) is not None for group in optimizer.param_groups):
            kit.warn(f"lr_monitor: {type(optimizer).__name__} has no momentum or betas in its parameter "
                     "groups, so no momentum/group<i> is recorded (set momentum: false)")

    @kit.hookimpl
    def kit_iteration_begin(self, trainer: Trainer) -> None:
        # a fresh iteration (not a resumed epoch's rest), so an iteration scheduler has just stepped
        self._iteration_starts = self._per_iteration and (
            trainer.config.training.type == "step" or trainer.epoch_batches == 0)

    @kit.hookimpl
    def kit_step_begin(self, trainer: Trainer) -> None:
        step = trainer.global_step
        if step == self._last or not (step % self.every == 0 or self._iteration_starts):
            return
        self._last, self._iteration_starts = step, False
        optimizer = trainer.optimizer
        assert optimizer is not None
        for i, group in enumerate(optimizer.param_groups):
            trainer.record(f"lr/group{i}", group["lr"], split="train")
            if self.options.momentum:
                momentum = _momentum(group)
                if momentum is not None:
                    trainer.record(f"momentum/group{i}", momentum, split="train")


def _momentum(group: dict[str, Any]) -> Any:
    """SGD's and RMSprop's ``momentum``, or Adam's ``betas[0]``; ``None`` when the group has neither."""
    if "momentum" in group:
        return group["momentum"]
    betas = group.get("betas")
    return betas[0] if isinstance(betas, tuple | list) and betas else None
