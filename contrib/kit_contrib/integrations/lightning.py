"""kit inside Lightning: :class:`KitCallback` fires kit's hooks from Lightning's ``Trainer``, and
:class:`KitLightningModule` is a ``LightningModule`` around a kit model.

``KitCallback`` is added to a ``lightning.pytorch.Trainer`` like any callback; every kit
logger and hook plugin then runs unchanged inside that Trainer, through a
:class:`kit.Session` (the mapping of Lightning's events to kit's hooks is the table in
``docs/embedding.md``).

The rest of this docstring is about loading a ``lightning``-format checkpoint.

A checkpoint is data, never code. Its ``kit_model`` hyperparameter (the model's kit
target and keyword arguments) is a record for people and for the caller's allow-list;
nothing here imports a module, or puts a folder on ``sys.path``, because a file named
it. The caller chooses what builds the model::

    KitLightningModule.load_from_checkpoint(path, model=my_module)
    KitLightningModule.load_from_checkpoint(path, target="digits:build_model", base_dir="examples")
    KitLightningModule.load_from_checkpoint(path, allowed_targets=["digits:build_model"],
                                            base_dir="examples")

The last two call the factory with the checkpoint's recorded keyword arguments. Weights
live under ``model.``, as Lightning saves a module stored as ``self.model``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import lightning as L
import torch

import kit

__all__ = ["KitCallback", "KitLightningModule"]

_HINT = ("pass model=<torch.nn.Module>, target='module:factory' (with base_dir=) or "
         "allowed_targets=['module:factory'] to KitLightningModule.load_from_checkpoint")


@dataclass(frozen=True)
class _Choice:
    """The caller's choice of factory, made only by this module's classmethods.

    Lightning merges a checkpoint's hyperparameters into ``__init__``'s arguments, so a
    file can set any argument to plain data, but never to this object: whatever it
    records, the caller's ``target`` or ``allowed_targets`` decides what is imported.
    """

    where: str
    target: str | None = None
    base_dir: Path | None = None
    allowed: frozenset[str] = frozenset()

    def pick(self, recorded: str | None) -> str:
        """The target to import: the caller's, or the recorded one if the caller allows it."""
        if self.target is not None:
            return self.target
        if recorded is not None and recorded in self.allowed:
            return recorded
        named = f"names model target {recorded!r}" if recorded else "names no model target"
        refused = " (not in allowed_targets)" if self.allowed and recorded else ""
        raise kit.CheckpointError(f"{self.where} {named}{refused}; kit does not import modules "
                                  "named by a checkpoint", hint=_HINT)


def _recorded(kit_model: object, where: str) -> tuple[str | None, dict[str, Any]]:
    """The target and keyword arguments a ``kit_model`` record holds, checked as untrusted data."""
    if kit_model is None:
        return None, {}
    if isinstance(kit_model, Mapping):
        target, kwargs = kit_model.get("target"), kit_model.get("kwargs") or {}
        if (isinstance(target, str | None) and isinstance(kwargs, dict)
                and all(isinstance(key, str) for key in kwargs)):
            return target, dict(kwargs)
    raise kit.CheckpointError(f"{where}: the kit_model hyperparameter is not "
                              "{'target': str, 'kwargs': {str: value}}",
                              hint="pass kit_model= to replace it, or model= to skip it")


def _build(target: str, kwargs: dict[str, Any], base_dir: Path | None) -> torch.nn.Module:
    """Call the caller-chosen factory with the recorded keyword arguments."""
    factory = kit.resolve_target(target, key="model.target", base_dir=base_dir)
    model = factory(**kwargs)
    if not isinstance(model, torch.nn.Module):
        raise kit.ConfigError(f"{target} returned {type(model).__name__}, not a torch.nn.Module",
                              key="model.target")
    return model


