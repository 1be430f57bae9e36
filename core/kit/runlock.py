"""One writer per run directory: an advisory ``flock`` that the kernel drops when its holder dies.

The lock is ``<run>/run.lock``. A run opens it with ``O_CREAT`` and takes
``flock(LOCK_EX | LOCK_NB)`` on it; the JSON inside (pid, host, start time) is only
information for messages and ``kit runs list``, never the lock itself. Guarantees on a
local file system (Linux, macOS):

* At most one process holds a run directory at a time, by construction: the kernel
  grants the flock to one open file, and a process counts itself the holder only after
  checking, while holding the flock, that its open file is still the one at
  ``run.lock`` (a releaser unlinks the file before dropping the flock, so a process
  that opened the old file notices and starts over).
* A holder that dies in any way (SIGKILL included) releases the lock with its last
  file descriptor, so there is no stale-lock reclaim step that could race. A file left
  behind is taken over; a warning names the process it recorded. An empty, truncated or
  garbled file left by a failed write is taken over silently.
* A failed write while taking the lock (``ENOSPC``) removes the file and re-raises the
  ``OSError``: nothing is left that blocks the next run.
* A busy lock is retried for about half a second before the run is refused, so the
  brief shared probe of :func:`lock_held` (``kit runs list``) never fails a starting run.

Limits: the descriptor is inherited by ``fork()`` children (not by ``exec``), so a
forked worker that outlives its parent keeps the lock until it exits. ``flock`` may not
be coherent across hosts on network file systems: when the flock is free but the file
names another host, the run is refused with a hint to delete the file if that run has
ended, and :func:`lock_held` reports it held. Deleting a lock that a live run holds by
hand voids every guarantee. Without ``fcntl`` (Windows) the lock falls back to an
``O_EXCL`` file that is never reclaimed automatically; the refusal says to delete it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import stat
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from kit.errors import RunLockedError, disk_full
from kit.report import warn

try:
    import fcntl
except ImportError:  # Windows: see _acquire_exclusive
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "RunLock", "lock_held", "lock_holder", "pid_alive"]

LOCK_NAME = "run.lock"
_PATIENCE = 0.5
"""Seconds a busy lock is retried before the run is refused."""
_MAX = 65536
"""Bytes of ``run.lock`` read: its JSON is far smaller."""
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
"""Opening or reading a FIFO planted as ``run.lock`` must fail, never hang."""


def _pause(step: str) -> None:
    """Nothing. A test seam: racing test processes replace it to stretch every step."""


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` names a live process on this host (always ``True`` on Windows).

    On Windows ``os.kill(pid, 0)`` would terminate the process, so it is never called.
    """
    if sys.platform == "win32":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw.decode("utf-8"))
    except ValueError:  # truncated, garbled or not UTF-8
        return {}
    return data if isinstance(data, dict) else {}


