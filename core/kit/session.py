"""kit inside a loop that is not kit's: a run directory, loggers, plugins and hooks in one call.

A hand-written PyTorch loop (or another framework's trainer) gets what a kit run has
around its loop, with nothing to stand in for kit's trainer::

    with kit.Session("mnist", loggers=["tensorboard", "jsonl"], hparams={"lr": 1e-3}) as run:
        for step, (x, y) in enumerate(loader, 1):
            loss = train_step(x, y)
            run.record("train/loss", loss, step=step)     # every logger gets it
        run.record_results("test", {"accuracy": evaluate(model)})

Underneath is a real :class:`~kit.trainer.Trainer` on a config with no model or data, so
every logger and hook plugin runs unchanged: they see ``run.trainer`` as in a kit run.
The session owns the run's start and end: ``kit_train_begin`` on entry, and on exit
``kit_exception`` or ``kit_interrupt`` (Ctrl-C) as it ended, then ``kit_train_end`` and
the run's ``summary.json``. The loop's own events are the caller's to fire
(:meth:`Session.fire`), in the order ``kit.hookspecs`` documents.

Plugins load as in a kit run (autoload, ``blocked``), except that an installed plugin
that fails to load is reported once and skipped: someone else's broken package must not
break a program that embeds kit. With several processes (torchrun), rank zero alone
creates the run directory and feeds the loggers; plugins run on every rank. The host
program keeps its signal handlers: a session installs none.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from kit.errors import KitError

if TYPE_CHECKING:
    import torch

    from kit.metrics import MetricKind, Split
    from kit.plugins import HookRelay, Registry
    from kit.trainer import Trainer

__all__ = ["Session"]

_OWN = frozenset({"kit_train_begin", "kit_train_end", "kit_exception", "kit_interrupt"})
"""Hooks the session fires itself, on entry and exit."""
_SPLITS: dict[str, Split] = {"train/": "train", "val/": "val", "test/": "test"}


def _topology(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """The caller's, else ``torch.distributed``'s when a group is up, else torchrun's, else one."""
    import torch.distributed as dist

    from kit.env import launched

    if dist.is_available() and dist.is_initialized():
        found = (dist.get_rank(), dist.get_world_size())
    else:
        found = (launched("RANK") or 0, launched("WORLD_SIZE") or 1)
    return (found[0] if rank is None else rank, found[1] if world_size is None else world_size)


def _split(entries: Iterable[object], key: str) -> tuple[list[object], list[object]]:
    """``(names for the config, objects to register)``: a name or ``{name: options}`` loads an
    installed entry point (or ``pkg.mod:Class``); anything else is a plugin object."""
    named: list[object] = []
    objects: list[object] = []
    if isinstance(entries, str | Mapping):
        raise KitError(f"Session({key}=…) takes a list, not {type(entries).__name__}",
                       hint=f"{key}=[{entries!r}]")
    for entry in entries:
        (named if isinstance(entry, str | Mapping) else objects).append(entry)
    return named, objects


