"""Failure isolation: a plugin whose hook raises is reported once and switched off.

A logger that loses its connection must not end a week-long run. :class:`Isolated`
stands in for a plugin at registration: it exposes the same hook implementations,
each wrapped so that the first exception is reported (plugin, hook, error) and every
later call returns at once. ``strict`` plugins are registered as they are instead.
A full disk is not the logger's failure but the run's: it ends the run
(:class:`~kit.errors.DiskFullError`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from kit.errors import DiskFullError, disk_full, first_line
from kit.markers import PROJECT
from kit.report import warn

__all__ = ["Isolated"]

_MARKER = f"{PROJECT}_impl"


class Isolated:
    """Wraps ``plugin``'s ``kit_*`` hooks; ``failure`` says what broke it, once it has."""

    def __init__(self, plugin: Any, label: str) -> None:
        self.plugin = plugin
        self.label = label
        self.failure: str | None = None
        for name in dir(plugin):
            if not name.startswith(f"{PROJECT}_"):
                continue
            method = getattr(plugin, name, None)
            opts = getattr(method, _MARKER, None)
            if opts is None or not callable(method):
                continue
            if opts.get("wrapper") or opts.get("hookwrapper"):
                setattr(self, name, method)  # wrappers delegate; they cannot be skipped
                continue
            setattr(self, name, self._guard(name, method, opts))

    def _guard(self, hook: str, method: Callable[..., Any], opts: Any) -> Callable[..., Any]:
        @functools.wraps(method)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            if self.failure is not None:
                return None
            try:
                return method(*args, **kwargs)
            except Exception as exc:
                full = disk_full(exc)
                if full is not None:  # not this logger's fault: the whole run is out of disk
                    raise DiskFullError(full.filename or f"{self.label}'s output") from exc
                self.failure = f"{hook}: {type(exc).__name__}: {exc}"
                warn(f"{self.label} failed in {hook} ({first_line(exc, typed=True)}); disabled for "
                     "the rest of the run (set `strict: true` to make this fatal)")
                return None

        setattr(guarded, _MARKER, opts)
        return guarded

    def __repr__(self) -> str:
        return f"<Isolated {self.label}>"
