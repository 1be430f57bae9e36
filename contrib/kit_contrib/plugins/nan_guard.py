"""``nan_guard``: skip an optimizer step whose loss or gradients are not finite, and stop the
run with a checkpoint of the last good weights after ``max_consecutive`` of them in a row.

One bad batch (a corrupt sample, an overflow) should not poison the weights: the veto
(``kit_skip_optimizer_step``) leaves the weights and the optimizer's state exactly as they
were, and kit records ``train/skipped_steps`` and ``train/skip_reason`` at that step. A long
run of them means something skipping cannot mend (weights or optimizer state gone bad, a
broken stretch of data), so after ``max_consecutive`` in a row the guard stops the run;
since skipped steps change nothing, the checkpoint the loop saves then holds the last
good weights.

Cost: one fused pass over the gradients per optimizer step, the one the grad scaler
uses to find overflows (``torch._amp_foreach_non_finite_check_and_unscale_`` with a
scale of 1, which leaves every value as it was), and one host read of its flag and the
loss: the decision needs them on the host, so on a GPU this is one sync per step. The
flag is zeroed only after a bad step, since the check only ever sets it. Only
when a step is bad are the gradients' 1-norms computed, to name the parameter. Gradients
of mixed devices or dtypes, or sparse ones, take one ``torch._foreach_norm`` instead.
Under ``precision: "16"`` only the loss is checked: overflowing gradients are the grad
scaler's to handle (it skips those steps and lowers its scale).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import torch
from pydantic import BaseModel, ConfigDict, Field

import kit

if TYPE_CHECKING:
    from kit import Trainer

__all__ = ["NanGuard"]

_STATE = "nan_guard"
_SHORT = frozenset({torch.float16, torch.bfloat16})


def _gradients(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every gradient of the optimizer's parameters, in parameter-group order."""
    return [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]


def _with_gradients(optimizer: torch.optim.Optimizer) -> list[tuple[int, torch.Tensor]]:
    """The parameters :func:`_gradients` reads, in its order, with their group's index."""
    return [(i, p) for i, group in enumerate(optimizer.param_groups)
            for p in group["params"] if p.grad is not None]


class _Plan(NamedTuple):
    """How to check this run's steps, decided at its first step (kept while the optimizer is)."""

    optimizer: torch.optim.Optimizer
    gradients: bool
    """Check the gradients: ``check_gradients``, and not under ``precision: "16"``."""
    dtype: torch.dtype | None
    """The 1-norms' dtype: float32 for 16-bit gradients (their sums overflow float16 early)."""
    on_cpu: bool
    """Read the values one by one: a CPU tensor is read without waiting, and stacking costs more."""
    found: torch.Tensor | None
    """The fused check's flag (``None``: gradients of mixed kinds take the 1-norms instead)."""
    one: torch.Tensor | None
    """Its scale: 1."""


def _plan(trainer: Trainer, optimizer: torch.optim.Optimizer, loss: torch.Tensor, gradients: bool) -> _Plan:
    dtypes = {p.dtype for group in optimizer.param_groups for p in group["params"]}
    widen = bool(dtypes & _SHORT) and torch.float64 not in dtypes  # float64 cannot narrow to float32
    gradients = gradients and trainer.config.training.precision != "16"
    grads = _gradients(optimizer) if gradients else []
    found = one = None
    kinds = {(g.device, g.dtype, g.layout) for g in grads}
    if len(kinds) == 1 and next(iter(kinds))[2] == torch.strided:
        found = torch.zeros(1, device=grads[0].device)
        one = torch.ones(1, device=grads[0].device)
        try:  # torch builds without the CPU kernel (before 2.3) take the 1-norms
            torch._amp_foreach_non_finite_check_and_unscale_(grads, found, one)
        except (RuntimeError, NotImplementedError):
            found = one = None
    return _Plan(optimizer, gradients, torch.float32 if widen else None, loss.device.type == "cpu",
                 found, one)


def _finite(plan: _Plan, loss: torch.Tensor) -> bool:
    """Whether the loss and every gradient are finite; one fused pass and one host read."""
    grads = _gradients(plan.optimizer) if plan.gradients else []
    if not grads:
        return math.isfinite(loss.item())
    if plan.found is not None and plan.one is not None:
        # the check only ever sets its flag, so a flag still 0 from the last good step needs
        # no zeroing; after a bad step, _reason zeroes it
        torch._amp_foreach_non_finite_check_and_unscale_(grads, plan.found, plan.one)
        if plan.on_cpu:
            return math.isfinite(loss.item()) and not plan.found.item()
        return (plan.found + loss.detach().float() * 0).item() == 0  # NaN for a non-finite loss
    return math.isfinite(sum(_finite_check(plan, loss)))


