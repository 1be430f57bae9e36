"""kit's own voice on stderr: notices and warnings, one line each, prefixed ``kit:``.

Library code reports through here rather than printing, so there is one place that
decides where kit's messages go.
"""

from __future__ import annotations

import os
import sys

__all__ = ["say", "warn"]


def say(message: str) -> None:
    """A notice the user should see: ``kit: message``; said once, by global rank zero, when
    several processes train together (``RANK`` is what torchrun sets)."""
    if os.environ.get("RANK", "0") != "0":
        return
    print(f"kit: {message}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """Something went wrong and kit worked around it: ``kit: warning: message``."""
    say(f"warning: {message}")
