"""The trainer: the context of the State pattern and what every hook receives.

:class:`Trainer` chooses a state (mode) and a backend by name from their entry points,
builds the components the config names, and holds the run's live state that plugins
read: ``iteration``, ``global_step``, ``should_stop``, ``status``, ``results``, …
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

import torch

from kit import components
from kit._version import __version__
from kit.checkpoint import CheckpointStore, Retention, check_kit_checkpoint
from kit.checkpoint_content import Checkpoint
from kit.config import BackendConfig, KitConfig
from kit.configdiff import flatten
from kit.data import build_loaders, shutdown_workers
from kit.errors import (
    CheckpointError,
    ConfigError,
    DiskFullError,
    KitError,
    RunInterrupted,
    disk_full,
    first_line,
)
from kit.interfaces import Backend, CheckpointFormat, RunLoop, State
from kit.loop import Loop
from kit.metrics import MetricKind, MetricRecord, Split
from kit.plugins import HookRelay, Isolated, PluginChoice, Registry, get_plugin_manager
from kit.plugins.manager import instantiate, load_named
from kit.report import say, warn
from kit.rundir import write_json
from kit.runstate import Best, Phase, Progress, RunState, RunStatus
from kit.seed import rng_state, seed_everything, set_rng_state
from kit.targets import resolve_target
from kit.tasks import MetricSpec, Task, build_metric, metric_specs

if TYPE_CHECKING:
    import torchmetrics

__all__ = ["STOP_SIGNALS", "Trainer"]

T = TypeVar("T")

STOP_SIGNALS = tuple(
    s for s in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGUSR1", None)) if s is not None
)
"""Signals that stop a run cleanly: finish the step, save, fire ``kit_interrupt``, exit 128+signum."""

SAME_STOP_S = 5.0
"""With several processes, a second stop signal this soon after the first is the same stop:
a signal sent to the whole job (Ctrl-C, a scheduler) reaches each rank directly and again
through torchrun, which forwards it. Later, a second signal aborts at once."""


class Trainer:
    """Train, validate, test, log and checkpoint one run of a :class:`KitConfig`.

    :param config: the validated run configuration.
    :param mode: the state to run, an entry point in ``kit.states`` (``new``, …).
    :param backend: overrides ``config.backend``.
    :param plugins: extra plugin objects to register (embedding, tests).
    :param registry: where entry points come from; the installed packages by default.
    :param autoload: load every ``kit.plugins`` entry point (default: unless
        ``KIT_DISABLE_PLUGIN_AUTOLOAD`` is set).
    :param blocked: plugin names never to load (``-p no:NAME``).
    :param run_dir: the run to continue or evaluate (default: the experiment's latest).
    :param checkpoint: what ``evaluate`` loads: ``best``, ``last`` or a path.
    :param allow_config_change: let ``continue`` accept changes that can break resumption.
    :param broken_plugins: an autoloaded plugin that fails to load stops the run (``raise``)
        or is skipped with a warning (``skip``, what :class:`kit.Session` uses).
    :param hparams: what :meth:`hparams` gives loggers; default: the resolved config.
    """

    def __init__(
        self,
        config: KitConfig,
        *,
        mode: str = "new",
        backend: str | None = None,
        plugins: Iterable[object] = (),
        registry: Registry | None = None,
        autoload: bool | None = None,
        blocked: Iterable[str] = (),
        run_dir: Path | None = None,
        checkpoint: str | None = None,
        allow_config_change: bool = False,
        broken_plugins: Literal["raise", "skip"] = "raise",
        hparams: Mapping[str, Any] | None = None,
    ) -> None:
        if backend is not None and backend != config.backend.name:
            config = config.model_copy(update={"backend": BackendConfig(name=backend)})
        self.config = config
        self.mode = mode
        blocked = tuple(blocked)  # -p no:package[entry] leaves that one entry point out everywhere
        self.registry = (registry if registry is not None else Registry.from_environment()).without(blocked)
        self._extra_plugins = tuple(plugins)
        self._autoload = autoload
        self._blocked = tuple(blocked)
        self.requested_run_dir = run_dir
        self.requested_checkpoint = checkpoint
        self.allow_config_change = allow_config_change
        self._hparams = dict(hparams) if hparams is not None else None

        self.state = RunState()
        """Where the run stands; the loop advances it and checkpoints record it. Plugins read
        it through ``iteration``, ``global_step``, ``epoch``, … below."""
        self.should_stop = False
        """Set by a hook to end training after the current step."""
        self.stop_signal: int | None = None
        """Set when SIGTERM, SIGINT or SIGUSR1 arrives; the loops then save and stop."""
        self.trains = True
        """Whether the running mode trains (a signal then saves a checkpoint first)."""
        self.status: RunStatus = "pending"
        """``running``, then ``finished``, ``failed`` or ``interrupted``."""
        self.results: dict[str, Any] = {}
        """Final results by split: ``{"val": {…}, "test": {…}}``."""
        self.run_dir: Path | None = None
        self.last_checkpoint: Path | None = None
        """The newest checkpoint known good: the one this run saved or resumed from last."""
        self.device = torch.device("cpu")

        self.model: torch.nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self.train_loader: torch.utils.data.DataLoader[Any] | None = None
        self.val_loader: torch.utils.data.DataLoader[Any] | None = None
        self.test_loader: torch.utils.data.DataLoader[Any] | None = None
        self.task: Task | None = None
        """How a batch becomes a loss and predictions (``task:``, :mod:`kit.tasks`)."""
        self.metrics: list[MetricSpec] = []
        """``task.metrics`` (or the task's own), classes found; the loop builds them."""
        self.checkpoint_format: CheckpointFormat | None = None
        self.backend: Backend | None = None
        self.loop: RunLoop | None = None
        """Built by :meth:`build`; :meth:`fit`, :meth:`validate` and :meth:`test` run it."""

        self.pm = get_plugin_manager(
            *self._extra_plugins,
            choices=self._choices(),
            registry=self.registry,
            autoload=autoload,
            blocked=self._blocked,
            broken=broken_plugins,
        )
        self.hooks = HookRelay(self.pm)
        self._logger_names = {p.name for p in config.loggers}
        self._started = 0.0
        self._aborted = False
        self._store: CheckpointStore | None = None
        self._saved_at: tuple[int, int, Phase] | None = None
        self._saved_path: Path | None = None
        self._monitored: tuple[float, int] | None = None
        self._next_save_step = math.inf
        self._next_save_time = math.inf

    # -- plugins --------------------------------------------------------------------

    def _choices(self) -> list[PluginChoice]:
        cfg = self.config
        return [
            *(PluginChoice("kit.loggers", p.name, p.options, f"loggers[{i}]", isolate=not p.strict,
                           base_dir=cfg.base_dir)
              for i, p in enumerate(cfg.loggers)),
            *(PluginChoice("kit.plugins", p.name, p.options, f"plugins[{i}]", base_dir=cfg.base_dir)
              for i, p in enumerate(cfg.plugins)),
        ]

    # -- where the run stands (read-only: the loop writes ``state``) ----------------------

    @property
    def iteration(self) -> int:
        """The current (or last finished) iteration, counting from 1."""
        return self.state.iteration

    @property
    def global_step(self) -> int:
        """Optimizer steps taken so far (the same on every rank)."""
        return self.state.global_step

    @property
    def epoch(self) -> int:
        """Passes started over the training loader, counting from 0."""
        return self.state.epoch

    @property
    def batch_idx(self) -> int:
        """The training batch being processed, within its pass."""
        return self.state.batch_idx

    @property
    def epoch_batches(self) -> int:
        """Batches consumed from the current pass over the training loader."""
        return self.state.epoch_batches

    @property
    def phase(self) -> Phase:
        """``train`` (mid-iteration), ``end`` (validation and the iteration's end pending) or ``done``."""
        return self.state.phase

    @property
    def best(self) -> Best | None:
        """The best monitored value checkpointed so far: ``{"name", "mode", "value", "step"}``."""
        return self.state.best

    # -- topology (the backend's) --------------------------------------------------

    @property
    def rank(self) -> int:
        """This process's global rank."""
        return self.backend.rank if self.backend is not None else 0

    @property
    def world_size(self) -> int:
        """How many processes train together."""
        return self.backend.world_size if self.backend is not None else 1

    @property
    def is_global_zero(self) -> bool:
        """Whether this process writes the run's files; loggers run only here."""
        return self.rank == 0

    @property
    def failed_plugins(self) -> dict[str, str]:
        """Isolated plugins (loggers) that failed and were disabled: name -> what broke."""
        return {
            name: plugin.failure for name, plugin in self.pm.list_name_plugin()
            if isinstance(plugin, Isolated) and plugin.failure is not None
        }

    def hparams(self) -> dict[str, Any]:
        """The resolved config flattened to ``{"training.iterations": 20, …}``, for loggers."""
        def scalar(value: Any) -> Any:
            if not isinstance(value, list):
                return value
            plain = all(not isinstance(v, dict | list) for v in value)
            return ", ".join(map(str, value)) if plain else str(value)

        source = self._hparams if self._hparams is not None else self.config.resolved()
        return {key: scalar(value) for key, value in flatten(source).items()}

    def add_plugin(self, plugin: object, name: str | None = None) -> None:
        """Register a plugin mid-run (a logger's progress bars, say); ``hooks`` re-resolve
        themselves (kit's plugin manager tells them)."""
        self.pm.register(plugin, name=name)


    # -- the run --------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Run the chosen mode; returns ``trainer.results``."""
        state_cls = self.registry.load("kit.states", self.mode, key="--mode")
        if not (isinstance(state_cls, type) and issubclass(state_cls, State)):
            raise KitError(f"mode {self.mode!r} is not a kit.State subclass: {state_cls!r}")
        self._ensure_backend()  # fail on a bad name before any run directory exists
        self.trains = state_cls.trains
        return state_cls(self).run()

    def _build_task(self) -> Task:
        """The configured task with its options, and the loss it uses."""
        cfg, base = self.config.task, self.config.base_dir
        _, task_cls = load_named(self.registry, "kit.tasks", cfg.name, key="task.name", base_dir=base)
        if not (isinstance(task_cls, type) and issubclass(task_cls, Task)):
            raise ConfigError(f"{cfg.name} is not a kit.Task subclass", key="task.name")
        task: Task = instantiate(task_cls, cfg.options, label=f"task {cfg.name}", where="task")
        loss = cfg.loss or task.default_loss
        task.loss = components.resolve_loss(loss, base) if loss else None
        return task

    def _ensure_backend(self) -> Backend:
        if self.backend is None:
            choice = self.config.backend
            backend_cls = self.registry.load("kit.backends", choice.name, key="backend")
            if not (isinstance(backend_cls, type) and issubclass(backend_cls, Backend)):
                raise KitError(f"backend {choice.name!r} is not a kit.Backend: {backend_cls!r}")
            self.backend = instantiate(backend_cls, choice.options, label=f"backend.{choice.name}")
        return self.backend

    def launch(self) -> None:
        """Join the other ranks (the backend's launch); loggers then stay on global rank zero."""
        self._ensure_backend().launch(self)
        self.keep_loggers_on_rank_zero()

    def keep_loggers_on_rank_zero(self) -> None:
        """Unregister the configured loggers on every other rank: decided once, here, so no
        logger needs a rank guard."""
        if not self.is_global_zero:
            for name, plugin in list(self.pm.list_name_plugin()):
                if name in self._logger_names and plugin is not None:
                    self.pm.unregister(plugin)

    def build(self) -> None:
        """Seed, then build model, data, loss, metrics, optimizer and scheduler, and set up."""
        cfg = self.config
        base = cfg.base_dir
        train = cfg.training
        if train.precision == "16" and not train.device.startswith("cuda") and not (
            train.device == "auto" and torch.cuda.is_available()
        ):
            raise ConfigError("fp16 needs CUDA", key="training.precision", hint="use bf16 on CPU")
        if cfg.model is None or cfg.data is None:  # a kit.Session's config: someone else's loop
            raise ConfigError("required to train, and this config has none",
                              key="model" if cfg.model is None else "data", hint="add it")
        seed_everything(train.seed, deterministic=train.deterministic)
        self.checkpoint_format = self._format_named(cfg.checkpoint.format)
        backend = self._ensure_backend()
        self.device = backend.device(train.device)
        factory = resolve_target(cfg.model.target, key="model.target", base_dir=base)
        model = components.call_factory(factory, cfg.model.kwargs, key="model")
        if not isinstance(model, torch.nn.Module):
            raise ConfigError(f"the model factory returned {type(model).__name__}, not a torch.nn.Module",
                              key="model.target")
        self.model = model
        if backend.world_size > 1:  # built alike on every rank; from here each rank draws its own
            seed_everything(train.seed + backend.rank, deterministic=train.deterministic)
        data_factory = resolve_target(cfg.data.target, key="data.target", base_dir=base)
        data = components.call_factory(data_factory, cfg.data.kwargs, key="data")
        pin = cfg.data.pin_memory if cfg.data.pin_memory is not None else self.device.type == "cuda"
        self.train_loader, self.val_loader, self.test_loader = build_loaders(
            data, cfg.data, inference_batch_size=train.inference_batch_size, seed=train.seed,
            pin_memory=pin, sampler=backend.sampler, world_size=backend.world_size,
        )
        self.task = self._build_task()
        entries = cfg.task.metrics if cfg.task.metrics is not None else self.task.default_metrics
        self.metrics = metric_specs(entries, base_dir=base)
        self.task.check(len(self.metrics))
        self.model.to(self.device)  # before the optimizer: its state follows the parameters
        optimizer = components.build_optimizer(cfg.optimizer, self.model, base)
        self.optimizer = backend.prepare_optimizer(optimizer)
        self.scheduler = components.build_scheduler(cfg.scheduler, self.optimizer, base)
        backend.setup(self)
        self.loop = backend.loop(self) or Loop(self, backend)

    def new_metrics(self, classes: int) -> list[torchmetrics.Metric]:
        """Fresh ``task.metrics`` on the device, in order (``spec.name`` names each); a multiclass
        one is sized by ``classes``, the logits' last dimension (0: the task's are not logits)."""
        assert self.task is not None
        return [build_metric(spec, classes=classes if self.task.classification else 0,
                             classification=self.task.classification).to(self.device)
                for spec in self.metrics]

    def fit(self) -> None:
        """Train from where the run stands to ``training.iterations``, validating and saving."""
        assert self.loop is not None, "build() first"
        self.loop.fit()

    def validate(self) -> dict[str, float]:
        """One validation pass at the current iteration; returns (and records) its results."""
        assert self.loop is not None, "build() first"
        return self.loop.validate(self.iteration)

    def test(self) -> dict[str, float]:
        """One test pass; returns (and records) its results."""
        assert self.loop is not None, "build() first"
        return self.loop.test()

    @contextlib.contextmanager
    def session(self, *, mode: str, summary: str | None = "summary.json") -> Iterator[None]:
        """Bracket a run with ``kit_train_begin``/``kit_train_end``, whatever happens inside.

        Failures fire ``kit_exception``; a stop signal or Ctrl-C fires ``kit_interrupt``,
        both before the end hook. ``summary`` (in the run directory) is written last, always
        when the disk allows; a full disk anywhere becomes one :class:`DiskFullError`.
        """
        self.status = "running"
        self._started = time.time()
        self._arm_periodic_saves()
        try:
            try:
                if self.hooks.kit_train_begin is not None:
                    self.hooks.kit_train_begin(trainer=self)
                if self.stop_signal is not None:  # it came during start-up: stop before any step
                    self.interrupt()
                yield
            except KeyboardInterrupt as exc:
                self.status = "interrupted"
                self._aborted = isinstance(exc, RunInterrupted) and exc.aborted
                signum = exc.signum if isinstance(exc, RunInterrupted) else int(signal.SIGINT)
                with self._hook_may_fail("kit_interrupt"):
                    if self.hooks.kit_interrupt is not None:
                        self.hooks.kit_interrupt(trainer=self, signum=signum)
                raise
            except BaseException as exc:
                self.status = "failed"
                with self._hook_may_fail("kit_exception"):
                    if self.hooks.kit_exception is not None:
                        self.hooks.kit_exception(trainer=self, error=exc)
                raise
            else:
                self.status = "finished"
            finally:
                with self._hook_may_fail("kit_train_end"):
                    if self.hooks.kit_train_end is not None:
                        self.hooks.kit_train_end(trainer=self)
        except Exception as exc:
            self.status = "failed"
            self._finish(mode, summary, failed=True)
            full = disk_full(exc)
            if full is not None and (isinstance(exc, DiskFullError) or not isinstance(exc, KitError)):
                path = exc.path if isinstance(exc, DiskFullError) else full.filename
                raise DiskFullError(path or "a checkpoint or log file", training=self.trains,
                                    last_checkpoint=self.last_checkpoint) from exc
            raise
        except BaseException:
            self._finish(mode, summary, failed=True)
            raise
        self._finish(mode, summary, failed=False)

    def _finish(self, mode: str, summary: str | None, *, failed: bool) -> None:
        """Write the summary; on a failed run a full disk must not hide the first error."""
        if summary is None:
            return
        try:
            self._write_summary(mode, summary)
        except OSError as exc:
            if not failed:
                if disk_full(exc) is not None:
                    raise DiskFullError(summary, last_checkpoint=self.last_checkpoint,
                                        training=self.trains) from exc
                raise
            if disk_full(exc) is None:  # a full disk is the run's error already: said once
                say(f"could not write {summary}: {exc.strerror or exc}")

    @contextlib.contextmanager
    def stop_signals(self) -> Iterator[None]:
        """Turn stop signals into a clean stop for the whole run, start-up included.

        Before the run directory exists a signal stops at once (nothing is written yet).
        After, it sets ``stop_signal``: the loops finish the current step, save and stop;
        a second signal aborts at once (the last committed checkpoint stays good). Main
        thread only.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        first_at = 0.0

        def on_signal(signum: int, frame: object) -> None:
            nonlocal first_at
            if self.run_dir is None:  # still building: nothing is written, so nothing to save
                raise RunInterrupted(signum)
            if self.stop_signal is not None:
                if self.world_size > 1 and time.monotonic() - first_at < SAME_STOP_S:
                    return  # the launcher forwarding what the whole job got: the same stop
                raise RunInterrupted(signum, aborted=True)  # the second one: stop now
            self.stop_signal, first_at = signum, time.monotonic()
            say(f"{signal.Signals(signum).name} received: finishing the current step and saving "
                "a checkpoint (send it again to abort at once)")

        # a signal the parent set to be ignored (a background job's SIGINT) stays ignored
        previous = {s: signal.signal(s, on_signal) for s in STOP_SIGNALS
                    if signal.getsignal(s) is not signal.SIG_IGN}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def teardown(self) -> None:
        """Release what the run holds outside this process: the loaders' worker processes,
        then the backend's process group."""
        try:
            shutdown_workers(loader for loader in (self.train_loader, self.val_loader, self.test_loader)
                             if loader is not None)
            if self.world_size > 1 and (self.status == "finished" or (
                    self.status == "interrupted" and not self._aborted)):
                # every rank ended alike, at the same step: none leaves (and has the launcher
                # stop the others) before rank zero has written the summary
                assert self.backend is not None
                with contextlib.suppress(RuntimeError):  # a rank that is gone already
                    self.backend.barrier()
        finally:
            if isinstance(self.loop, Loop):
                self.loop.release()
            if self.backend is not None:
                self.backend.teardown()

    def interrupt(self, *, save: bool = True) -> None:
        """Called by the loops when ``stop_signal`` is set: save (when training and ``save``: a
        loop that cannot checkpoint where it stopped keeps its last checkpoint), then stop."""
        assert self.stop_signal is not None
        path = self.save_checkpoint() if self.trains and save else None
        raise RunInterrupted(self.stop_signal, str(path) if path else None)

    @contextlib.contextmanager
    def _hook_may_fail(self, name: str) -> Iterator[None]:
        """Around a hook fired on the way out: a failing plugin must not hide the original error."""
        try:
            yield
        except Exception as exc:
            if self.status == "finished":
                raise
            if disk_full(exc) is None:  # a full disk is reported once, by the run's own error
                say(f"{name} hook failed: {type(exc).__name__}: {exc}")

    def _write_summary(self, mode: str, name: str) -> None:
        if self.run_dir is None or not self.is_global_zero:
            return
        write_json(self.run_dir / name, {
            "status": self.status,
            "mode": mode,
            "backend": self.config.backend.name,
            "world_size": self.world_size,
            "experiment": self.config.experiment,
            "run_id": self.run_dir.name,
            "iteration": self.iteration,
            "iterations": self.config.training.iterations,
            "global_step": self.global_step,
            "best": self.best,
            "duration_s": round(time.time() - self._started, 3),
            "results": self.results,
            "failed_loggers": self.failed_plugins,
            "kit_version": __version__,
        })

    # -- metrics ----------------------------------------------------------------------

    def record(
        self, name: str, value: Any, *, kind: MetricKind = "scalar", split: Split | None = None,
        step: int | None = None,
    ) -> None:
        """Record a value: fires ``kit_metric_recorded`` (tensors become Python numbers here).

        ``step`` defaults to ``global_step``; a hook that measures the optimizer step under
        way (``kit_before_optimizer_step``, before it is counted) passes ``global_step + 1``.
        With several ranks, values are recorded once, by global rank zero; the loop's own
        (losses, validation and test metrics) are reduced over every rank first.
        """
        hook = self.hooks.kit_metric_recorded if self.is_global_zero else None
        monitored = name == self.config.checkpoint.monitor
        if hook is None and not monitored:
            return
        if isinstance(value, torch.Tensor):
            value = value.detach()
            value = value.item() if value.numel() == 1 else value.cpu().tolist()
        if monitored:  # the step a checkpoint of it will carry
            self._monitored = (float(value), self.global_step if step is None else step)
        if hook is None:
            return
        hook(trainer=self, record=MetricRecord(
            name=name, value=value, kind=kind, split=split,
            step=self.global_step if step is None else step,
            iteration=self.iteration, wall_time=time.time(),
        ))

    def record_results(self, split: Split, results: dict[str, float]) -> None:
        self.results[split] = dict(results)
        for key, value in results.items():
            self.record(f"{split}/{key}", value, split=split)

    # -- checkpoints ------------------------------------------------------------------

    def progress(self) -> Progress:
        """Where the run stands, as plain data (a checkpoint's ``progress``)."""
        self.state.world_size = self.world_size
        return self.state.to_dict()

    def state_dict(self) -> Checkpoint:
        """Everything needed to resume, in types ``torch.load(weights_only=True)`` accepts.

        A collective with several ranks (every rank calls it): each rank's RNG state is
        gathered, so each gets its own back on resume.
        """
        assert self.model is not None and self.optimizer is not None and self.backend is not None
        assert self.loop is not None
        rng = rng_state()
        checkpoint: Checkpoint = {
            "kit": {"version": __version__, "format": 3},
            "progress": self.progress(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "backend": {"name": self.config.backend.name, "state": self.backend.state_dict()},
            "loop": self.loop.state_dict(),
            "rng": rng,
            "config": self.config.resolved(),
            "results": self.results,
            "plugins": {},
        }
        if self.world_size > 1:
            checkpoint["rng_ranks"] = self.backend.all_gather_object(rng)
        return checkpoint

    def load_state_dict(self, checkpoint: dict[str, Any], *, resume: bool = True) -> None:
        """Restore a checkpoint; ``resume`` restores everything for training, else the model only.

        Fires ``kit_checkpoint_load`` last, so plugins see kit's state already restored.
        """
        assert self.model is not None and self.optimizer is not None and self.backend is not None
        assert self.loop is not None
        progress: Progress = checkpoint["progress"]
        if resume:
            self._check_world_size(int(progress.get("world_size", 1)))
        try:
            self.model.load_state_dict(checkpoint["model"])
            self.state.load(progress, resume=resume)
            if resume:
                self.optimizer.load_state_dict(checkpoint["optimizer"])
                if self.scheduler is not None and checkpoint.get("scheduler") is not None:
                    self.scheduler.load_state_dict(checkpoint["scheduler"])
                backend = checkpoint.get("backend") or {}
                if backend.get("name") == self.config.backend.name:
                    self.backend.load_state_dict(backend.get("state") or {})
                self.loop.load_state_dict(checkpoint.get("loop") or {})
                self.results = dict(checkpoint.get("results") or {})
                ranks = checkpoint.get("rng_ranks") or []
                set_rng_state(ranks[self.rank] if self.rank < len(ranks) else checkpoint["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"the checkpoint does not fit this model or run: {first_line(exc, typed=True)}",
                hint="check model.target and model.kwargs against the run's config.yaml") from exc
        self._saved_at = self.state.key()
        if self.hooks.kit_checkpoint_load is not None:
            self.hooks.kit_checkpoint_load(trainer=self, checkpoint=checkpoint)

    def _check_world_size(self, saved: int) -> None:
        """An exact resume needs the world size the checkpoint was taken with."""
        if saved == self.world_size:
            return
        if not self.allow_config_change:
            raise ConfigError(
                f"the checkpoint was taken with {saved} process{'es' * (saved != 1)} and this run has "
                f"{self.world_size}: resuming would not be exact", key="--nproc-per-node",
                hint=f"launch {saved} processes, or pass --allow-config-change (the resumed run will "
                     "not match an uninterrupted one bitwise)")
        warn(f"resuming a {saved}-process checkpoint with {self.world_size} processes "
             "(--allow-config-change): the data order and random draws will differ from an "
             "uninterrupted run")

    @property
    def checkpoints(self) -> CheckpointStore | None:
        """This run's checkpoints; ``None`` until a run directory and a format exist."""
        if self.run_dir is None or self.checkpoint_format is None:
            return None
        folder = self.run_dir / "checkpoints"
        if self._store is None or self._store.folder != folder:
            cfg = self.config.checkpoint
            self._store = CheckpointStore(
                folder, self.checkpoint_format, name=cfg.format,
                retention=Retention(keep_last=cfg.keep_last, keep_best=cfg.keep_best,
                                    monitor=cfg.monitor, mode=cfg.mode),
                resolve=self._format_named,
            )
        return self._store

    def read_checkpoint(self, path: Path) -> dict[str, Any]:
        """Load any committed checkpoint (a folder, or a file in it), verified, in whatever
        registered format its manifest names; for modes that start from another run."""
        name = self.config.checkpoint.format
        store = self.checkpoints or CheckpointStore(
            path.parent, self._format_named(name), name=name, resolve=self._format_named)
        return store.load(path, check=check_kit_checkpoint)

    def _format_named(self, name: str) -> CheckpointFormat:
        format_cls: type[CheckpointFormat] = self.registry.load("kit.checkpoint_formats", name,
                                                                    key="checkpoint.format")
        return format_cls()

    def _arm_periodic_saves(self) -> None:
        cfg = self.config.checkpoint
        if cfg.every_n_steps:
            self._next_save_step = (self.global_step // cfg.every_n_steps + 1) * cfg.every_n_steps
        if cfg.every_n_seconds:
            self._next_save_time = time.monotonic() + cfg.every_n_seconds

    def checkpoint_due(self, *, end_of_iteration: bool) -> bool:
        """Whether a checkpoint is due by the step count, or (at an iteration's end) by
        ``save_frequency`` and at the last iteration: the same answer on every rank."""
        if self.global_step >= self._next_save_step:
            return True
        if not end_of_iteration:
            return False
        train = self.config.training
        return self.iteration % train.save_frequency == 0 or self.iteration >= train.iterations

    def checkpoint_due_by_time(self) -> bool:
        """Whether ``checkpoint.every_n_seconds`` have passed: each rank's own clock, which
        is why the loop makes the ranks agree on it."""
        return time.monotonic() >= self._next_save_time

    def save_checkpoint(self) -> Path | None:
        """Let plugins add their state, then commit a checkpoint; a state already saved is not
        saved twice (its path is returned).

        With several ranks every rank calls it at the same step: each adds its RNG state,
        global rank zero alone writes, and every rank waits for the commit at a barrier, so
        no rank runs ahead of the last checkpoint.
        """
        store = self.checkpoints
        if store is None:
            return None
        key = self.state.key()
        if key == self._saved_at:
            return self._saved_path
        monitor = self.config.checkpoint.monitor
        metrics: dict[str, float] = {}
        if monitor and self._monitored is not None and self._monitored[1] == self.global_step:
            metrics[monitor] = value = self._monitored[0]  # measured on exactly these weights
            mode = self.config.checkpoint.mode
            best = self.best["value"] if self.best else None
            if best is None or (value < best if mode == "min" else value > best):
                self.state.best = {"name": monitor, "mode": mode, "value": value, "step": self.global_step}
        # the same dict, open: plugins may add to it and formats write whatever it holds
        checkpoint = cast(dict[str, Any], self.state_dict())
        if self.hooks.kit_checkpoint_save is not None:
            self.hooks.kit_checkpoint_save(trainer=self, checkpoint=checkpoint)
        if self.world_size == 1:
            path = store.save(checkpoint, step=self.global_step, progress=self.progress(), metrics=metrics)
        else:
            path = self._save_on_rank_zero(store, checkpoint, metrics)
        self._saved_at, self._saved_path = key, path
        self.last_checkpoint = path
        self._arm_periodic_saves()
        return path


    def _save_on_rank_zero(self, store: CheckpointStore, checkpoint: dict[str, Any],
                           metrics: dict[str, float]) -> Path:
        """Rank zero commits; every rank waits for the outcome (the broadcast is the barrier),
        so no rank runs ahead of its checkpoint, and a failed commit stops every rank."""
        def save() -> str:
            return str(store.save(checkpoint, step=self.global_step, progress=self.progress(),
                                  metrics=metrics))

        return Path(self.on_rank_zero(save, "save a checkpoint"))

    def on_rank_zero(self, fn: Callable[[], T], what: str) -> T:
        """Run ``fn`` on global rank zero only and give every rank its result (plain data).

        When it raises, rank zero raises it and every other rank raises a KitError with the
        same exit code that points at rank zero's message, so no rank waits for a
        collective that will never come. In one process, just ``fn()``.
        """
        if self.world_size == 1:
            return fn()
        assert self.backend is not None
        outcome: tuple[bool, Any] = (False, None)
        error: BaseException | None = None
        if self.is_global_zero:
            try:
                outcome = (True, fn())
            except BaseException as exc:  # told to the other ranks, then raised here
                error = exc
                outcome = (False, (f"{type(exc).__name__}: {exc}",
                                   exc.exit_code if isinstance(exc, KitError) else 1))
        done, value = self.backend.broadcast_object(outcome)
        if error is not None:
            raise error
        if not done:
            message, code = value
            failure = KitError(f"rank 0 could not {what} ({message})")
            failure.exit_code = code  # type: ignore[misc]  # the same as rank 0's
            raise failure
        return cast(T, value)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}", key="training.device",
                          hint="use auto, cpu, cuda, cuda:N or mps") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device {name!r} is not one kit trains on", key="training.device",
                          hint="use auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("CUDA is not available here", key="training.device",
                          hint="use auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"there is no {name} here ({torch.cuda.device_count()} CUDA devices)",
                          key="training.device", hint="use cuda or a smaller index")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) is not None
                                     and torch.backends.mps.is_available()):
        raise ConfigError("MPS is not available here", key="training.device", hint="use auto or cpu")
    return device

