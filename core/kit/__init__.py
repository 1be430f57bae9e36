"""kit: a plugin-discovered, multi-backend trainer for PyTorch.

Importing ``kit`` is cheap: it loads kit's exceptions and nothing else. Every other
name (pluggy's markers, the interfaces, ``Trainer`` with torch, the config models with
pydantic) loads on first use, so ``kit --help`` pays only for what it shows.
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
    from kit.metrics import Metric, MetricRecord
    from kit.paths import RunPath, run_path
    from kit.plugins import HookRelay, PluginChoice, Registry, get_plugin_manager
    from kit.rundir import atomic_write, write_json
    from kit.targets import resolve_target
    from kit.trainer import Trainer

__all__ = [
    "Backend",
    "CheckpointError",
    "CheckpointFormat",
    "ConfigError",
    "Data",
    "EpochSampler",
    "HookRelay",
    "KitConfig",
    "KitError",
    "Metric",
    "MetricRecord",
    "PluginChoice",
    "PluginLoadError",
    "PluginNotFoundError",
    "Registry",
    "RunPath",
    "State",
    "TargetError",
    "Trainer",
    "__version__",
    "atomic_write",
    "get_plugin_manager",
    "hookimpl",
    "hookspec",
    "load_config",
    "resolve_target",
    "run_path",
    "write_json",
]

_LAZY = {
    "Backend": "kit.interfaces",
    "CheckpointFormat": "kit.interfaces",
    "State": "kit.interfaces",
    "hookimpl": "kit.markers",
    "hookspec": "kit.markers",
    "Metric": "kit.metrics",
    "MetricRecord": "kit.metrics",
    "HookRelay": "kit.plugins",
    "PluginChoice": "kit.plugins",
    "Registry": "kit.plugins",
    "get_plugin_manager": "kit.plugins",
    "atomic_write": "kit.rundir",
    "write_json": "kit.rundir",
    "Trainer": "kit.trainer",
    "KitConfig": "kit.config",
    "load_config": "kit.config",
    "Data": "kit.data",
    "EpochSampler": "kit.data",
    "resolve_target": "kit.targets",
    "RunPath": "kit.paths",
    "run_path": "kit.paths",
}


__getattr__ = lazy_attributes("kit", _LAZY)
