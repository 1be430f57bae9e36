"""Plugin discovery and the plugin manager; importing this pulls in neither torch nor click."""

from kit.plugins.blame import blame
from kit.plugins.discovery import GROUPS, EntryPointSpec, Registry
from kit.plugins.isolation import Isolated
from kit.plugins.manager import AUTOLOAD_ENV, KitPluginManager, PluginChoice, get_plugin_manager, instantiate
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
