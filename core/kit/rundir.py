"""Run directories: ``<runs_dir>/<experiment>/<run-id>/`` and the files kit writes there."""

from __future__ import annotations

import errno
import json
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kit.errors import ConfigError, disk_full

__all__ = [
    "MAX_READ",
    "atomic_write",
    "create_run_dir",
    "fsync",
    "read_json",
    "read_regular",
    "write_json",
    "write_text",
]

MAX_READ = 16 << 20
"""The largest file kit reads whole from a run directory (a summary, a manifest, a config)."""


def fsync(path: Path) -> None:
    """Make a file's content, or a rename or a new file in a folder, durable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if path.is_dir():  # some platforms cannot open folders
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Make ``path`` appear whole or not at all, even if the process dies mid-write.

    ``write`` fills a temporary file in the same folder (so the rename cannot cross
    file systems) and must fsync it; the rename is then made durable by fsyncing
    the folder. A failed write leaves the previous ``path`` untouched.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.filename is None:  # a failed write names no file: say which one (a full disk, say)
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync(path.parent)
    return path


def write_text(path: Path, text: str) -> Path:
    """Atomically replace ``path`` with ``text`` (UTF-8)."""

    def write(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())

    return atomic_write(path, write)


def write_json(path: Path, data: Any) -> Path:
    """Atomically replace ``path`` with ``data`` as indented JSON."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_regular(path: Path, *, limit: int = MAX_READ) -> bytes:
    """The bytes of ``path``, one of kit's own files: a regular file of at most ``limit`` bytes.

    Anything else is an ``OSError`` rather than a hang or an exhausted memory: the last
    component is never followed if it is a symlink, and the open never blocks, so a FIFO,
    a device or a 3 GB sparse file put where kit expects its file is refused at once.
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        data = fh.read(limit + 1) if info.st_size <= limit else b""
    if info.st_size > limit or len(data) > limit:  # the second: it grew while being read
        raise OSError(errno.EFBIG, f"larger than {limit >> 20} MiB", str(path))
    return data


def read_json(path: Path) -> Any:
    """The JSON in ``path``, read by :func:`read_regular`; ``OSError``, ``ValueError`` (not UTF-8,
    not JSON) or ``RecursionError`` (nested too deep) when it cannot be."""
    return json.loads(read_regular(path).decode("utf-8"))


def create_run_dir(runs_dir: Path, experiment: str) -> Path:
    """A new, empty run directory named by start time; concurrent runs never share one.

    A ``runs_dir`` that cannot hold one (a file, read-only, a bad name) is a
    :class:`~kit.errors.ConfigError` naming ``runs_dir``; a full disk stays an ``OSError``.
    """
    parent = runs_dir / experiment
    stamp = time.strftime("%Y%m%d-%H%M%S")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        for n in range(1000):
            candidate = parent / (stamp if n == 0 else f"{stamp}-{n}")
            try:
                candidate.mkdir()  # atomic: fails if another run took the name
            except FileExistsError:
                continue
            return candidate
    except (OSError, ValueError) as exc:
        if isinstance(exc, OSError) and disk_full(exc) is not None:
            raise
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"cannot create a run directory in {parent}: {reason}", key="runs_dir",
                          hint="choose a writable folder (a file or read-only place cannot hold runs)") \
            from None
    raise ConfigError(f"no free run directory under {parent}", key="runs_dir",
                      hint="a thousand runs started in this second: try again")
