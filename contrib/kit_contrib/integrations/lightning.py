"""kit's model inside Lightning: a ``LightningModule`` around the user's ``torch.nn.Module``.

A checkpoint is data, never code. Its ``kit_model`` hyperparameter (the model's kit
target and keyword arguments) is a record for people and for the caller's allow-list;
nothing here imports a module, or puts a folder on ``sys.path``, because a file named
it. The caller chooses what builds the model::

    KitLightningModule.load_from_checkpoint(path, model=my_module)
    KitLightningModule.load_from_checkpoint(path, target="digits:build_model", base_dir="examples")
    KitLightningModule.load_from_checkpoint(path, allowed_targets=["digits:build_model"],
                                            base_dir="examples")

The last two call the factory with the checkpoint's recorded keyword arguments. Weights
live under ``model.``, as Lightning saves a module stored as ``self.model``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import lightning as L
import torch

import kit

__all__ = ["KitLightningModule"]

_HINT = ("pass model=<torch.nn.Module>, target='module:factory' (with base_dir=) or "
         "allowed_targets=['module:factory'] to KitLightningModule.load_from_checkpoint")


@dataclass(frozen=True)
class _Choice:
    """The caller's choice of factory, made only by this module's classmethods.

    Lightning merges a checkpoint's hyperparameters into ``__init__``'s arguments, so a
    file can set any argument to plain data, but never to this object: whatever it
    records, the caller's ``target`` or ``allowed_targets`` decides what is imported.
    """

    where: str
    target: str | None = None
    base_dir: Path | None = None
    allowed: frozenset[str] = frozenset()

    def pick(self, recorded: str | None) -> str:
        """The target to import: the caller's, or the recorded one if the caller allows it."""
        if self.target is not None:
            return self.target
        if recorded is not None and recorded in self.allowed:
            return recorded
        named = f"names model target {recorded!r}" if recorded else "names no model target"
        refused = " (not in allowed_targets)" if self.allowed and recorded else ""
        raise kit.CheckpointError(f"{self.where} {named}{refused}; kit does not import modules "
                                  "named by a checkpoint", hint=_HINT)


def _recorded(kit_model: object, where: str) -> tuple[str | None, dict[str, Any]]:
    """The target and keyword arguments a ``kit_model`` record holds, checked as untrusted data."""
    if kit_model is None:
        return None, {}
    if isinstance(kit_model, Mapping):
        target, kwargs = kit_model.get("target"), kit_model.get("kwargs") or {}
        if (isinstance(target, str | None) and isinstance(kwargs, dict)
                and all(isinstance(key, str) for key in kwargs)):
            return target, dict(kwargs)
    raise kit.CheckpointError(f"{where}: the kit_model hyperparameter is not "
                              "{'target': str, 'kwargs': {str: value}}",
                              hint="pass kit_model= to replace it, or model= to skip it")


def _build(target: str, kwargs: dict[str, Any], base_dir: Path | None) -> torch.nn.Module:
    """Call the caller-chosen factory with the recorded keyword arguments."""
    factory = kit.resolve_target(target, key="model.target", base_dir=base_dir)
    model = factory(**kwargs)
    if not isinstance(model, torch.nn.Module):
        raise kit.ConfigError(f"{target} returned {type(model).__name__}, not a torch.nn.Module",
                              key="model.target")
    return model


class KitLightningModule(L.LightningModule):
    """Wraps a ``torch.nn.Module``; records its kit target under the ``kit_model`` hparam.

    ``__init__`` never imports: ``model`` is a module the caller built (or a choice made
    by :meth:`from_target` / :meth:`load_from_checkpoint`), and ``kit_model`` is data.
    """

    def __init__(self, model: torch.nn.Module | _Choice | None = None,
                 kit_model: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        where = model.where if isinstance(model, _Choice) else "KitLightningModule(kit_model=...)"
        target, kwargs = _recorded(kit_model, where)
        if model is None:
            model = _Choice(where)  # allows nothing: refuses, naming the recorded target
        if isinstance(model, _Choice):
            target = model.pick(target)
            model = _build(target, kwargs, model.base_dir)
        elif not isinstance(model, torch.nn.Module):
            raise kit.ConfigError(f"model must be a torch.nn.Module, not {type(model).__name__}",
                                  key="model", hint=_HINT)
        self.save_hyperparameters({"kit_model": {"target": target, "kwargs": kwargs}})
        self.model: torch.nn.Module = model

    @classmethod
    def from_target(cls, target: str, kwargs: Mapping[str, Any] | None = None,
                    base_dir: str | Path | None = None) -> KitLightningModule:
        """Build the model with the kit target ``target``, which the caller chose."""
        choice = _Choice("KitLightningModule.from_target", target,
                         Path(base_dir) if base_dir else None)
        return cls(choice, {"target": target, "kwargs": dict(kwargs or {})})

    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: str | Path | IO[bytes],
        map_location: Any = None,
        hparams_file: str | Path | None = None,
        strict: bool | None = None,
        weights_only: bool | None = True,
        *,
        model: torch.nn.Module | None = None,
        target: str | None = None,
        base_dir: str | Path | None = None,
        allowed_targets: Iterable[str] | None = None,
        **kwargs: Any,
    ) -> KitLightningModule:
        """Lightning's loader, with the model chosen by the caller and never by the file.

        ``model`` is used as is; else ``target`` (or the recorded target, if exactly in
        ``allowed_targets``) is imported from ``base_dir`` and called with the recorded
        keyword arguments. ``model`` and ``_instantiator`` are always passed, so the
        file's values for them never reach ``__init__`` or Lightning's instantiator.
        """
        where = str(checkpoint_path) if isinstance(checkpoint_path, str | Path) else "the checkpoint"
        allowed = [allowed_targets] if isinstance(allowed_targets, str) else allowed_targets or []
        choice = model if model is not None else _Choice(
            where, target, Path(base_dir) if base_dir else None, frozenset(allowed))
        return super().load_from_checkpoint(checkpoint_path, map_location, hparams_file, strict,
                                            weights_only, model=choice, _instantiator=None,
                                            **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)
