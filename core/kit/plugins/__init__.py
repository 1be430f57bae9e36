"""Plugin discovery and the plugin manager; importing this pulls in neither torch nor click.

Names load on first use: ``kit --help`` needs discovery but not pluggy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kit._lazy import lazy_attributes

if TYPE_CHECKING:
    from kit.plugins.culprit import blame
    from kit.plugins.discovery import AUTOLOAD_ENV, GROUPS, EntryPointSpec, Registry
    from kit.plugins.isolation import Isolated
    from kit.plugins.manager import (
        KitPluginManager,
        PluginChoice,
        get_plugin_manager,
        instantiate,
    )
    from kit.plugins.relay import HookRelay

__all__ = [
    "AUTOLOAD_ENV",
    "GROUPS",
    "EntryPointSpec",
    "HookRelay",
    "Isolated",
    "KitPluginManager",
    "PluginChoice",
    "Registry",
    "blame",
    "get_plugin_manager",
    "instantiate",
]

_LAZY = {
    "blame": "kit.plugins.culprit",
    "GROUPS": "kit.plugins.discovery",
    "EntryPointSpec": "kit.plugins.discovery",
    "Registry": "kit.plugins.discovery",
    "Isolated": "kit.plugins.isolation",
    "AUTOLOAD_ENV": "kit.plugins.discovery",
    "KitPluginManager": "kit.plugins.manager",
    "PluginChoice": "kit.plugins.manager",
    "get_plugin_manager": "kit.plugins.manager",
    "instantiate": "kit.plugins.manager",
    "HookRelay": "kit.plugins.relay",
}


__getattr__ = lazy_attributes("kit.plugins", _LAZY)
