"""The relay's typed attributes are the hook contract: the same hooks, keywords and types.

mypy checks every hook call against :class:`kit.HookRelay`'s declarations, so those must
say exactly what ``kit/hookspecs.py`` says. :func:`problems` compares them; it is shown
failing on deliberately wrong declarations, so a clean result means something.
"""

from __future__ import annotations

import inspect
import types
import typing
from typing import Any, Protocol

import torch

from kit import hookspecs
from kit.metrics import MetricRecord
from kit.plugins.relay import HookRelay, IterationHook, StepEndHook
from kit.tasks import Evaluation
from kit.trainer import Trainer

NAMES = {"Trainer": Trainer, "torch": torch, "MetricRecord": MetricRecord, "Evaluation": Evaluation,
         "Any": Any}
"""What the annotations name under TYPE_CHECKING, to resolve them for comparison."""


def _hints(fn: Any) -> dict[str, Any]:
    return typing.get_type_hints(fn, localns=NAMES)


def _signature_problems(spec: Any, protocol: type) -> list[str]:
    """How ``protocol.__call__`` differs from ``spec``: names and order, keyword-only, types."""
    call = inspect.signature(protocol.__call__)
    params = list(call.parameters.values())[1:]  # past self
    names, wanted = [p.name for p in params], list(inspect.signature(spec).parameters)
    found = []
    if names != wanted:
        found.append(f"parameters {names}, the spec has {wanted}")
    positional = [p.name for p in params if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    if positional:
        found.append(f"{positional} not keyword-only")
    got, want = _hints(protocol.__call__), _hints(spec)
    for name in [*(n for n in wanted if n in names), "return"]:
        if got.get(name) != want.get(name):
            found.append(f"{name} is {got.get(name)}, the spec says {want.get(name)}")
    return found


def problems(relay: type) -> list[str]:
    """Every way ``relay``'s hook declarations (``kit_*`` annotations) differ from the specs."""
    hints = typing.get_type_hints(relay, localns=NAMES)
    declared = {name: hint for name, hint in hints.items() if name.startswith("kit_")}
    found = [f"{name}: not declared" for name in hookspecs.HOOK_NAMES if name not in declared]
    found += [f"{name}: no such hook" for name in declared if name not in hookspecs.HOOK_NAMES]
    for name, hint in declared.items():
        args = typing.get_args(hint)
        if name not in hookspecs.HOOK_NAMES:
            continue
        if not (isinstance(hint, types.UnionType) and len(args) == 2 and type(None) in args):
            found.append(f"{name}: declared {hint}, not `SomeHook | None`")
            continue
        protocol = next(arg for arg in args if arg is not type(None))
        found += [f"{name}: {p}" for p in _signature_problems(getattr(hookspecs, name), protocol)]
    return found


def test_the_relay_declares_every_hook_exactly_as_its_spec() -> None:
    assert problems(HookRelay) == []


# -- the check fails on what it must catch ---------------------------------------------


class _MisspeltStepEnd(Protocol):
    def __call__(self, *, trainer: Trainer, iteration: int, batch_index: int, loss: torch.Tensor) -> None: ...


class _FloatLoss(Protocol):
    def __call__(self, *, trainer: Trainer, iteration: int, batch_idx: int, loss: float) -> None: ...


class _Positional(Protocol):
    def __call__(self, trainer: Trainer, *, iteration: int) -> None: ...


class _ReturnsInt(Protocol):
    def __call__(self, *, trainer: Trainer, test_results: dict[str, int]) -> int: ...


class _WrongRelay(HookRelay):  # mypy rejects three of these overrides too
    kit_step_end: _MisspeltStepEnd | None  # type: ignore[assignment]
    kit_step_begin: _FloatLoss | None  # type: ignore[assignment]  # kit_step_end's, on the wrong hook
    kit_val_begin: _Positional | None
    kit_test_end: _ReturnsInt | None  # type: ignore[assignment]
    kit_loader_exhausted: IterationHook  # never None: the loop's test would be wrong
    kit_step_ended: StepEndHook | None


def test_a_wrong_declaration_is_named_with_what_is_wrong() -> None:
    assert problems(_WrongRelay) == [
        "kit_step_ended: no such hook",
        "kit_step_begin: parameters ['trainer', 'iteration', 'batch_idx', 'loss'], "
        "the spec has ['trainer', 'iteration', 'batch_idx']",
        "kit_step_end: parameters ['trainer', 'iteration', 'batch_index', 'loss'], "
        "the spec has ['trainer', 'iteration', 'batch_idx', 'loss']",
        "kit_loader_exhausted: declared <class 'kit.plugins.relay.IterationHook'>, not `SomeHook | None`",
        "kit_val_begin: ['trainer'] not keyword-only",
        "kit_test_end: test_results is dict[str, int], the spec says dict[str, float]",
        "kit_test_end: return is <class 'int'>, the spec says <class 'NoneType'>",
    ]


def test_a_hook_left_out_is_named() -> None:
    hints = {k: v for k, v in typing.get_type_hints(HookRelay, localns=NAMES).items() if k != "kit_interrupt"}
    partial = type("Partial", (), {"__annotations__": hints})
    assert problems(partial) == ["kit_interrupt: not declared"]
