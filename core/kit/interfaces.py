"""What a state, a backend and a checkpoint format are: the small contracts plugins fill.

Each is registered through its entry-point group and chosen by name:
``kit.states`` (``--mode``), ``kit.backends`` (``backend:``), ``kit.checkpoint_formats``
(``checkpoint.format:``). Loggers and other plugins are plain hook plugins.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from kit.runlock import RunLock

if TYPE_CHECKING:
    from kit.trainer import Trainer

__all__ = ["Backend", "CheckpointFormat", "State"]


class State(ABC):
    """A mode of the trainer (the State pattern; :class:`~kit.trainer.Trainer` is the context).

    :meth:`run` is the template every mode follows: build the components (so a bad
    config fails before anything is written), choose the run directory, restore what
    the mode restores (holding the run directory's lock), then :meth:`execute` inside
    the trainer's session (which fires ``kit_train_begin``/``kit_train_end`` and handles
    failures). SIGTERM, SIGINT and SIGUSR1 are caught from the first step of the template:
    before the run directory exists they just stop; after, the session saves a checkpoint
    (when training), marks the run ``interrupted`` and stops cleanly.
    A custom mode subclasses this and overrides the steps it changes.
    """

    name: ClassVar[str] = ""
    trains: ClassVar[bool] = True
    """Whether this mode trains: a signal then saves a checkpoint before stopping."""
    locks: ClassVar[bool] = True
    """Whether the run directory is locked (:class:`~kit.runlock.RunLock`) while it runs."""
    summary: ClassVar[str | None] = "summary.json"
    """The file the session writes the run's outcome to; ``None`` for none."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    @abstractmethod
    def open_run_dir(self) -> Path:
        """Create or find the run directory this mode writes to."""

    def restore(self) -> None:  # noqa: B027 - optional step, empty on purpose
        """Load whatever this mode starts from (a checkpoint); a new run loads nothing."""

    @abstractmethod
    def execute(self) -> None:
        """Do the work; results go to ``trainer.results``."""

    def run(self) -> dict[str, Any]:
        from kit.paths import check_run_dir  # pydantic: only once a run starts

        trainer = self.trainer
        with trainer.stop_signals():  # from the start: a signal during start-up stops cleanly too
            trainer.build()
            trainer.run_dir = self.open_run_dir()
            check_run_dir(trainer.run_dir)  # no planted link may redirect the run's own writes
            try:
                with RunLock(trainer.run_dir) if self.locks else contextlib.nullcontext():
                    self.restore()
                    with trainer.session(mode=self.name, summary=self.summary):
                        self.execute()
            finally:
                trainer.teardown()
        return trainer.results


class Backend(ABC):
    """Runs the loop on some engine and fires the loop's hooks in the documented order.

    The trainer builds the model, data, loss, optimizer and scheduler; the backend
    places them, runs iterations, validation and test, and calls
    ``trainer.save_checkpoint()`` when one is due.
    """

    name: ClassVar[str] = ""

    @abstractmethod
    def setup(self, trainer: Trainer) -> None:
        """Place the model on its device, compile it, prepare mixed precision."""

    @abstractmethod
    def fit(self, trainer: Trainer) -> None:
        """Train from ``trainer.iteration`` to ``training.iterations``, validating and saving."""

    @abstractmethod
    def validate(self, trainer: Trainer, iteration: int) -> dict[str, float]:
        """One validation pass, firing the ``kit_val_*`` hooks; returns the results."""

    @abstractmethod
    def test(self, trainer: Trainer) -> dict[str, float]:
        """One test pass, firing the ``kit_test_*`` hooks; returns the results."""

    def state_dict(self) -> dict[str, Any]:
        """What the backend needs to resume exactly (a grad scaler, pending losses)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional
        """Restore :meth:`state_dict`'s output; called after :meth:`setup`."""


class CheckpointFormat(ABC):
    """How a checkpoint dict becomes files on disk and back.

    :meth:`save` writes its files into a new, empty folder. kit chose that folder as
    a staging name next to the final one; it fsyncs and hashes the files, renames the
    folder into place and writes the manifest last, so a format never has to think
    about crashes. :meth:`load` must never execute code from the files.
    """

    name: ClassVar[str] = ""

    @abstractmethod
    def save(self, checkpoint: dict[str, Any], folder: Path) -> None: ...

    @abstractmethod
    def load(self, folder: Path, *, map_location: Any = "cpu") -> dict[str, Any]: ...
