"""Dispatch only the hooks somebody implements, with every call type-checked.

pluggy costs a few microseconds per call even with no implementations; in a loop of
small steps that is measurable. :class:`HookRelay` resolves each hook once: an
attribute is the hook caller when at least one plugin implements it, else ``None``,
so the loop pays one ``is not None`` test for an event nobody listens to.

pluggy's callers accept any keywords, so a misspelt one would only show at run time
(and only when a plugin implements the hook). Each attribute is therefore declared with
a callable protocol that mirrors its spec in :mod:`kit.hookspecs`, keyword-only, as
hooks are always called: mypy checks every call, and ``tests/core/test_relay_types.py``
checks the protocols against the specs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import pluggy

from kit.hookspecs import HOOK_NAMES

if TYPE_CHECKING:
    import torch

    from kit.metrics import MetricRecord
    from kit.tasks import Evaluation
    from kit.trainer import Trainer

__all__ = [
    "CheckpointHook",
    "EvalStepBeginHook",
    "EvalStepEndHook",
    "ExceptionHook",
    "HookRelay",
    "InterruptHook",
    "IterationEndHook",
    "IterationHook",
    "MetricHook",
    "StepBeginHook",
    "StepEndHook",
    "TestEndHook",
    "TrainerHook",
    "ValEndHook",
]

# One protocol per signature in kit.hookspecs; hooks that share a signature share one.


class TrainerHook(Protocol):
    def __call__(self, *, trainer: Trainer) -> None: ...


class IterationHook(Protocol):
    def __call__(self, *, trainer: Trainer, iteration: int) -> None: ...


class StepBeginHook(Protocol):
    def __call__(self, *, trainer: Trainer, iteration: int, batch_idx: int) -> None: ...


class StepEndHook(Protocol):
    def __call__(self, *, trainer: Trainer, iteration: int, batch_idx: int, loss: torch.Tensor) -> None: ...


class LossHook(Protocol):
    def __call__(self, *, trainer: Trainer, loss: torch.Tensor) -> None: ...


class OptimizerHook(Protocol):
    def __call__(self, *, trainer: Trainer, optimizer: torch.optim.Optimizer) -> None: ...


class VetoHook(Protocol):
    def __call__(self, *, trainer: Trainer, optimizer: torch.optim.Optimizer,
                 loss: torch.Tensor) -> str | None: ...


class EvalStepBeginHook(Protocol):
    def __call__(self, *, trainer: Trainer, batch_idx: int) -> None: ...


class EvalStepEndHook(Protocol):
    def __call__(self, *, trainer: Trainer, batch_idx: int, loss: torch.Tensor,
                 evaluation: Evaluation) -> None: ...


class ValEndHook(Protocol):
    def __call__(self, *, trainer: Trainer, iteration: int, val_results: dict[str, float]) -> None: ...


class IterationEndHook(Protocol):
    def __call__(self, *, trainer: Trainer, iteration: int, metrics: dict[str, float]) -> None: ...


class TestEndHook(Protocol):
    def __call__(self, *, trainer: Trainer, test_results: dict[str, float]) -> None: ...


class MetricHook(Protocol):
    def __call__(self, *, trainer: Trainer, record: MetricRecord) -> None: ...


class CheckpointHook(Protocol):
    def __call__(self, *, trainer: Trainer, checkpoint: dict[str, Any]) -> None: ...


class ExceptionHook(Protocol):
    def __call__(self, *, trainer: Trainer, error: BaseException) -> None: ...


class InterruptHook(Protocol):
    def __call__(self, *, trainer: Trainer, signum: int) -> None: ...


class HookRelay:
    """One attribute per hook (``relay.kit_step_end``): a caller, or ``None``.

    Call them with keywords after an ``is not None`` test; :meth:`call` does both for code
    off the hot path, unchecked.
    """

    kit_train_begin: TrainerHook | None
    kit_iteration_begin: IterationHook | None
    kit_step_begin: StepBeginHook | None
    kit_before_backward: LossHook | None
    kit_after_backward: TrainerHook | None
    kit_before_optimizer_step: OptimizerHook | None
    kit_skip_optimizer_step: VetoHook | None
    kit_step_end: StepEndHook | None
    kit_loader_exhausted: IterationHook | None
    kit_val_begin: IterationHook | None
    kit_val_step_begin: EvalStepBeginHook | None
    kit_val_step_end: EvalStepEndHook | None
    kit_val_end: ValEndHook | None
    kit_iteration_end: IterationEndHook | None
    kit_test_begin: TrainerHook | None
    kit_test_step_begin: EvalStepBeginHook | None
    kit_test_step_end: EvalStepEndHook | None
    kit_test_end: TestEndHook | None
    kit_train_end: TrainerHook | None
    kit_metric_recorded: MetricHook | None
    kit_checkpoint_save: CheckpointHook | None
    kit_checkpoint_load: CheckpointHook | None
    kit_exception: ExceptionHook | None
    kit_interrupt: InterruptHook | None

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self.refresh()

    def refresh(self) -> None:
        """Re-resolve after plugins were registered or unregistered."""
        for name in HOOK_NAMES:
            caller = getattr(self.pm.hook, name)
            setattr(self, name, caller if caller.get_hookimpls() else None)

    def call(self, name: str, **kwargs: Any) -> None:
        """Fire ``name`` when implemented; for code off the hot path (not type-checked)."""
        caller = getattr(self, name)
        if caller is not None:
            caller(**kwargs)

    if not TYPE_CHECKING:  # for mypy, an unknown hook name stays an error

        def __getattr__(self, name: str) -> Any:  # only reached for unknown names
            raise AttributeError(f"no kit hook named {name!r}")
