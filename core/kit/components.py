"""Build the model, loss, metrics, optimizer and scheduler a config names."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from kit.config import OptimizerConfig, SchedulerConfig
from kit.errors import ConfigError, first_line
from kit.targets import resolve_target

__all__ = ["build_optimizer", "build_scheduler", "call_factory", "resolve_loss"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def call_factory(fn: Any, kwargs: Mapping[str, Any], *, key: str, **given: Any) -> Any:
    """Call ``fn(**given, **kwargs)``, naming ``key`` when the kwargs do not fit its signature.

    Only a signature mismatch becomes a config error; an error raised inside the
    user's code keeps its traceback.
    """
    if not callable(fn):
        raise ConfigError(f"{fn!r} is not callable", key=key)
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature
        signature = None
    if signature is not None:
        try:
            signature.bind(*given.values(), **kwargs)
        except TypeError as exc:
            name = getattr(fn, "__qualname__", repr(fn))
            raise ConfigError(f"{name}() does not accept these arguments: {exc}",
                              key=f"{key}.kwargs", hint="fix the kwargs") from None
    return fn(*given.values(), **kwargs)


def _lookup(name: str, namespace: Any, *, key: str, base_dir: Path | None, kind: str) -> Any:
    if ":" in name:
        return resolve_target(name, key=key, base_dir=base_dir)
    table = {k.lower(): getattr(namespace, k) for k in dir(namespace) if not k.startswith("_")}
    found = table.get(name.lower())
    if found is None:
        raise ConfigError(f"unknown {kind} {name!r}", key=key,
                          hint=f"use a name from {namespace.__name__} or `package.module:Class`")
    return found


def _builtin_losses() -> Any:
    """torch's loss functions and classes by lower-case name: ``cross_entropy``, ``mseloss``, …"""
    import types

    functional = torch.nn.functional
    names = [n for n in dir(functional) if n.endswith("_loss")]
    names += ["cross_entropy", "binary_cross_entropy", "binary_cross_entropy_with_logits", "kl_div"]
    table = {n: getattr(functional, n) for n in names if hasattr(functional, n)}
    table |= {n.lower(): getattr(torch.nn, n) for n in torch.nn.modules.loss.__all__ if hasattr(torch.nn, n)}
    return types.SimpleNamespace(__name__="torch.nn.functional and torch.nn's losses", **table)


def resolve_loss(name: str, base_dir: Path | None) -> LossFn:
    fn = _lookup(name, _builtin_losses(), key="task.loss", base_dir=base_dir, kind="loss")
    if isinstance(fn, type) and issubclass(fn, torch.nn.Module):
        fn = fn()
    return fn  # type: ignore[no-any-return]


def _build_builtin(cls: Any, name: str, kwargs: Mapping[str, Any], *, key: str, **given: Any) -> Any:
    """Call one of torch's own classes; values it rejects are the config's fault (one line),
    while a user's own target (``pkg.mod:Class``) keeps its traceback."""
    if ":" in name:
        return call_factory(cls, kwargs, key=key, **given)
    try:
        return call_factory(cls, kwargs, key=key, **given)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"torch's {cls.__name__} rejected these options: {first_line(exc)}",
                          key=f"{key}.kwargs",
                          hint="fix the values") from None


def build_optimizer(
    cfg: OptimizerConfig, model: torch.nn.Module, base_dir: Path | None
) -> torch.optim.Optimizer:
    cls = _lookup(cfg.name, torch.optim, key="optimizer.name", base_dir=base_dir, kind="optimizer")
    kwargs = {"lr": cfg.lr, **cfg.kwargs}
    return _build_builtin(cls, cfg.name, kwargs, key="optimizer",  # type: ignore[no-any-return]
                          params=model.parameters())


def build_scheduler(
    cfg: SchedulerConfig | None, optimizer: torch.optim.Optimizer, base_dir: Path | None
) -> Any:
    if cfg is None:
        return None
    cls = _lookup(cfg.name, torch.optim.lr_scheduler, key="scheduler.name",
                  base_dir=base_dir, kind="scheduler")
    return _build_builtin(cls, cfg.name, cfg.kwargs, key="scheduler", optimizer=optimizer)
