"""kit's own voice on stderr: notices and warnings, one line each, prefixed ``kit:``.

Library code reports through here rather than printing, so there is one place that
decides where kit's messages go.
"""

from __future__ import annotations

import os
import sys

__all__ = ["launched_rank", "say", "warn"]


def launched_rank() -> int:
    """This process's global rank as torchrun set it (``RANK``); 0 when not launched so."""
    rank = os.environ.get("RANK", "0")
    return int(rank) if rank.isdigit() else 0


def say(message: str) -> None:
    """A notice the user should see: ``kit: message``; said once, by global rank zero, when
    several processes train together."""
    if launched_rank() != 0:
        return
    print(f"kit: {message}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """Something went wrong and kit worked around it: ``kit: warning: message``."""
    say(f"warning: {message}")