def lock_holder(run_dir: Path) -> dict[str, Any] | None:
    """The lock's content, ``{}`` while empty or unreadable, ``None`` when there is no lock."""
    try:
        fd = os.open(run_dir / LOCK_NAME, os.O_RDONLY | _NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        return _parse(os.read(fd, _MAX))
    except OSError:
        return {}
    finally:
        os.close(fd)


def _foreign(holder: dict[str, Any]) -> bool:
    """Whether ``holder`` looks like a live record written on another host (uncheckable here)."""
    host = holder.get("host")
    return isinstance(holder.get("pid"), int) and isinstance(host, str) and host != socket.gethostname()


def lock_held(run_dir: Path) -> bool | None:
    """``True`` while a process holds the run's lock, ``False`` when none does, ``None`` with no lock file.

    Takes a shared flock for an instant and creates nothing. A lock written on another
    host counts as held (this machine cannot check it). Raises ``OSError`` when
    ``run.lock`` cannot be opened or read (a folder, no permission): it then says nothing.
    """
    try:
        fd = os.open(run_dir / LOCK_NAME, os.O_RDONLY | _NONBLOCK)
    except FileNotFoundError:
        return None
    try:
        if fcntl is None:
            return True  # an O_EXCL lock file exists
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        _pause("probe")
        fcntl.flock(fd, fcntl.LOCK_UN)
        return _foreign(_parse(os.read(fd, _MAX)))
    finally:
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        _pause("write")
        data = data[os.write(fd, data):]


class RunLock:
    """Hold ``<run_dir>/run.lock`` for a ``with`` block; refuse when another process holds it."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_NAME
        self.held = False
        self._fd: int | None = None

    def acquire(self) -> None:
        if fcntl is None:
            self._acquire_exclusive()
            return
        try:
            fd = self._wait_for_lock()
        except OSError as exc:  # a folder or a FIFO named run.lock: not a lock anyone can take
            if disk_full(exc) is not None:
                raise
            raise RunLockedError(f"cannot use {self.path} as a lock: {exc.strerror or exc}",
                                 hint="it is not a plain file: remove it if no run is using it") from None
        try:
            _pause("read")
            previous = _parse(os.read(fd, _MAX))
            if _foreign(previous):  # flock may not reach that host: never take it over
                raise RunLockedError(
                    f"{self.path} was written by pid {previous['pid']} on host {previous['host']}, "
                    "which this machine cannot check",
                    hint=f"if that run has ended, delete {self.path}",
                )
        except BaseException:
            os.close(fd)
            raise
        try:
            self._write_info(fd)
        except BaseException:  # ENOSPC and the like: leave nothing behind that blocks
            _pause("abandon")
            with contextlib.suppress(OSError):
                self.path.unlink()  # still ours: we hold the flock on this very file
            os.close(fd)
            raise
        self._fd = fd
        self.held = True
        if isinstance(previous.get("pid"), int):
            warn(f"reclaimed a stale lock on {self.path.parent} (pid {previous['pid']} "
                 f"on {previous.get('host', '?')} no longer holds it; it crashed or was killed)")

    def _wait_for_lock(self) -> int:
        """An fd holding the flock on the file at ``run.lock``, retried for ``_PATIENCE`` seconds."""
        deadline = time.monotonic() + _PATIENCE
        while True:
            fd = self._try_lock()
            if fd is not None:
                return fd
            if time.monotonic() >= deadline:
                raise self._busy()
            time.sleep(0.02)

    def _try_lock(self) -> int | None:
        """An fd holding the flock on the file now at ``run.lock``, or ``None`` while it is busy."""
        assert fcntl is not None
        _pause("open")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | _NONBLOCK, 0o644)  # not inherited across exec
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or a device named run.lock
                raise OSError(errno.EINVAL, "not a regular file", str(self.path))
            _pause("flock")
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _pause("stat")
            if _same_file(fd, self.path):
                return fd
        except BlockingIOError:
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # busy, or a releaser unlinked the file we opened
        return None

    @staticmethod
    def _write_info(fd: int) -> None:
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        _pause("truncate")
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        _write_all(fd, json.dumps(info).encode("utf-8"))
        _pause("fsync")
        os.fsync(fd)

    def _busy(self) -> RunLockedError:
        holder = lock_holder(self.path.parent) or {}
        who = (f"pid {holder['pid']} on {holder.get('host', '?')} since {holder.get('started', '?')}"
               if "pid" in holder else "another process")
        return RunLockedError(f"run directory {self.path.parent} is in use by {who}",
                              hint="wait for that run to end, or stop it")

    def _acquire_exclusive(self) -> None:
        """The fallback without ``fcntl``: an ``O_EXCL`` file, never reclaimed automatically."""
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            error = self._busy()
            raise RunLockedError(error.message, hint=f"if no run is using it, delete {self.path}") from None
        try:
            self._write_info(fd)
        except BaseException:
            os.close(fd)  # before unlinking: Windows cannot remove an open file
            with contextlib.suppress(OSError):
                self.path.unlink()
            raise
        os.close(fd)
        self.held = True

    def release(self) -> None:
        """Unlink the file while still holding the flock, then drop it by closing."""
        if not self.held:
            return
        self.held = False
        fd, self._fd = self._fd, None
        if fd is None:  # the O_EXCL fallback
            self.path.unlink(missing_ok=True)
            return
        try:
            _pause("unlink")
            if _same_file(fd, self.path):  # never remove a file someone else created
                self.path.unlink()
        finally:
            _pause("close")
            os.close(fd)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