class KitLightningModule(L.LightningModule):
    """Wraps a ``torch.nn.Module``; records its kit target under the ``kit_model`` hparam.

    ``__init__`` never imports: ``model`` is a module the caller built (or a choice made
    by :meth:`from_target` / :meth:`load_from_checkpoint`), and ``kit_model`` is data.
    """

    def __init__(self, model: torch.nn.Module | _Choice | None = None,
                 kit_model: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        where = model.where if isinstance(model, _Choice) else "KitLightningModule(kit_model=...)"
        target, kwargs = _recorded(kit_model, where)
        if model is None:
            model = _Choice(where)  # allows nothing: refuses, naming the recorded target
        if isinstance(model, _Choice):
            target = model.pick(target)
            model = _build(target, kwargs, model.base_dir)
        elif not isinstance(model, torch.nn.Module):
            raise kit.ConfigError(f"model must be a torch.nn.Module, not {type(model).__name__}",
                                  key="model", hint=_HINT)
        self.save_hyperparameters({"kit_model": {"target": target, "kwargs": kwargs}})
        self.model: torch.nn.Module = model

    @classmethod
    def from_target(cls, target: str, kwargs: Mapping[str, Any] | None = None,
                    base_dir: str | Path | None = None) -> KitLightningModule:
        """Build the model with the kit target ``target``, which the caller chose."""
        choice = _Choice("KitLightningModule.from_target", target,
                         Path(base_dir) if base_dir else None)
        return cls(choice, {"target": target, "kwargs": dict(kwargs or {})})

    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: str | Path | IO[bytes],
        map_location: Any = None,
        hparams_file: str | Path | None = None,
        strict: bool | None = None,
        weights_only: bool | None = True,
        *,
        model: torch.nn.Module | None = None,
        target: str | None = None,
        base_dir: str | Path | None = None,
        allowed_targets: Iterable[str] | None = None,
        **kwargs: Any,
    ) -> KitLightningModule:
        """Lightning's loader, with the model chosen by the caller and never by the file.

        ``model`` is used as is; else ``target`` (or the recorded target, if exactly in
        ``allowed_targets``) is imported from ``base_dir`` and called with the recorded
        keyword arguments. ``model`` and ``_instantiator`` are always passed, so the
        file's values for them never reach ``__init__`` or Lightning's instantiator.
        """
        where = str(checkpoint_path) if isinstance(checkpoint_path, str | Path) else "the checkpoint"
        allowed = [allowed_targets] if isinstance(allowed_targets, str) else allowed_targets or []
        choice = model if model is not None else _Choice(
            where, target, Path(base_dir) if base_dir else None, frozenset(allowed))
        return super().load_from_checkpoint(checkpoint_path, map_location, hparams_file, strict,
                                            weights_only, model=choice, _instantiator=None,
                                            **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)


# -- kit's hooks from Lightning's Trainer ---------------------------------------------


def _loss(outputs: Any) -> torch.Tensor | None:
    """The loss a ``*_step`` returned: a tensor, ``{"loss": …}`` or a :class:`kit.Evaluation`."""
    if isinstance(outputs, kit.Evaluation):
        return outputs.loss.detach()
    if isinstance(outputs, Mapping):
        outputs = outputs.get("loss")
    return outputs.detach() if isinstance(outputs, torch.Tensor) else None