class Session:
    """kit's loggers, plugins and hooks around someone else's loop; a context manager.

    :param experiment: the folder under ``runs_dir`` this run's directory goes into.
    :param runs_dir: where runs are kept (relative to the working directory).
    :param loggers: installed loggers by name (``"tensorboard"``), ``{name: {options}}``,
        import targets, or logger objects; they run on global rank zero only.
    :param plugins: hook plugins, the same ways; they run on every rank.
    :param hparams: what loggers record as the run's parameters (nested mappings flatten
        to ``a.b``); kept in the run's ``config.yaml`` too.
    :param model: the model, for plugins that read ``trainer.model`` (parameter names,
        the console's count); optional.
    :param optimizer: likewise, for plugins that read ``trainer.optimizer`` (``lr_monitor``).
    :param iterations: how many epochs (or iterations) the loop will run, for progress
        displays and the summary; optional.
    :param rank: this process's global rank; default: ``torch.distributed``'s, else torchrun's.
    :param world_size: how many processes; the same defaults.
    :param autoload: load every installed ``kit.plugins`` entry point (default: unless
        ``KIT_DISABLE_PLUGIN_AUTOLOAD`` is set).
    :param blocked: plugin names never to load.
    :param registry: where entry points come from; the installed packages by default.
    """

    def __init__(
        self,
        experiment: str = "default",
        *,
        runs_dir: str | os.PathLike[str] = "runs",
        loggers: Iterable[object] = ("jsonl",),
        plugins: Iterable[object] = (),
        hparams: Mapping[str, Any] | None = None,
        model: torch.nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        iterations: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        autoload: bool | None = None,
        blocked: Iterable[str] = (),
        registry: Registry | None = None,
    ) -> None:
        from kit.config import validate_config
        from kit.interfaces import Backend
        from kit.trainer import Trainer

        logger_names, logger_objects = _split(loggers, "loggers")
        plugin_names, plugin_objects = _split(plugins, "plugins")
        self.hparams = dict(hparams or {})
        data: dict[str, Any] = {"experiment": experiment, "runs_dir": str(runs_dir),
                                "loggers": logger_names, "plugins": plugin_names}
        if iterations is not None:
            data["training"] = {"iterations": iterations}
        config = validate_config(data, source="Session(…)", embedded=True)
        backend = Backend()  # one process's answers, with the caller's place in the job
        backend.rank, backend.world_size = _topology(rank, world_size)
        zero = backend.rank == 0
        self.trainer: Trainer = Trainer(
            config, mode="session", plugins=[*(logger_objects if zero else []), *plugin_objects],
            registry=registry, autoload=autoload, blocked=blocked, broken_plugins="skip",
            hparams=self.hparams)
        """The trainer every hook receives; its ``state`` is where the session stands."""
        self.trainer.backend = backend
        self.trainer.keep_loggers_on_rank_zero()
        self.trainer.model = model
        self.trainer.optimizer = optimizer
        if model is not None:
            self.trainer.device = next((p.device for p in model.parameters()), self.trainer.device)
        self._stack: contextlib.ExitStack | None = None
        self._entered = False
        self._attached = False

    @classmethod
    def attach(cls, trainer: Trainer) -> Session:
        """A session over a kit run that is open already (the ``lightning-trainer`` backend's,
        whose run kit opened and closes): it fires and records through ``trainer``, and
        entering or leaving it does nothing."""
        session = cls.__new__(cls)
        session.hparams = {}
        session.trainer = trainer
        session._stack = contextlib.ExitStack()  # open for as long as the run is
        session._entered = True
        session._attached = True
        return session

    # -- where the run stands -------------------------------------------------------

    @property
    def run_dir(self) -> Path | None:
        """This run's directory (rank zero; ``None`` on other ranks and before entry)."""
        return self.trainer.run_dir

    @property
    def hooks(self) -> HookRelay:
        """The typed relay, one attribute per hook (``None`` when nobody implements it)."""
        return self.trainer.hooks

    @property
    def global_step(self) -> int:
        """The step records are stamped with; set it, or pass ``step=`` to :meth:`record`."""
        return self.trainer.state.global_step

    @global_step.setter
    def global_step(self, value: int) -> None:
        self.trainer.state.global_step = int(value)

    @property
    def iteration(self) -> int:
        """The epoch (or iteration) records are stamped with; firing a hook with ``iteration=``
        sets it too."""
        return self.trainer.state.iteration

    @iteration.setter
    def iteration(self, value: int) -> None:
        self.trainer.state.iteration = int(value)

    @property
    def is_open(self) -> bool:
        """Between entering and leaving the ``with`` block."""
        return self._stack is not None

    @property
    def should_stop(self) -> bool:
        """Whether a plugin asked the run to stop (``early_stopping``, ``timer``, …); the loop
        decides what to do about it."""
        return self.trainer.should_stop

    # -- opening and closing ----------------------------------------------------------

    def __enter__(self) -> Session:
        if self._entered:
            raise KitError("a kit.Session runs once", hint="create a new Session for another run")
        self._entered = True
        trainer = self.trainer
        with contextlib.ExitStack() as stack:
            if trainer.is_global_zero:
                trainer.run_dir = self._open(stack)
            stack.enter_context(self._blamed())
            stack.enter_context(trainer.session(mode="session"))
            self._stack = stack.pop_all()
        return self

    def _open(self, stack: contextlib.ExitStack) -> Path:
        """A new run directory holding the session's config and hparams, locked while open."""
        from kit.paths import check_run_dir
        from kit.rundir import create_run_dir
        from kit.runlock import RunLock
        from kit.states import save_run_config

        config = self.trainer.config
        run_dir = create_run_dir(Path(config.runs_dir), config.experiment)
        check_run_dir(run_dir)
        save_run_config(run_dir, {**config.resolved(), "hparams": self.hparams})
        stack.enter_context(RunLock(run_dir))
        return run_dir

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> Literal[False]:
        if self._attached:  # the run's owner closes it
            return False
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.__exit__(exc_type, exc, tb)  # the end hooks and summary, then the lock
        return False

    def close(self) -> None:
        """End the run as finished, for code that cannot use ``with``."""
        self.__exit__(None, None, None)

    @contextlib.contextmanager
    def _blamed(self) -> Any:
        """A plugin's failure, wherever it surfaces, names the plugin and its hook."""
        from kit.plugins import blame

        try:
            yield
        except Exception as exc:
            blamed = blame(exc, self.trainer.pm)
            if blamed is None:
                raise
            raise blamed from exc

    def _live(self) -> Trainer:
        if self._stack is None:
            raise KitError("this kit.Session is not open", hint="use it inside `with kit.Session(…) as run:`")
        return self.trainer

    # -- what the loop tells kit ------------------------------------------------------

    def record(self, name: str, value: Any, step: int | None = None, *, kind: MetricKind = "scalar",
               split: Split | None = None) -> None:
        """Hand every logger one value (``kit_metric_recorded``), at ``step`` when given.

        A tensor is read to a Python number here (a host sync on an accelerator, so record
        when you log, not every step). ``split`` defaults to the name's prefix (``val/loss``).
        """
        trainer = self._live()
        if step is not None:
            trainer.state.global_step = int(step)
        if split is None:
            split = next((s for prefix, s in _SPLITS.items() if name.startswith(prefix)), None)
        with self._blamed():
            trainer.record(name, value, kind=kind, split=split)

    def record_results(self, split: Split, results: Mapping[str, float]) -> None:
        """Final results of ``split`` (``test``, say): recorded as ``test/<name>`` and kept in
        ``summary.json``."""
        trainer = self._live()
        with self._blamed():
            trainer.record_results(split, dict(results))

    def fire(self, hook: str, **kwargs: Any) -> Any:
        """Fire one of the loop's hooks (``kit_iteration_end``, ``kit_step_end``, …) with the
        session's trainer; returns what pluggy returns (``None`` when nobody implements it).

        An ``iteration`` argument also sets :attr:`iteration`. The run's own hooks
        (``kit_train_begin``/``end``, ``kit_exception``, ``kit_interrupt``) are the session's.
        """
        from kit.hookspecs import HOOK_NAMES

        trainer = self._live()
        if hook in _OWN:
            raise KitError(f"{hook} is fired by the session itself, on entry and exit",
                           hint="enter and leave the `with` block instead")
        if hook not in HOOK_NAMES:
            import difflib

            close = difflib.get_close_matches(hook, HOOK_NAMES, n=1)
            raise KitError(f"no kit hook named {hook!r}",
                           hint=f"did you mean {close[0]}?" if close else "`kit hooks` lists them")
        if "iteration" in kwargs:
            trainer.state.iteration = int(kwargs["iteration"])
        with self._blamed():
            return trainer.hooks.call(hook, trainer=trainer, **kwargs)

    def state_dict(self) -> dict[str, Any]:
        """What plugins keep to resume (``kit_checkpoint_save``) and where the session stands;
        save it in your own checkpoint and give it back to :meth:`load_state_dict`."""
        trainer = self.trainer
        checkpoint: dict[str, Any] = {"progress": trainer.progress(), "plugins": {}}
        with self._blamed():
            trainer.hooks.call("kit_checkpoint_save", trainer=trainer, checkpoint=checkpoint)
        return checkpoint

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Give plugins back what :meth:`state_dict` saved (``kit_checkpoint_load``); before
        entering, as a kit run loads before ``kit_train_begin``, or after."""
        trainer = self.trainer
        progress = state.get("progress")
        if isinstance(progress, Mapping):
            for key in ("global_step", "iteration"):
                value = progress.get(key)
                if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                    setattr(trainer.state, key, value)
        checkpoint = {"progress": progress, "plugins": dict(state.get("plugins") or {})}
        with self._blamed():
            trainer.hooks.call("kit_checkpoint_load", trainer=trainer, checkpoint=checkpoint)
