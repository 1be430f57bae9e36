"""What a state, a backend and a checkpoint format are: the small contracts plugins fill.

Each is registered through its entry-point group and chosen by name:
``kit.states`` (``--mode``), ``kit.backends`` (``backend:``), ``kit.checkpoint_formats``
(``checkpoint.format:``). Loggers and other plugins are plain hook plugins.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, TypeVar

import torch
from torch.utils.data import Sampler

from kit.runlock import RunLock

if TYPE_CHECKING:
    from kit.trainer import Trainer

T = TypeVar("T")
_NO_CONTEXT = contextlib.nullcontext()
"""Re-entrant and stateless: one instance serves every batch that needs no context."""
ReduceOp = Literal["sum", "mean", "max"]

__all__ = ["Backend", "CheckpointFormat", "RunLoop", "State"]


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

    shared: ClassVar[tuple[str, ...]] = ()
    """Attributes :meth:`open_run_dir` sets on global rank zero that the other ranks adopt
    (``evaluate``'s chosen checkpoint folder, say): only rank zero opens the run."""

    def run(self) -> dict[str, Any]:
        trainer = self.trainer
        with trainer.stop_signals():  # from the start: a signal during start-up stops cleanly too
            try:
                trainer.launch()
                trainer.build()
                path, shared = trainer.on_rank_zero(self._open, "open the run")
                trainer.run_dir = run_dir = Path(path)
                for key, value in shared.items():  # what rank zero chose, every rank adopts
                    setattr(self, key, value)
                with contextlib.ExitStack() as held:

                    def lock() -> None:  # rank zero's: it alone writes the run's files
                        held.enter_context(RunLock(run_dir))

                    if self.locks:
                        trainer.on_rank_zero(lock, "lock the run")
                    self.restore()
                    with trainer.session(mode=self.name, summary=self.summary):
                        self.execute()
            finally:
                trainer.teardown()
        return trainer.results

    def _open(self) -> tuple[str, dict[str, Any]]:
        from kit.paths import check_run_dir  # pydantic: only once a run starts

        run_dir = self.open_run_dir()
        check_run_dir(run_dir)  # no planted link may redirect the run's own writes
        return str(run_dir), {key: getattr(self, key) for key in self.shared}


class RunLoop(Protocol):
    """What the trainer runs: kit's own loop (:class:`kit.loop.Loop`), or another framework's
    that a backend brings (:meth:`Backend.loop`, ``lightning-trainer``)."""

    def fit(self) -> None:
        """Train from where ``trainer.state`` stands to ``training.iterations``."""

    def validate(self, iteration: int) -> dict[str, float]:
        """One validation pass; returns (and records) its results."""

    def test(self) -> dict[str, float]:
        """One test pass; returns (and records) its results."""

    def state_dict(self) -> dict[str, Any]:
        """What the loop needs to resume exactly (a checkpoint's ``loop``)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""


class Backend:
    """Where tensors live and how they move: the strategy under kit's one loop.

    The loop (:mod:`kit.loop`) fires every hook, keeps the run's position, decides when
    to validate, save and stop; a backend decides none of that. It answers five kinds of
    question, and this base class answers them for one process on one device, so a
    backend overrides only what differs (``ddp`` overrides topology, wrapping, the
    no-sync context and the collectives):

    - topology: :attr:`rank`, :attr:`local_rank`, :attr:`world_size`, :attr:`is_global_zero`
    - placement: :meth:`device`, :meth:`to_device`, :meth:`wrap`, :meth:`prepare_optimizer`,
      :meth:`sampler`
    - math: :meth:`autocast`, :meth:`no_backward_sync`, :meth:`backward`,
      :meth:`unscale_gradients`, :meth:`optimizer_step`, :meth:`skip_optimizer_step`
    - collectives: :meth:`all_reduce`, :meth:`all_gather_object`, :meth:`broadcast_object`,
      :meth:`barrier` (no-ops in one process)
    - lifecycle: :meth:`launch`, :meth:`setup`, :meth:`state_dict`/:meth:`load_state_dict`,
      :meth:`teardown`

    ``trainer.model`` stays the unwrapped module (what checkpoints hold); the loop runs
    forward through :meth:`wrap`'s result. A backend declares options as a pydantic
    ``Options`` model, like a logger, and receives them validated in ``__init__``.
    """

    name: ClassVar[str] = ""
    rank: int = 0
    """This process's global rank."""
    local_rank: int = 0
    """Its rank on this machine (which accelerator it uses)."""
    world_size: int = 1
    """How many processes train together."""

    @property
    def is_global_zero(self) -> bool:
        """Whether this process writes the run's files and feeds the loggers."""
        return self.rank == 0

    # -- lifecycle ------------------------------------------------------------------

    def launch(self, trainer: Trainer) -> None:
        """Join the other processes (``ddp``: the process group); before any run directory.

        A one-process backend refuses to run under a launcher that started several, which
        would otherwise train that many unrelated runs.
        """
        from kit.env import launched
        from kit.errors import ConfigError

        started = launched("WORLD_SIZE") or 1
        if started > 1:
            raise ConfigError(f"backend {trainer.config.backend.name} runs one process, but "
                              f"{started} were started (torchrun)", key="backend",
                              hint="set backend: ddp, or launch one process")

    def setup(self, trainer: Trainer) -> None:
        """Take the built components: precision, a grad scaler, compilation."""
        cfg = trainer.config.training
        self.amp_dtype = {"bf16": torch.bfloat16, "16": torch.float16}.get(cfg.precision)
        self.scaler = torch.amp.GradScaler("cuda") if cfg.precision == "16" else None
        self.params = [p for p in trainer.model.parameters() if p.requires_grad] \
            if trainer.model is not None else []
        self.placed = trainer.device
        self._move = trainer.device.type != "cpu"
        self._non_blocking = trainer.device.type == "cuda"

    def teardown(self) -> None:
        """Leave the process group, free what :meth:`launch` took. Called however the run ends."""

    def loop(self, trainer: Trainer) -> RunLoop | None:
        """The loop to run instead of kit's own, or ``None`` (every backend but one).

        ``lightning-trainer`` returns Lightning's Trainer loop, firing kit's hooks through
        ``KitCallback``; its documented differences from kit's loop are its own.
        """
        return None

    def state_dict(self) -> dict[str, Any]:
        """What this backend needs to resume exactly (a grad scaler)."""
        scaler = getattr(self, "scaler", None)
        return {"scaler": scaler.state_dict() if scaler is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; called after :meth:`setup`."""
        scaler = getattr(self, "scaler", None)
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])

    # -- placement ------------------------------------------------------------------

    def device(self, requested: str) -> torch.device:
        """The device this process trains on, from ``training.device``."""
        from kit.trainer import resolve_device

        return resolve_device(requested)

    def to_device(self, value: Any) -> Any:
        """A batch (tensors, or tuples, lists and dicts of them) on this process's device."""
        if not self._move:
            return value
        if isinstance(value, torch.Tensor):
            return value.to(self.placed, non_blocking=self._non_blocking)
        if isinstance(value, tuple | list):
            return type(value)(self.to_device(v) for v in value)
        if isinstance(value, dict):
            return {k: self.to_device(v) for k, v in value.items()}
        return value

    def wrap(self, model: torch.nn.Module, trainer: Trainer) -> Callable[..., Any]:
        """What the loop calls forward on: the model, compiled when ``training.compile``."""
        if trainer.config.training.compile:
            return torch.compile(model)
        return model

    def unwrap(self, forward: Callable[..., Any]) -> Callable[..., Any]:
        """What evaluation runs forward through: no collectives, as ranks may see different
        numbers of evaluation batches; by default :meth:`wrap`'s result itself."""
        return forward

    def prepare_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """The optimizer the loop steps (a sharded one, say); by default unchanged."""
        return optimizer

    def sampler(self, size: int, *, seed: int, shuffle: bool, train: bool) -> Sampler[int]:
        """The indices of a map-style dataset this rank reads, in order, from ``(seed, epoch)``."""
        from kit.data import EpochSampler

        return EpochSampler(size, seed=seed, shuffle=shuffle)

    # -- math -----------------------------------------------------------------------

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Mixed precision for forward (and the loss), or nothing."""
        if self.amp_dtype is None:
            return _NO_CONTEXT
        return torch.autocast(self.placed.type, dtype=self.amp_dtype)

    def no_backward_sync(self, forward: Any, *, enabled: bool) -> contextlib.AbstractContextManager[Any]:
        """Around forward and backward of an accumulation micro-batch: skip the gradient sync."""
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        """Backward through ``loss`` (scaled under fp16)."""
        if self.scaler is not None:
            self.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
        else:
            loss.backward()  # type: ignore[no-untyped-call]

    def unscale_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the gradients by the grad scaler's scale (fp16); nothing otherwise. The
        loop calls it at most once per step, before clipping or a hook that reads them."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def optimizer_step(self, optimizer: torch.optim.Optimizer, *, clip_grad_norm: float | None) -> None:
        """Clip, step and update the scaler; zeroing the gradients is the loop's. Gradients
        are unscaled by then when ``clip_grad_norm`` is set (:meth:`unscale_gradients`)."""
        if clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, clip_grad_norm)
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
            return
        optimizer.step()

    def skip_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """A step a plugin vetoed: the optimizer does not step, but the grad scaler still
        updates (it lowers its scale after an overflow, so fp16 training recovers)."""
        if self.scaler is not None:
            self.scaler.update()

    # -- collectives ----------------------------------------------------------------

    def all_reduce(self, tensor: torch.Tensor, op: ReduceOp = "sum") -> torch.Tensor:
        """``tensor`` reduced over every rank (``sum``, ``mean`` or ``max``); in place when it can."""
        return tensor

    def all_gather_object(self, obj: T) -> list[T]:
        """Every rank's ``obj``, by rank (pickled between kit's own processes only)."""
        return [obj]

    def broadcast_object(self, obj: T, src: int = 0) -> T:
        """Rank ``src``'s ``obj`` on every rank."""
        return obj

    def barrier(self) -> None:
        """Wait until every rank gets here."""


class CheckpointFormat(ABC):
    """How a checkpoint dict becomes files on disk and back.

    :meth:`save` writes its files into a new, empty folder. kit chose that folder as
    a staging name next to the final one; it fsyncs and hashes the files, renames the
    folder into place and writes the manifest last, so a format never has to think
    about crashes. :meth:`load` must never execute code from the files.

    The dict holds the keys of :class:`kit.checkpoint_content.Checkpoint` and whatever
    plugins added; a format writes all of it and gives it back as it was. Both methods
    use a plain ``dict[str, Any]``: what :meth:`load` returns is unchecked data from
    disk (kit checks it with ``check_kit_checkpoint`` afterwards), and a format that
    treats the dict as opaque needs no kit type.
    """

    name: ClassVar[str] = ""

    @abstractmethod
    def save(self, checkpoint: dict[str, Any], folder: Path) -> None:
        """Write ``checkpoint`` (a :class:`~kit.checkpoint_content.Checkpoint`, plus plugins'
        keys) as regular files directly in ``folder``."""

    @abstractmethod
    def load(self, folder: Path, *, map_location: Any = "cpu") -> dict[str, Any]:
        """Read back what :meth:`save` wrote, tensors on ``map_location``; never run code from it."""
