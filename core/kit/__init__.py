"""kit: a plugin-discovered, multi-backend trainer for PyTorch.

Importing ``kit`` is cheap: it loads kit's exceptions and nothing else. Every other
name (pluggy's markers, the interfaces, ``Trainer`` with torch, the config models with
pydantic) loads on first use, so ``kit --help`` pays only for what it shows.

``__all__`` is kit's whole public surface. A plugin, kit's own ``kit_backends`` and
``kit_contrib`` included, imports only these names (``import kit`` / ``from kit import
NAME``), never a submodule such as ``kit.states``; ``tests/test_meta.py`` enforces it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kit._lazy import lazy_attributes
from kit._version import __version__
from kit.errors import (
    CheckpointError,
    ConfigError,
    KitError,
    PluginLoadError,
    PluginNotFoundError,
    TargetError,
)

if TYPE_CHECKING:
    from kit.config import KitConfig, load_config
    from kit.data import Data, EpochSampler
    from kit.interfaces import Backend, CheckpointFormat, State
    from kit.markers import hookimpl, hookspec
    from kit.metrics import MetricRecord
    from kit.paths import RunPath, run_path
    from kit.plugins import HookRelay, PluginChoice, Registry, get_plugin_manager
    from kit.report import say, warn
    from kit.rundir import atomic_write, write_json
    from kit.session import Session
    from kit.states import ContinueTraining, EvaluateOnly, TrainNew
    from kit.targets import resolve_target
    from kit.tasks import Evaluation, Task
    from kit.torchfile import load_torch_file
    from kit.trainer import Trainer

__all__ = [
    "Backend",
    "CheckpointError",
    "CheckpointFormat",
    "ConfigError",
    "ContinueTraining",
    "Data",
    "EpochSampler",
    "EvaluateOnly",
    "Evaluation",
    "HookRelay",
    "KitConfig",
    "KitError",
    "MetricRecord",
    "PluginChoice",
    "PluginLoadError",
    "PluginNotFoundError",
    "Registry",
    "RunPath",
    "Session",
    "State",
    "TargetError",
    "Task",
    "TrainNew",
    "Trainer",
    "__version__",
    "atomic_write",
    "get_plugin_manager",
    "hookimpl",
    "hookspec",
    "load_config",
    "load_torch_file",
    "resolve_target",
    "run_path",
    "say",
    "warn",
    "write_json",
]

_LAZY = {
    "Backend": "kit.interfaces",
    "CheckpointFormat": "kit.interfaces",
    "State": "kit.interfaces",
    "hookimpl": "kit.markers",
    "hookspec": "kit.markers",
    "MetricRecord": "kit.metrics",
    "Task": "kit.tasks",  # how a batch becomes a loss and predictions
    "Evaluation": "kit.tasks",  # what Task.evaluation_step returns
    "HookRelay": "kit.plugins",
    "PluginChoice": "kit.plugins",
    "Registry": "kit.plugins",
    "get_plugin_manager": "kit.plugins",
    "atomic_write": "kit.rundir",
    "write_json": "kit.rundir",
    "Trainer": "kit.trainer",
    "Session": "kit.session",  # kit's loggers, plugins and hooks inside someone else's loop
    "KitConfig": "kit.config",
    "load_config": "kit.config",
    "Data": "kit.data",
    "EpochSampler": "kit.data",
    "resolve_target": "kit.targets",
    "RunPath": "kit.paths",
    "run_path": "kit.paths",
    # the built-in modes a plugin's mode subclasses: a new run, a resumed one, an evaluation
    "TrainNew": "kit.states",
    "ContinueTraining": "kit.states",
    "EvaluateOnly": "kit.states",
    # kit's one voice on stderr, so a plugin's notices read like kit's and come from rank zero once
    "say": "kit.report",
    "warn": "kit.report",
    # torch.load(weights_only=True) with kit's zip-bomb check and one-line refusals, for formats
    "load_torch_file": "kit.torchfile",
}


__getattr__ = lazy_attributes("kit", _LAZY)
