"""kit's one exception tree.

Every error a user can fix derives from :class:`KitError`. The CLI turns it into a
single line on stderr and exit code 2; anything else is a bug (or the user's own
code failing) and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "KitError",
    "PluginLoadError",
    "PluginNotFoundError",
    "RunInterrupted",
    "RunLockedError",
    "TargetError",
]


class KitError(Exception):
    """Something the user can fix: what is wrong, where, and how to fix it."""

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


class CheckpointError(KitError):
    """A checkpoint is missing, unreadable, or refused as unsafe."""


class RunLockedError(KitError):
    """Another live process holds the run directory's lock."""


class RunInterrupted(KeyboardInterrupt):
    """A run stopped on a signal (SIGTERM, SIGINT, SIGUSR1) after saving a checkpoint.

    Not a :class:`KitError`: nothing is wrong. It subclasses ``KeyboardInterrupt`` so
    code that already treats Ctrl-C as "stop now" treats it the same; the CLI exits
    with ``128 + signum``, as a process killed by the signal would.
    """

    def __init__(self, signum: int, checkpoint: str | None = None) -> None:
        self.signum = signum
        self.checkpoint = checkpoint
        super().__init__(signum)
