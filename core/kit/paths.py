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

import posixpath
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Annotated

from pydantic import AfterValidator

from kit.errors import ConfigError

__all__ = ["RESERVED", "RunPath", "check_run_relative", "run_path"]

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
    return path


RunPath = Annotated[str, AfterValidator(check_run_relative)]
"""A plugin option naming a file or folder inside the run directory (see the module doc)."""
