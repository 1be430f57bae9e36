"""kit's one voice: notices and warnings, one line each on stderr, prefixed ``kit:``.

Library code reports through :func:`say` and :func:`warn` and never prints, so one place
decides what the user sees. They log to the standard ``logging`` logger ``kit``, which
kit sets up on first use, as libraries such as transformers do: its own stderr handler,
level INFO, not propagated. So a user embedding kit silences the notices with
``logging.getLogger("kit").setLevel(logging.WARNING)``, or sends them elsewhere by
replacing the handler; ``kit --quiet`` sets that level for a command.
"""

from __future__ import annotations

import logging
import sys

from kit.env import launched

__all__ = ["LOGGER", "launched_rank", "quiet", "say", "warn"]

LOGGER = "kit"
"""The name of the ``logging`` logger kit reports through."""


def launched_rank() -> int:
    """This process's global rank as torchrun set it (``RANK``); 0 when not launched so."""
    return launched("RANK") or 0


class _Stderr(logging.Handler):
    """Writes to whatever ``sys.stderr`` is when a message comes (test captures and rich's
    live display replace it), ``kit: …`` or ``kit: warning: …``."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            kind = "warning: " if record.levelno >= logging.WARNING else ""
            print(f"kit: {kind}{record.getMessage()}", file=sys.stderr, flush=True)
        except Exception:  # a closed stream must not fail the run
            self.handleError(record)


def _logger() -> logging.Logger:
    log = logging.getLogger(LOGGER)
    if not getattr(log, "_kit_set_up", False):
        log.addHandler(_Stderr())
        if log.level == logging.NOTSET:
            log.setLevel(logging.INFO)
        log.propagate = False
        log._kit_set_up = True  # type: ignore[attr-defined]  # once: a user's changes stand
    return log


def say(message: str) -> None:
    """A notice the user should see: ``kit: message``; said once, by global rank zero, when
    several processes train together."""
    if launched_rank() == 0:
        _logger().info(message)


def warn(message: str) -> None:
    """Something went wrong and kit worked around it: ``kit: warning: message``."""
    if launched_rank() == 0:
        _logger().warning(message)


def quiet(on: bool = True) -> None:
    """Warnings only (``kit --quiet``), or notices too again."""
    _logger().setLevel(logging.WARNING if on else logging.INFO)
