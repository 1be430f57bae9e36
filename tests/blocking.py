"""Calls that must not block: run one in a thread and fail the test if it hangs."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def in_thread(fn: Callable[[], Any], timeout: float = 20) -> Any:
    """Run ``fn`` in a daemon thread: a blocking open() of a FIFO fails the test instead of hanging it."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "kit blocked: it opened a file it should only have looked at"
    if "error" in out:
        raise out["error"]
    return out.get("value")
