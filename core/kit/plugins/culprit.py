"""Name the plugin, and the hook, that an exception came out of.

Plugins run inside kit's loop, so a plugin's error arrives wrapped in kit's and
pluggy's frames. Rather than wrapping every hook call (a cost on every step), the
traceback is read once, when an exception reaches the top: the first frame that runs
a registered hook implementation is where the plugin took over.
"""

from __future__ import annotations

import traceback
from types import CodeType, TracebackType

import pluggy

from kit.errors import KitError, PluginError
from kit.hookspecs import HOOK_NAMES

__all__ = ["blame"]


def _implementations(pm: pluggy.PluginManager) -> dict[CodeType, tuple[str, str]]:
    """The code object of every hook implementation -> (plugin label, hook name)."""
    label = getattr(pm, "label", None)
    found: dict[CodeType, tuple[str, str]] = {}
    for hook in HOOK_NAMES:
        for impl in getattr(pm.hook, hook).get_hookimpls():
            code = getattr(impl.function, "__code__", None)
            if code is not None and code not in found:
                name = label(impl.plugin_name, impl.plugin) if label else impl.plugin_name
                found[code] = (name, hook)
    return found


def blame(exc: BaseException, pm: pluggy.PluginManager) -> PluginError | None:
    """A :class:`PluginError` if ``exc`` was raised inside a plugin's hook, else ``None``.

    A :class:`~kit.errors.KitError` is left alone: a plugin that raises one (a bad option,
    say) reports a problem the user fixes, not a failure of the plugin.
    """
    if isinstance(exc, KitError):
        return None
    implementations = _implementations(pm)
    tb: TracebackType | None = exc.__traceback__
    depth = 0
    while tb is not None:
        owner = implementations.get(tb.tb_frame.f_code)
        if owner is not None:
            frames = traceback.format_list(traceback.extract_tb(exc.__traceback__)[depth:])
            shown = "".join(frames) + "".join(traceback.format_exception_only(type(exc), exc))
            return PluginError(owner[0], owner[1], exc, shown.rstrip("\n"))
        tb, depth = tb.tb_next, depth + 1
    return None
