"""What a state, a backend and a checkpoint format are: the small contracts plugins fill.

Each is registered through its entry-point group and chosen by name:
``kit.states`` (``--mode``), ``kit.backends`` (``backend:``), ``kit.checkpoint_formats``
(``checkpoint.format:``). Loggers and other plugins are plain hook plugins.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from kit.trainer import Trainer

__all__ = ["Backend", "CheckpointFormat", "State"]


class State(ABC):
    """A mode of the trainer (the State pattern; :class:`~kit.trainer.Trainer` is the context).

    :meth:`run` is the template every mode follows: build the components (so a bad
    config fails before anything is written), choose the run directory, restore what
    the mode restores, then :meth:`execute` inside the trainer's
    session (which fires ``kit_train_begin``/``kit_train_end`` and handles failures).
    A custom mode subclasses this and overrides the steps it changes.
    """

    name: ClassVar[str] = ""

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
        trainer = self.trainer
        trainer.build()
        trainer.run_dir = self.open_run_dir()
        self.restore()
        with trainer.session(mode=self.name):
            self.execute()
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


class CheckpointFormat(ABC):
    """How a checkpoint dict becomes bytes on disk and back.

    :meth:`save` writes to the path it is given (kit chooses a temporary name in the
    final folder and renames it when :meth:`save` returns) and must ``fsync`` what it
    wrote. :meth:`load` must never execute code from the file.
    """

    name: ClassVar[str] = ""
    suffix: ClassVar[str] = ""

    @abstractmethod
    def save(self, checkpoint: dict[str, Any], path: Path) -> None: ...

    @abstractmethod
    def load(self, path: Path, *, map_location: Any = "cpu") -> dict[str, Any]: ...
