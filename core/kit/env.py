"""The environment variables kit reads, each parsed here and nowhere else."""

from __future__ import annotations

import os

__all__ = ["DEBUG", "DISABLE_AUTOLOAD", "flag", "launched"]

DEBUG = "KIT_DEBUG"
"""Set to ``1`` for full tracebacks instead of one-line errors, as ``kit --debug`` does."""

DISABLE_AUTOLOAD = "KIT_DISABLE_PLUGIN_AUTOLOAD"
"""Set to ``1`` to stop ``kit.plugins`` entry points from loading unless selected."""


def flag(name: str) -> bool:
    """Whether the switch ``name`` is on: set to anything but empty or ``0``."""
    return os.environ.get(name, "") not in ("", "0")


def launched(name: str) -> int | None:
    """A number torchrun gives each process (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``), or
    ``None`` when it is unset or not a number (the process was not started by torchrun)."""
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() else None
