"""One writer per run directory: a lock file created atomically, reclaimed when stale.

The lock is ``<run>/run.lock``, created with ``O_CREAT | O_EXCL`` (atomic on local
file systems) and holding the holder's pid, host and start time as JSON. A lock whose
pid is dead on this host is stale: the run crashed or was killed with SIGKILL. It is
reclaimed with a warning by renaming it away first, so two processes reclaiming the
same stale lock cannot both win.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from kit.errors import RunLockedError

__all__ = ["LOCK_NAME", "RunLock", "lock_holder", "pid_alive"]

LOCK_NAME = "run.lock"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _read(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def lock_holder(run_dir: Path) -> dict[str, Any] | None:
    """The lock's content, ``{}`` while unreadable, ``None`` when there is no lock."""
    return _read(run_dir / LOCK_NAME)


def _is_stale(holder: dict[str, Any]) -> bool:
    pid = holder.get("pid")
    return holder.get("host") == socket.gethostname() and isinstance(pid, int) and not pid_alive(pid)


class RunLock:
    """Hold ``<run_dir>/run.lock`` for a ``with`` block; refuse when a live process holds it."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_NAME
        self.held = False

    def acquire(self) -> None:
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        for attempt in range(50):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = lock_holder(self.path.parent)
                if holder is None:
                    continue  # released in between: try again
                if not holder and attempt < 20:  # being written right now
                    time.sleep(0.05)
                    continue
                if holder and _is_stale(holder):
                    self._reclaim(holder)
                    continue
                raise RunLockedError(
                    f"run directory {self.path.parent} is in use by pid {holder.get('pid', '?')} "
                    f"on {holder.get('host', '?')} since {holder.get('started', '?')}",
                    hint=f"wait for that run to end, or delete {self.path} if it is not running",
                ) from None
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(info, fh)
                fh.flush()
                os.fsync(fh.fileno())
            self.held = True
            return
        raise RunLockedError(f"could not take the lock {self.path}", hint="try again")

    def _reclaim(self, holder: dict[str, Any]) -> None:
        aside = self.path.with_name(f"{LOCK_NAME}.stale-{holder.get('pid')}-{os.getpid()}")
        try:
            os.rename(self.path, aside)  # only one reclaimer's rename succeeds
        except FileNotFoundError:
            return
        if _read(aside) != holder:  # a live holder slipped in: put it back, never over another
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
            aside.unlink(missing_ok=True)
            return
        aside.unlink(missing_ok=True)
        print(f"kit: warning: reclaimed a stale lock on {self.path.parent} "
              f"(pid {holder.get('pid')} on {holder.get('host')} is gone; it crashed or was killed)",
              file=sys.stderr)

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

