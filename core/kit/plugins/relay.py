"""Dispatch only the hooks somebody implements.

pluggy costs a few microseconds per call even with no implementations; in a loop of
small steps that is measurable. :class:`HookRelay` resolves each hook once: an
attribute is the hook caller when at least one plugin implements it, else ``None``,
so the loop pays one ``is not None`` test for an event nobody listens to.
"""

from __future__ import annotations

from typing import Any

import pluggy

from kit.hookspecs import HOOK_NAMES

__all__ = ["HookRelay"]


class HookRelay:
    """One attribute per hook (``relay.kit_step_end``): a caller, or ``None``."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self.refresh()

    def refresh(self) -> None:
        """Re-resolve after plugins were registered or unregistered."""
        for name in HOOK_NAMES:
            caller = getattr(self.pm.hook, name)
            setattr(self, name, caller if caller.get_hookimpls() else None)

    def call(self, name: str, **kwargs: Any) -> None:
        """Fire ``name`` when implemented; for code off the hot path."""
        caller = getattr(self, name)
        if caller is not None:
            caller(**kwargs)

    def __getattr__(self, name: str) -> Any:  # only reached for unknown names
        raise AttributeError(f"no kit hook named {name!r}")
