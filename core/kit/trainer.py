"""The trainer: the context of the State pattern and what every hook receives.

:class:`Trainer` chooses a state (mode) and a backend by name from their entry points,
builds the components the config names, and holds the run's live state that plugins
read: ``iteration``, ``global_step``, ``should_stop``, ``status``, ``results``, …
"""

from __future__ import annotations

import contextlib
import random
import signal
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from kit import components
from kit._version import __version__
from kit.checkpoint import CheckpointStore
from kit.config import KitConfig
from kit.data import build_loaders
from kit.errors import ConfigError, KitError
from kit.interfaces import Backend, CheckpointFormat, State
from kit.metrics import Metric, MetricKind, MetricRecord, Split
from kit.plugins import HookRelay, Isolated, PluginChoice, Registry, get_plugin_manager
from kit.rundir import write_json
from kit.seed import seed_everything
from kit.targets import resolve_target

__all__ = ["Trainer"]


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
    ) -> None:
        if backend is not None:
            config = config.model_copy(update={"backend": backend})
        self.config = config
        self.mode = mode
        self.registry = registry if registry is not None else Registry.from_environment()
        self._extra_plugins = tuple(plugins)
        self._autoload = autoload
        self._blocked = tuple(blocked)

        # Live state, read (and partly written) by plugins.
        self.iteration = 0
        """The current (or last finished) iteration, counting from 1."""
        self.global_step = 0
        """Optimizer steps taken so far."""
        self.epoch = 0
        """Passes started over the training loader, counting from 0."""
        self.batch_idx = 0
        self.should_stop = False
        """Set by a hook to end training after the current step."""
        self.status = "pending"
        """``running``, then ``finished``, ``failed`` or ``interrupted``."""
        self.results: dict[str, Any] = {}
        """Final results by split: ``{"val": {…}, "test": {…}}``."""
        self.run_dir: Path | None = None
        self.device = torch.device("cpu")
        self.rank = 0
        """This process's global rank; loggers write only where ``is_global_zero``."""
        self.world_size = 1

        self.model: torch.nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self.train_loader: torch.utils.data.DataLoader[Any] | None = None
        self.val_loader: torch.utils.data.DataLoader[Any] | None = None
        self.test_loader: torch.utils.data.DataLoader[Any] | None = None
        self.loss_fn: components.LossFn | None = None
        self.metric_types: list[type[Metric]] = []
        self.checkpoint_format: CheckpointFormat | None = None
        self.backend: Backend | None = None

        self.pm = get_plugin_manager(
            *self._extra_plugins,
            choices=self._choices(),
            registry=self.registry,
            autoload=autoload,
            blocked=self._blocked,
        )
        self.hooks = HookRelay(self.pm)
        self._started = 0.0

    # -- plugins --------------------------------------------------------------------

    def _choices(self) -> list[PluginChoice]:
        cfg = self.config
        return [
            *(PluginChoice("kit.loggers", p.name, p.options, f"loggers[{i}]", isolate=not p.strict)
              for i, p in enumerate(cfg.loggers)),
            *(PluginChoice("kit.plugins", p.name, p.options, f"plugins[{i}]")
              for i, p in enumerate(cfg.plugins)),
        ]

    @property
    def is_global_zero(self) -> bool:
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
        flat: dict[str, Any] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):  # an empty one adds nothing
                for key, item in value.items():
                    walk(f"{prefix}.{key}" if prefix else str(key), item)
            elif isinstance(value, list):
                flat[prefix] = ", ".join(map(str, value)) if all(
                    not isinstance(v, dict | list) for v in value) else str(value)
            else:
                flat[prefix] = value

        walk("", self.config.resolved())
        return flat

    def add_plugin(self, plugin: object, name: str | None = None) -> None:
        """Register a plugin mid-run (a logger's progress bars, say) and re-resolve hooks."""
        self.pm.register(plugin, name=name)
        self.hooks.refresh()

    def _load(self, group: str, name: str, key: str) -> Any:
        try:
            spec = self.registry.find(group, name)
        except KitError as exc:
            raise ConfigError(exc.message, key=key, hint=exc.hint) from None
        return spec.load()

    # -- the run --------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Run the chosen mode; returns ``trainer.results``."""
        state_cls = self._load("kit.states", self.mode, "--mode")
        if not (isinstance(state_cls, type) and issubclass(state_cls, State)):
            raise KitError(f"mode {self.mode!r} is not a kit.State subclass: {state_cls!r}")
        self._ensure_backend()  # fail on a bad name before any run directory exists
        return state_cls(self).run()

    def _ensure_backend(self) -> Backend:
        if self.backend is None:
            backend_cls = self._load("kit.backends", self.config.backend, "backend")
            if not (isinstance(backend_cls, type) and issubclass(backend_cls, Backend)):
                raise KitError(f"backend {self.config.backend!r} is not a kit.Backend: {backend_cls!r}")
            self.backend = backend_cls()
        return self.backend

    def build(self) -> None:
        """Seed, then build model, data, loss, metrics, optimizer and scheduler, and set up."""
        cfg = self.config
        base = cfg.base_dir
        train = cfg.training
        if train.precision == "16" and not train.device.startswith("cuda") and not (
            train.device == "auto" and torch.cuda.is_available()
        ):
            raise ConfigError("fp16 needs CUDA", key="training.precision", hint="use bf16 on CPU")
        seed_everything(train.seed, deterministic=train.deterministic)
        fmt_cls = self._load("kit.checkpoint_formats", cfg.checkpoint.format, "checkpoint.format")
        self.checkpoint_format = fmt_cls()
        self.device = resolve_device(train.device)
        factory = resolve_target(cfg.model.target, key="model.target", base_dir=base)
        model = components.call_factory(factory, cfg.model.kwargs, key="model")
        if not isinstance(model, torch.nn.Module):
            raise ConfigError(f"the model factory returned {type(model).__name__}, not a torch.nn.Module",
                              key="model.target")
        self.model = model
        data_factory = resolve_target(cfg.data.target, key="data.target", base_dir=base)
        data = components.call_factory(data_factory, cfg.data.kwargs, key="data")
        pin = cfg.data.pin_memory if cfg.data.pin_memory is not None else self.device.type == "cuda"
        self.train_loader, self.val_loader, self.test_loader = build_loaders(
            data, cfg.data, inference_batch_size=train.inference_batch_size, seed=train.seed,
            pin_memory=pin,
        )
        self.loss_fn = components.resolve_loss(cfg.task, base)
        self.metric_types = components.resolve_metrics(cfg.task, base)
        self.model.to(self.device)  # before the optimizer: its state follows the parameters
        self.optimizer = components.build_optimizer(cfg.optimizer, self.model, base)
        self.scheduler = components.build_scheduler(cfg.scheduler, self.optimizer, base)
        self._ensure_backend().setup(self)

    @contextlib.contextmanager
    def session(self, *, mode: str) -> Iterator[None]:
        """Bracket a run with ``kit_train_begin``/``kit_train_end``, whatever happens inside.

        Failures fire ``kit_exception`` and Ctrl-C fires ``kit_interrupt`` before the
        end hook; the run's ``summary.json`` is written last, always.
        """
        self.status = "running"
        self._started = time.time()
        self.hooks.call("kit_train_begin", trainer=self)
        try:
            yield
        except KeyboardInterrupt:
            self.status = "interrupted"
            self._safe_call("kit_interrupt", trainer=self, signum=int(signal.SIGINT))
            raise
        except BaseException as exc:
            self.status = "failed"
            self._safe_call("kit_exception", trainer=self, error=exc)
            raise
        else:
            self.status = "finished"
        finally:
            self._safe_call("kit_train_end", trainer=self)
            self._write_summary(mode)

    def _safe_call(self, name: str, **kwargs: Any) -> None:
        """Fire a hook on the way out; a failing plugin must not hide the original error."""
        try:
            self.hooks.call(name, **kwargs)
        except Exception as exc:
            if self.status != "finished":
                print(f"kit: {name} hook failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            else:
                raise

    def _write_summary(self, mode: str) -> None:
        if self.run_dir is None:
            return
        write_json(self.run_dir / "summary.json", {
            "status": self.status,
            "mode": mode,
            "backend": self.config.backend,
            "experiment": self.config.experiment,
            "run_id": self.run_dir.name,
            "iteration": self.iteration,
            "iterations": self.config.training.iterations,
            "global_step": self.global_step,
            "duration_s": round(time.time() - self._started, 3),
            "results": self.results,
            "failed_loggers": self.failed_plugins,
            "kit_version": __version__,
        })

    # -- metrics ----------------------------------------------------------------------

    def record(
        self, name: str, value: Any, *, kind: MetricKind = "scalar", split: Split | None = None
    ) -> None:
        """Record a value: fires ``kit_metric_recorded`` (tensors become Python numbers here)."""
        hook = self.hooks.kit_metric_recorded
        if hook is None:
            return
        if isinstance(value, torch.Tensor):
            value = value.item() if value.numel() == 1 else value.detach().cpu().tolist()
        hook(trainer=self, record=MetricRecord(
            name=name, value=value, kind=kind, split=split, step=self.global_step,
            iteration=self.iteration, wall_time=time.time(),
        ))

    def record_results(self, split: Split, results: dict[str, float]) -> None:
        self.results[split] = dict(results)
        for key, value in results.items():
            self.record(f"{split}/{key}", value, split=split)

    # -- checkpoints ------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume, in types ``torch.load(weights_only=True)`` accepts."""
        assert self.model is not None and self.optimizer is not None
        return {
            "kit": {"version": __version__, "format": 1},
            "progress": {"iteration": self.iteration, "global_step": self.global_step,
                         "epoch": self.epoch},
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "rng": _rng_state(),
            "config": self.config.resolved(),
            "results": self.results,
            "plugins": {},
        }

    @property
    def checkpoints(self) -> CheckpointStore | None:
        """This run's checkpoints; ``None`` until a run directory and a format exist."""
        if self.run_dir is None or self.checkpoint_format is None:
            return None
        return CheckpointStore(self.run_dir / "checkpoints", self.checkpoint_format,
                               keep_last=self.config.checkpoint.keep_last)

    def save_checkpoint(self) -> Path | None:
        """Let plugins add their state, then write a checkpoint atomically."""
        store = self.checkpoints
        if store is None:
            return None
        checkpoint = self.state_dict()
        self.hooks.call("kit_checkpoint_save", trainer=self, checkpoint=checkpoint)
        return store.save(checkpoint, self.iteration)


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
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("CUDA is not available here", key="training.device",
                          hint="use auto or cpu")
    return device


def _rng_state() -> dict[str, Any]:
    version, state, gauss = random.getstate()
    rng: dict[str, Any] = {
        "python": [version, list(state), gauss],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    try:
        import numpy as np
    except ImportError:
        return rng
    np_state: Any = np.random.get_state()
    name, keys, pos, has_gauss, cached = np_state
    rng["numpy"] = [name, torch.from_numpy(keys.astype("int64")), pos, has_gauss, cached]
    return rng

