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

Whoever can write to the run directory could plant ``run.lock`` as a link to someone
else's file, so the lock never follows one: it is opened with ``O_NOFOLLOW`` (a symbolic
link is refused), and a file with other hard links, or one that is not a plain file, is
refused before anything is truncated or written. Readers open it the same way and read
at most a few KiB. What the file says (host, pid, start time) is shown escaped and cut
short, so a crafted value cannot split or flood the one-line refusal.
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
_MAX = 4096
"""Bytes of ``run.lock`` read: its JSON is far smaller, and a device planted there is read no further."""
_SHOWN = 64
"""Characters of a value from the file shown in a message."""
_FLAGS = getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
"""Opening a FIFO planted as ``run.lock`` must fail, never hang; a link is never followed."""
_NOT_PLAIN = "it is not a plain file: remove it if no run is using it"
_DENIED = (errno.EACCES, errno.EPERM, errno.EROFS)


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


def _shown(value: object) -> str:
    """``value`` from the lock file as one short printable line: it is not to be trusted."""
    text = value if isinstance(value, str) else json.dumps(value)
    cut = text[:_SHOWN]
    shown = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in cut)
    return shown + ("..." if len(text) > _SHOWN else "")


def _linked(fd: int) -> bool:
    """Whether the open file is a plain file with other names: someone's file planted by a hard link."""
    info = os.fstat(fd)
    return stat.S_ISREG(info.st_mode) and info.st_nlink > 1


def _read_info(fd: int) -> dict[str, Any]:
    """What the open lock file says, ``{}`` unless a JSON object; a linked file is never read."""
    if _linked(fd):
        return {}
    try:
        data = json.loads(os.read(fd, _MAX).decode("utf-8"))
    except ValueError:  # truncated, garbled or not UTF-8
        return {}
    return data if isinstance(data, dict) else {}


def lock_holder(run_dir: Path) -> dict[str, Any] | None:
    """The lock's content, ``{}`` while empty or unreadable, ``None`` when there is no lock."""
    try:
        fd = os.open(run_dir / LOCK_NAME, os.O_RDONLY | _FLAGS)
    except FileNotFoundError:
        return None
    except OSError:  # a link, a folder, no permission
        return {}
    try:
        return _read_info(fd)
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
    ``run.lock`` cannot be opened or read (a link, a folder, no permission): it then says
    nothing, and never takes a flock on a file planted by a hard link.
    """
    path = run_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | _FLAGS)
    except FileNotFoundError:
        return None
    try:
        if _linked(fd):
            raise OSError(errno.EMLINK, "a hard link, never read", str(path))
        if fcntl is None:
            return True  # an O_EXCL lock file exists
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        _pause("probe")
        fcntl.flock(fd, fcntl.LOCK_UN)
        return _foreign(_read_info(fd))
    finally:
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` itself (not what a link there points to) is the file open as ``fd``."""
    try:
        now = os.lstat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino)


def _cannot(path: Path, why: str, hint: str) -> RunLockedError:
    return RunLockedError(f"cannot use {path} as a lock: {why}", hint=hint)


def _check_plain(fd: int, path: Path) -> None:
    """Refuse what was opened at ``path`` unless writing to it harms nothing else: a plain
    file with no other name (a hard link planted there would make the lock overwrite the
    linked file). Called before anything is truncated or written."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):  # a FIFO or a device named run.lock
        raise _cannot(path, "not a regular file", _NOT_PLAIN)
    if info.st_nlink > 1:
        raise _cannot(path, f"it is a hard link ({info.st_nlink} names for one file)",
                      hint="remove it, which leaves the linked file alone; kit never writes to a linked file")


def _unusable(path: Path, error: OSError) -> RunLockedError:
    """The refusal for an ``open`` (or ``flock``) of ``path`` that failed, with the fix for its cause."""
    try:
        mode: int | None = os.lstat(path).st_mode
    except OSError:
        mode = None
    if mode is not None and stat.S_ISLNK(mode):  # O_NOFOLLOW refused it (ELOOP)
        return _cannot(path, "it is a symbolic link", hint="remove the link; kit never writes through one")
    why = error.strerror or str(error)
    if error.errno in _DENIED:
        return _cannot(path, why, hint="check that you can write to the run directory")
    if mode is not None and not stat.S_ISREG(mode):  # a folder
        return _cannot(path, why, hint=_NOT_PLAIN)
    return _cannot(path, why, hint=f"check the run directory {path.parent}")


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
        except OSError as exc:  # a link, a folder, no permission: not a lock anyone can take
            if disk_full(exc) is not None:
                raise
            raise _unusable(self.path, exc) from None
        try:
            _pause("read")
            previous = _read_info(fd)
            if _foreign(previous):  # flock may not reach that host: never take it over
                raise RunLockedError(
                    f"{self.path} was written by pid {previous['pid']} on host {_shown(previous['host'])}, "
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
                 f"on {_shown(previous.get('host', '?'))} no longer holds it; it crashed or was killed)")

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
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | _FLAGS, 0o644)  # not inherited across exec
        try:
            _check_plain(fd, self.path)
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
        who = (f"pid {_shown(holder['pid'])} on {_shown(holder.get('host', '?'))} "
               f"since {_shown(holder.get('started', '?'))}" if "pid" in holder else "another process")
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