def _finite_check(plan: _Plan, loss: torch.Tensor) -> list[float]:
    """``[loss, |grad_1|_1, …]`` on the host: all finite exactly when the step is.

    A 1-norm is NaN or inf when any element is, and overflows only past ~3e38, where a
    gradient is as good as infinite anyway. One ``_foreach_norm`` computes them all; on an
    accelerator they are stacked and read at once, the step's one sync.
    """
    grads = _gradients(plan.optimizer) if plan.gradients else []
    norms = torch._foreach_norm(grads, 1, dtype=plan.dtype) if grads else []
    if plan.on_cpu:
        return [loss.item(), *[norm.item() for norm in norms]]
    return torch.stack([loss.reshape(()), *norms]).tolist()


def _reason(trainer: Trainer, plan: _Plan, loss: torch.Tensor) -> str | None:
    """Why a step :func:`_finite` refused must not be taken: which value is not finite.
    Resets the fused check's flag for the next step."""
    if plan.found is not None:
        plan.found.zero_()
    values = _finite_check(plan, loss)
    if not math.isfinite(values[0]):
        return "non-finite loss"
    return _where(trainer, plan.optimizer, values[1:])


def _where(trainer: Trainer, optimizer: torch.optim.Optimizer, norms: list[float]) -> str | None:
    """The reason for non-finite gradients: the first parameter's name, and how many more."""
    model = trainer.model
    names = {id(p): name for name, p in model.named_parameters()} if model is not None else {}
    found = _with_gradients(optimizer)
    bad = [names.get(id(p), f"parameter group {group}")
           for (group, p), norm in zip(found, norms, strict=True) if not math.isfinite(norm)]
    if not bad:  # every value finite; only their sum overflowed
        return None
    more = f" and {len(bad) - 1} more parameters" if len(bad) > 1 else ""
    return f"non-finite gradients in {bad[0]}{more}"


class NanGuard:
    """Vetoes optimizer steps with a non-finite loss or gradients; stops after a run of them."""

    autoload: ClassVar[bool] = False

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        max_consecutive: int = Field(
            10, ge=1, description="stop the run after this many skipped steps in a row")
        check_gradients: bool = Field(
            True, description="also check every gradient (not under precision 16); false: the loss only")

    def __init__(self, options: Options | None = None) -> None:
        self.options = options or self.Options()
        self.consecutive = 0
        """Steps this guard skipped in a row, up to now; checkpointed, so it spans a continue."""
        self._warned = False
        self._plan: _Plan | None = None

    @kit.hookimpl
    def kit_skip_optimizer_step(self, trainer: Trainer, optimizer: torch.optim.Optimizer,
                                loss: torch.Tensor) -> str | None:
        plan = self._plan
        if plan is None or plan.optimizer is not optimizer:
            plan = self._plan = _plan(trainer, optimizer, loss, self.options.check_gradients)
        if _finite(plan, loss):  # the usual case: one fused check, one host read
            self.consecutive = 0
            return None
        reason = _reason(trainer, plan, loss)
        if reason is None:  # every value finite; only a 1-norm overflowed
            self.consecutive = 0
            return None
        self.consecutive += 1
        if self.consecutive >= self.options.max_consecutive:
            self._stop(trainer, reason)
        return reason

    def _stop(self, trainer: Trainer, reason: str) -> None:
        trainer.should_stop = True
        if self._warned:
            return
        self._warned = True
        kit.warn(
            f"nan_guard: {self.consecutive} optimizer steps in a row were skipped (last: {reason}); "
            f"stopping at step {trainer.global_step + 1} with a checkpoint of the last good weights. "
            "Lower optimizer.lr, set training.clip_grad_norm or check the data these steps read, then "
            "resume with --mode continue (nan_guard's max_consecutive allows more in a row)")

    @kit.hookimpl
    def kit_checkpoint_save(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["plugins"][_STATE] = {"consecutive": self.consecutive}

    @kit.hookimpl
    def kit_checkpoint_load(self, checkpoint: dict[str, Any]) -> None:
        state = (checkpoint.get("plugins") or {}).get(_STATE)
        if state is None:  # saved by a run without nan_guard
            return
        count = state.get("consecutive") if isinstance(state, dict) else None
        if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
            self.consecutive = count
        else:
            self.consecutive = 0
            kit.warn(f"nan_guard: the checkpoint's state {str(state)[:60]!r} is not "
                     "{'consecutive': <count>}; counting skipped steps from 0")