def _size(batch: Any) -> int:
    """Samples in ``batch``: the first tensor's first dimension."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    items = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, list | tuple) else ()
    return next((_size(item) for item in items if isinstance(item, torch.Tensor | Mapping | list | tuple)), 1)


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {name: float(value) for name, value in metrics.items()
            if isinstance(value, int | float) or (isinstance(value, torch.Tensor) and value.numel() == 1)}


def _split_results(metrics: Mapping[str, float], split: str) -> dict[str, float]:
    """``val/loss`` and ``val_loss`` as ``loss``: a split's results, as kit's hooks take them."""
    return {name[len(split) + 1:]: value for name, value in metrics.items()
            if name.startswith((f"{split}/", f"{split}_"))}


class _Relay(L.pytorch.loggers.Logger):
    """What ``self.log`` sends Lightning's loggers, recorded through the session."""

    def __init__(self, callback: KitCallback) -> None:
        super().__init__()
        self._callback = callback

    @property
    def name(self) -> str:
        return "kit"

    @property
    def version(self) -> str:
        return "0"

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """kit records the session's ``hparams``; Lightning's go to its own loggers."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        session = self._callback.session
        if session is None or not session.is_open:
            return
        for name, value in metrics.items():
            if name != "epoch":  # Lightning's own bookkeeping, not a value the user logged
                session.record(name, value, step=step)


class KitCallback(L.pytorch.Callback):
    """kit's hooks, loggers and plugins inside a ``lightning.pytorch.Trainer``.

    Takes :class:`kit.Session`'s arguments (``experiment``, ``runs_dir``, ``loggers``,
    ``plugins``, ``hparams``, ``autoload``, ``blocked``, …) and opens one session per
    ``fit``, ``validate`` or ``test`` call, closed when that call ends (``kit_exception``
    first, when it failed); or, given ``session=``, an open session whose owner closes it.
    Values logged with ``self.log`` reach kit's loggers through ``kit_metric_recorded``, at
    Lightning's steps and cadence; ``trainer.should_stop`` set by a kit plugin stops
    Lightning; plugins' state rides in Lightning's checkpoints as this callback's state.
    """

    def __init__(self, experiment: str = "default", *, session: kit.Session | None = None,
                 **session_options: Any) -> None:
        super().__init__()
        self._given = session
        self._options = {"experiment": experiment, **session_options}
        self.session: kit.Session | None = session
        """The session kit's hooks fire through (``None`` outside a Trainer call)."""
        self._pending: dict[str, Any] | None = None  # plugin state restored before the session
        self._loss: torch.Tensor | None = None
        self._skipped = 0
        self._closed: kit.Session | None = None
        self._exhausted = -1  # the last epoch whose pass over the data kit was told had ended

    @property
    def state_key(self) -> str:
        return "KitCallback"

    # -- the session ----------------------------------------------------------------

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.loggers is not None and not any(isinstance(lg, _Relay) for lg in trainer.loggers):
            trainer.loggers = [*trainer.loggers, _Relay(self)]
        if self._given is not None:
            return
        options = dict(self._options)
        options.setdefault("iterations", trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0
                           else None)
        self.session = kit.Session(model=pl_module, rank=trainer.global_rank,
                                   world_size=trainer.world_size, **options)
        if self._pending is not None:
            self.session.load_state_dict(self._pending)
            self._pending = None

    def _open(self, trainer: L.Trainer) -> kit.Session | None:
        session = self.session
        if session is not None and not session.is_open and self._given is None:
            session.__enter__()
            session.trainer.optimizer = trainer.optimizers[0] if trainer.optimizers else None
        return session if session is not None and session.is_open else None

    def _fire(self, trainer: L.Trainer, hook: str, **kwargs: Any) -> Any:
        session = self.session
        if session is None or not session.is_open:
            return None
        state = session.trainer.state
        state.global_step = trainer.global_step
        if "iteration" in kwargs:
            state.iteration = kwargs["iteration"]
        if getattr(session.hooks, hook) is None:  # nobody listens: no dispatch, as in kit's loop
            return None
        result = session.fire(hook, **kwargs)
        if session.should_stop:
            trainer.should_stop = True
        return result

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._open(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._open(trainer)
        if trainer.state.fn == "fit" and trainer.is_last_batch:  # the epoch's training pass ended
            self._exhaust(trainer)
        self._fire(trainer, "kit_val_begin", iteration=trainer.current_epoch + 1)

    def _exhaust(self, trainer: L.Trainer) -> None:
        if self._exhausted != trainer.current_epoch:
            self._exhausted = trainer.current_epoch
            self._fire(trainer, "kit_loader_exhausted", iteration=trainer.current_epoch + 1)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._open(trainer)
        self._fire(trainer, "kit_test_begin")

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule,
                     exception: BaseException) -> None:
        self._close(exception)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._close(None)
        if self._given is None and self.session is not None:
            self._closed = self.session  # its plugins' state, for trainer.save_checkpoint after fit
            self.session = None

    def _close(self, error: BaseException | None) -> None:
        session = self.session
        if session is None or not session.is_open or self._given is not None:
            return
        session.__exit__(type(error) if error is not None else None, error,
                         error.__traceback__ if error is not None else None)

    # -- training ---------------------------------------------------------------------

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fire(trainer, "kit_iteration_begin", iteration=trainer.current_epoch + 1)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._fire(trainer, "kit_step_begin", iteration=trainer.current_epoch + 1, batch_idx=batch_idx)

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           loss: torch.Tensor) -> None:
        self._loss = loss.detach()
        self._fire(trainer, "kit_before_backward", loss=self._loss)

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fire(trainer, "kit_after_backward")

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        """Gradients are unscaled here and not yet clipped, as kit's loop hands them over. A
        veto drops them, so the optimizer's step changes nothing; Lightning still counts the
        step and steps a scheduler (docs/embedding.md)."""
        self._fire(trainer, "kit_before_optimizer_step", optimizer=optimizer)
        loss = self._loss if self._loss is not None else torch.tensor(float("nan"))
        reason = self._fire(trainer, "kit_skip_optimizer_step", optimizer=optimizer, loss=loss)
        if reason is None or self.session is None:
            return
        for group in optimizer.param_groups:
            for param in group["params"]:
                param.grad = None
        self._skipped += 1
        self.session.record("train/skipped_steps", self._skipped, step=trainer.global_step + 1)
        self.session.record("train/skip_reason", str(reason), kind="text", step=trainer.global_step + 1)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = _loss(outputs)
        self._fire(trainer, "kit_step_end", iteration=trainer.current_epoch + 1, batch_idx=batch_idx,
                   loss=loss if loss is not None else torch.tensor(float("nan")))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        own = getattr(pl_module, "kit_epoch_metrics", {})  # a module's values recorded beside self.log
        metrics = {**_scalars(trainer.callback_metrics), **_scalars(own)}
        if not trainer.should_stop:  # a pass cut short by a stop did not exhaust the loader
            self._exhaust(trainer)  # when no validation at the epoch's end said so already
        self._fire(trainer, "kit_iteration_end", iteration=trainer.current_epoch + 1, metrics=metrics)

    # -- evaluation -------------------------------------------------------------------

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        if not trainer.sanity_checking:
            self._fire(trainer, "kit_val_step_begin", batch_idx=batch_idx)

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if not trainer.sanity_checking:
            self._step_end(trainer, "kit_val_step_end", outputs, batch, batch_idx)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            results = _split_results(_scalars(trainer.callback_metrics), "val")
            self._fire(trainer, "kit_val_end", iteration=trainer.current_epoch + 1, val_results=results)

    def on_test_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                            batch_idx: int, dataloader_idx: int = 0) -> None:
        self._fire(trainer, "kit_test_step_begin", batch_idx=batch_idx)

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                          batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._step_end(trainer, "kit_test_step_end", outputs, batch, batch_idx)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        results = _split_results(_scalars(trainer.callback_metrics), "test")
        if self.session is not None and self.session.is_open:
            self.session.trainer.results["test"] = dict(results)
        self._fire(trainer, "kit_test_end", test_results=results)

    def _step_end(self, trainer: L.Trainer, hook: str, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Fired when the step returned a loss (a tensor, ``{"loss": …}``, a :class:`kit.Evaluation`
        or ``{"loss": …, "evaluation": Evaluation}``), with what the task made of the batch."""
        loss = _loss(outputs)
        if loss is None:
            return
        evaluation = outputs.get("evaluation") if isinstance(outputs, Mapping) else outputs
        if not isinstance(evaluation, kit.Evaluation):
            evaluation = kit.Evaluation(loss, _size(batch))
        self._fire(trainer, hook, batch_idx=batch_idx, loss=loss, evaluation=evaluation)

    # -- checkpoints --------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """kit plugins' state (``kit_checkpoint_save``), kept in Lightning's checkpoint."""
        session = self.session or self._closed
        return session.state_dict() if session is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.session is not None:
            self.session.load_state_dict(state_dict)
        else:
            self._pending = dict(state_dict)
