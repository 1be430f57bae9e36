"""Dispatch only the hooks somebody implements, with every call type-checked.

pluggy costs a few microseconds per call even with no implementations; in a loop of
small steps that is measurable. :class:`HookRelay` resolves each hook once: an
attribute is the hook caller when at least one plugin implements it, else ``None``,
so the loop pays one ``is not None`` test for an event nobody listens to.

A hook whose implementations are all plain functions (no wrappers) needs nothing of
pluggy's machinery at call time, and per-step hooks pay for it on every step: inside
a training step, with torch's kernels between calls, a pluggy call costs several µs,
as much as the work of a plugin like ``grad_norm``. For such a hook the attribute is a
direct call instead (:func:`direct_call`), which keeps pluggy's semantics exactly:
the same implementations in the same order (last registered first, ``tryfirst`` and
``trylast`` honoured), each given only the arguments it names, ``firstresult`` hooks
stopping at the first non-``None`` result, exceptions passed through unchanged. A
single implementation that takes every argument by keyword is the attribute itself
(kit's calls are type-checked, so none misses or adds a keyword). Hooks with wrappers,
and every hook while hook-call monitoring is on (``pm.add_hookcall_monitoring``,
``pm.enable_tracing``), go through pluggy; so does every hook of a manager other than
kit's, which cannot say whether it is monitored. kit's manager tells its relays when
monitoring or its plugins change; the loop reads each attribute at every call, so a
plugin registered or unregistered mid-iteration takes effect at once. Only
``firstresult`` hooks return anything through the relay.

pluggy's callers accept any keywords, so a misspelt one would only show at run time
(and only when a plugin implements the hook). Each attribute is therefore declared with
a callable protocol that mirrors its spec in :mod:`kit.hookspecs`, keyword-only, as
hooks are always called: mypy checks every call, and ``tests/core/test_relay_types.py``
checks the protocols against the specs.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
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
    "direct_call",
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


def _by_keyword(function: Callable[..., Any]) -> bool:
    """Whether every parameter of ``function`` can be passed by keyword."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # no signature to read: leave it to pluggy
        return False
    return all(p.kind is not inspect.Parameter.POSITIONAL_ONLY for p in parameters)


def direct_call(caller: pluggy.HookCaller) -> Callable[..., Any] | None:
    """What calls ``caller``'s implementations with no pluggy frame between, or ``None``
    when pluggy must run them: a wrapper, an implementation with keyword-only arguments,
    or a spec with default arguments (pluggy fills those in)."""
    impls = caller.get_hookimpls()
    spec = caller.spec
    if not impls or spec is None or spec.kwargnames \
            or any(i.hookwrapper or i.wrapper or i.kwargnames for i in impls):
        return None
    firstresult = bool(spec.opts.get("firstresult"))
    only = impls[0]
    if len(impls) == 1 and set(only.argnames) == set(spec.argnames) and _by_keyword(only.function):
        function: Callable[..., Any] = only.function  # takes every argument: called as it is
        return function
    order = [(impl.function, impl.argnames) for impl in reversed(impls)]  # pluggy's call order

    def call(**kwargs: Any) -> Any:
        for function, argnames in order:
            try:
                args = [kwargs[name] for name in argnames]
            except KeyError as exc:
                raise pluggy.HookCallError(f"hook call must provide argument {exc.args[0]!r}") from exc
            result = function(*args)
            if result is not None and firstresult:
                return result
        return None

    return call


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
        watch = getattr(pm, "watch", None)  # kit's manager: re-resolved whenever that may change
        if watch is not None:
            watch(self.refresh)

    def refresh(self) -> None:
        """Re-resolve after plugins were registered or unregistered, or monitoring changed.

        Direct calls only with kit's manager, which says whether hook calls are monitored;
        any other manager's hooks all go through pluggy.
        """
        direct = getattr(self.pm, "monitored", True) is False
        for name in HOOK_NAMES:
            caller = getattr(self.pm.hook, name)
            if not caller.get_hookimpls():
                setattr(self, name, None)
            else:
                setattr(self, name, (direct_call(caller) if direct else None) or caller)

    def call(self, name: str, **kwargs: Any) -> Any:
        """Fire ``name`` when implemented, through pluggy (its checks of the keywords, its
        result; ``None`` when nobody implements it); for code off the hot path, not type-checked."""
        if getattr(self, name) is None:
            return None
        return getattr(self.pm.hook, name)(**kwargs)

    if not TYPE_CHECKING:  # for mypy, an unknown hook name stays an error

        def __getattr__(self, name: str) -> Any:  # only reached for unknown names
            raise AttributeError(f"no kit hook named {name!r}")
