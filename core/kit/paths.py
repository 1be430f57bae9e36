"""Paths that plugins derive from their options stay inside the run directory.

A logger's ``filename: ../../x`` or ``log_dir: /etc`` must not write outside the run,
and ``filename: config.yaml`` must not clobber kit's own files. Two checks, for two
moments: :data:`RunPath` refuses such an option when the config is validated (before
anything is written, naming the key), and :func:`run_path` checks again when the path
is used, after symlinks are resolved, because the run directory may hold links that
lead elsewhere. A plugin that really writes elsewhere takes an absolute path option
and documents it as such.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Annotated

from pydantic import AfterValidator

from kit.errors import ConfigError

__all__ = ["RESERVED", "RunPath", "check_run_dir", "check_run_relative", "run_path"]

RESERVED = frozenset({"config.yaml", "summary.json", "run.lock", "checkpoints", "config_changes.jsonl",
                      "mlflow.json"})
"""Names at the top of a run directory that belong to kit."""


def check_run_relative(value: str) -> str:
    """``value`` normalised if it names a place inside a run directory; ValueError if not."""
    if not value or "\x00" in value:
        raise ValueError("must be a non-empty path without NUL bytes")
    if PurePosixPath(value).is_absolute() or PureWindowsPath(value).anchor:
        raise ValueError(f"{value!r} is absolute: give a path relative to the run directory")
    normal = posixpath.normpath(value.replace("\\", "/"))
    if normal == "." or normal == ".." or normal.startswith("../"):
        raise ValueError(f"{value!r} leaves the run directory: give a path inside it")
    if any(len(part.encode("utf-8", "surrogateescape")) > 255 for part in normal.split("/")):
        raise ValueError(f"{value[:40]!r}… has a name longer than 255 bytes: shorten it")
    if normal.split("/", 1)[0] in RESERVED:
        raise ValueError(f"{value!r} is kit's own file in the run directory: choose another name")
    return normal


def run_path(run_dir: Path, value: str, *, key: str) -> Path:
    """``run_dir / value``, refused (naming ``key``) unless it stays inside ``run_dir``.

    Parent folders are created. Symlinks are followed before the check, so a link in the
    run directory cannot lead a write outside it.
    """
    try:
        relative = check_run_relative(value)
    except ValueError as exc:
        raise ConfigError(str(exc), key=key) from None
    path = run_dir / relative
    root = run_dir.resolve()
    if not path.resolve().is_relative_to(root):
        raise ConfigError(f"{value!r} leads outside the run directory {run_dir} (through a symlink)",
                          key=key, hint="remove the link or choose another name")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not (path.is_file() or path.is_dir()):  # a FIFO would block the run
        raise ConfigError(f"{path} is neither a file nor a folder", key=key, hint="remove it")
    return path


def check_run_dir(run_dir: Path) -> None:
    """Refuse a run directory whose own files are links, or hold links leading outside it.

    kit writes ``checkpoints/``, ``config_changes.jsonl``, the lock and the summary by name;
    a link planted in their place would send those writes (and retention's deletions)
    elsewhere. One ``scandir`` of the run's top level.
    """
    root = run_dir.resolve()
    try:
        entries = list(os.scandir(run_dir))
    except OSError as exc:
        raise ConfigError(f"cannot read the run directory {run_dir}: {exc.strerror or exc}",
                          key="--run-dir") from None
    for entry in entries:
        path = Path(entry.path)
        if entry.is_symlink() and (entry.name in RESERVED or not path.resolve().is_relative_to(root)):
            where = "" if entry.name in RESERVED else " leading outside the run"
            raise ConfigError(f"{path} is a link{where}; kit writes only to the run's own files",
                              key="--run-dir", hint="remove the link")
        if entry.name == "checkpoints" and not entry.is_dir(follow_symlinks=False):
            raise ConfigError(f"{path} is not a folder", key="--run-dir",
                              hint="move it away: kit keeps the run's checkpoints there")


RunPath = Annotated[str, AfterValidator(check_run_relative)]
"""A plugin option naming a file or folder inside the run directory (see the module doc)."""
