"""kit's one exception tree.

Every error a user can fix derives from :class:`KitError`. The CLI turns it into a
single line on stderr and exit code 2; anything else is a bug (or the user's own
code failing) and keeps its traceback.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping
from typing import Any, ClassVar

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DiskFullError",
    "KitError",
    "PluginError",
    "PluginLoadError",
    "PluginNotFoundError",
    "RunInterrupted",
    "RunLockedError",
    "TargetError",
    "disk_full",
    "first_line",
    "validation_message",
]


class KitError(Exception):
    """Something the user can fix: what is wrong, where, and how to fix it."""

    exit_code: ClassVar[int] = 2
    """What ``kit`` exits with: 2 for bad input, 1 for a run that failed (a full disk)."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message} ({hint})" if hint else message)


class ConfigError(KitError):
    """The configuration is missing, unreadable or invalid; ``key`` names the place."""

    def __init__(self, message: str, *, key: str | None = None, hint: str | None = None) -> None:
        self.key = key
        super().__init__(f"{key}: {message}" if key else message, hint=hint)


class TargetError(ConfigError):
    """An import target (``package.module:attr``) could not be resolved or called."""


class PluginNotFoundError(KitError):
    """A state, backend, logger, format or plugin name that no installed package provides."""


class PluginLoadError(KitError):
    """An installed plugin failed to import; ``entry`` is ``package[entry]``."""

    def __init__(self, entry: str, cause: BaseException, *, hint: str | None = None) -> None:
        self.entry = entry
        self.cause = cause
        lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
        detail = f"{type(cause).__name__}: {'; '.join(lines)}"  # always one line
        super().__init__(f"plugin {entry} failed to load: {detail}", hint=hint)


class PluginError(KitError):
    """A plugin raised in one of its hooks: named with the hook; the run failed (exit 1).

    ``frames`` is the traceback from the plugin's hook down, the part its author can act
    on; kit's own frames above it are shown only with ``--debug``.
    """

    exit_code: ClassVar[int] = 1

    def __init__(self, label: str, hook: str, cause: BaseException, frames: str) -> None:
        self.label = label
        self.hook = hook
        self.cause = cause
        self.frames = frames
        lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
        detail = f"{type(cause).__name__}: {lines[0]}" if lines else type(cause).__name__
        super().__init__(f"plugin {label} failed in {hook}: {detail}")


class CheckpointError(KitError):
    """A checkpoint is missing, unreadable, or refused as unsafe."""


class RunLockedError(KitError):
    """Another live process holds the run directory's lock."""


class DiskFullError(KitError):
    """The disk (or quota) filled up while kit wrote ``path``; the run failed, exit code 1.

    Not bad input, but a user-fixable condition with one clear line: what was being
    written, and which checkpoint is the last good one to continue from.
    """

    exit_code: ClassVar[int] = 1

    def __init__(self, path: object, *, last_checkpoint: object = None, training: bool | None = None) -> None:
        """``training``: the failure hit a training run (which can be resumed), an evaluation
        (``False``), or happened outside any run (``None``)."""
        self.path = path
        self.last_checkpoint = last_checkpoint
        last = ""
        if last_checkpoint is not None:
            last = f"; the last good checkpoint is {last_checkpoint}"
        elif training:  # the run knows it saved none
            last = "; no checkpoint was written yet"
        hint = "free some space, then resume with --mode continue" if training else \
            "free some space and run it again"
        super().__init__(f"no space left on device while writing {path}{last}", hint=hint)


DISK_FULL = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


def disk_full(exc: BaseException) -> OSError | None:
    """The ``OSError`` for a full disk or quota in ``exc`` or its causes, if there is one."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in DISK_FULL:
            return current
        current = current.__cause__ or current.__context__
    return None


class RunInterrupted(KeyboardInterrupt):
    """A run stopped on a signal (SIGTERM, SIGINT, SIGUSR1) after saving a checkpoint.

    Not a :class:`KitError`: nothing is wrong. It subclasses ``KeyboardInterrupt`` so
    code that already treats Ctrl-C as "stop now" treats it the same; the CLI exits
    with ``128 + signum``, as a process killed by the signal would.
    """

    def __init__(self, signum: int, checkpoint: str | None = None, *, aborted: bool = False) -> None:
        self.signum = signum
        self.checkpoint = checkpoint
        self.aborted = aborted
        """A second signal: stopped at once, without saving; the last checkpoint stays good."""
        super().__init__(signum)


def validation_message(error: Mapping[str, Any]) -> str:
    """One pydantic error as a sentence: our own validators' text without pydantic's
    ``Value error, `` prefix, and the offending input shown only when it is short."""
    if error.get("type") == "value_error":
        return str(error.get("ctx", {}).get("error") or error["msg"])
    value = error.get("input")
    shown = repr(value)
    if isinstance(value, dict | list) or len(shown) > 60:
        return str(error["msg"])
    return f"{error['msg']} (got {shown})"


def first_line(exc: BaseException, *, typed: bool = False) -> str:
    """The first line of ``exc``'s message (its type's name when it has none), so an error
    from a library fits kit's one-line report; ``typed`` puts ``TypeName: `` in front."""
    text = exc.msg if isinstance(exc, SyntaxError) and exc.msg else str(exc).strip()
    line = text.splitlines()[0] if text else ""
    if not line:
        return type(exc).__name__
    return f"{type(exc).__name__}: {line}" if typed else line
