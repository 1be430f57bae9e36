"""``lightning-trainer``: Lightning's own ``Trainer`` runs the loop, with kit around it.

For users who want Lightning's callbacks, profilers and loop: kit builds the run as
always (model, data with kit's sampler, task, metrics, optimizer, scheduler, run
directory, loggers, plugins), wraps model and task in a ``LightningModule`` and runs
``lightning.pytorch.Trainer`` with :class:`~kit_contrib.integrations.lightning.KitCallback`,
which fires kit's hooks from Lightning's events. kit still writes its checkpoints (at
the ends of epochs, every format) and resumes from them: the model, optimizer,
scheduler, RNG and Lightning's own loop progress are in them::

    backend: {lightning-trainer: {precision: bf16-mixed, trainer: {profiler: simple}}}

Where it differs from kit's loop is listed in ``docs/concepts.md`` and asserted by
``tests/backends/test_lightning_trainer.py``: Lightning owns the loop, so checkpoints
are taken at the ends of epochs only (``checkpoint.every_n_steps``/``every_n_seconds``
are refused), a resume starts at the next epoch, ``train/lr``, ``train/step_time`` and
``train/throughput`` are not recorded, and a vetoed step still counts. One process per
run (``kit run`` starts it); epoch-based training only.
"""

from __future__ import annotations

import inspect
import logging
import signal
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import lightning as L
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

import kit
from kit_backends.lightning import Accelerator, Precision, lightning_accelerator, lightning_precision
from kit_contrib.integrations.lightning import KitCallback

if TYPE_CHECKING:
    from kit import Trainer

__all__ = ["LightningTrainerBackend"]

_SIGTERM: type[BaseException] = getattr(
    __import__("lightning.pytorch.utilities.exceptions", fromlist=["SIGTERMException"]),
    "SIGTERMException", type("_NeverRaised", (BaseException,), {}))
"""What Lightning (2.5 and later) raises when SIGTERM arrives during ``fit``."""

_KIT_OWNS = frozenset({
    "max_epochs", "min_epochs", "max_steps", "min_steps", "callbacks", "logger", "accelerator", "devices",
    "num_nodes", "strategy", "precision", "enable_checkpointing", "check_val_every_n_epoch",
    "log_every_n_steps", "gradient_clip_val", "accumulate_grad_batches", "use_distributed_sampler",
    "default_root_dir", "num_sanity_val_steps", "plugins",
})
"""Trainer arguments kit sets from its own config (or must, for kit's rules to hold)."""
_TRAINER_ARGS = frozenset(inspect.signature(L.Trainer.__init__).parameters) - {"self"}


class LightningTrainerBackend(kit.Backend):
    """Lightning's ``Trainer`` as the loop, kit's hooks fired by ``KitCallback``."""

    name: ClassVar[str] = "lightning-trainer"

    class Options(BaseModel):
        """``backend: {lightning-trainer: {…}}``."""

        model_config = ConfigDict(extra="forbid")

        accelerator: Accelerator = Field(
            "auto", description="auto: what training.device says, else the best available")
        precision: Precision | None = Field(
            None, description="Lightning's precision; default: training.precision in its words")
        trainer: dict[str, Any] = Field(
            default_factory=dict,
            description="more lightning.pytorch.Trainer arguments (profiler, deterministic, …)")

        @field_validator("trainer")
        @classmethod
        def _known(cls, value: dict[str, Any]) -> dict[str, Any]:
            owned = sorted(set(value) & _KIT_OWNS)
            if owned:
                raise ValueError(f"{', '.join(owned)}: set by kit from its config, not here")
            unknown = sorted(set(value) - _TRAINER_ARGS)
            if unknown:
                raise ValueError(f"{', '.join(unknown)}: not an argument of lightning.pytorch.Trainer")
            return value

    def __init__(self, options: Options | None = None) -> None:
        self.options = options or self.Options()
        self._restored: dict[str, Any] | None = None
        self.run: _LightningLoop | None = None
        self.precision: Precision = "32-true"
        self.accelerator: Accelerator = "auto"  # both resolved against the config in loop()

    def loop(self, trainer: Trainer) -> _LightningLoop:
        cfg = trainer.config
        # checked here, as the run is built: before anything is written
        self.precision = lightning_precision(self.options.precision, cfg.training.precision, self.name)
        self.accelerator = lightning_accelerator(self.options.accelerator, cfg.training.device, self.name)
        if cfg.training.type != "epoch":
            raise kit.ConfigError("the lightning-trainer backend trains by epochs", key="training.type",
                                  hint="set training.type: epoch, or use backend lightning")
        for key in ("every_n_steps", "every_n_seconds"):
            if getattr(cfg.checkpoint, key, None) is not None:
                raise kit.ConfigError("Lightning owns the loop, so kit saves at the ends of epochs only",
                                      key=f"checkpoint.{key}", hint="remove it, or use backend lightning")
        self.run = _LightningLoop(trainer, self)
        return self.run

    def state_dict(self) -> dict[str, Any]:
        """Lightning's loop progress, so a resumed run starts at the next epoch, as Lightning's own
        checkpoints do."""
        state = super().state_dict()
        if self.run is not None and self.run.pl is not None:
            state["fit_loop"] = self.run.pl.fit_loop.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        fit_loop = state.get("fit_loop")
        if fit_loop is not None and not isinstance(fit_loop, dict):
            raise kit.CheckpointError("backend state 'fit_loop' is not a dict")
        self._restored = fit_loop

class _KitModule(L.LightningModule):
    """The user's model and kit's task as Lightning sees them (KnowIt's way): the steps call the
    task, evaluation feeds kit's torchmetrics, and optimizer and scheduler are kit's."""

    def __init__(self, trainer: Trainer) -> None:
        super().__init__()
        assert trainer.model is not None and trainer.task is not None
        self.model = trainer.model
        self._kit = trainer
        self._metrics: list[Any] | None = None
        self._window: list[torch.Tensor] = []  # training losses since the last record, on the device
        self._logged = 0
        self.kit_epoch_metrics: dict[str, float] = {}
        """What the epoch recorded beside ``self.log``; KitCallback adds it to ``kit_iteration_end``."""
        self._epoch_sum: torch.Tensor = torch.zeros(())
        self._epoch_count = 0

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        task = self._kit.task
        assert task is not None
        loss: torch.Tensor = task.training_step(self.model, batch)
        self._window.append(loss.detach())
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """``train/loss`` as kit's loop records it: the mean since the last log, every
        ``log_every_n_steps`` optimizer steps, read from the device only then (``self.log``
        on every step would cost more than the step on a small model)."""
        step = self.trainer.global_step
        if step > self._logged and step % self._kit.config.training.log_every_n_steps == 0:
            self._logged = step
            self._log_window(record=True)
        if self.trainer.is_last_batch:  # train/loss_epoch, before validation as in kit's loop
            self._log_window(record=False)
            value = float(self._epoch_sum / max(self._epoch_count, 1))
            self._kit.record("train/loss_epoch", value, split="train")
            self.kit_epoch_metrics = {"train/loss_epoch": value}
            self._epoch_sum, self._epoch_count = torch.zeros(()), 0

    def _log_window(self, *, record: bool) -> None:
        if not self._window:
            return
        stacked = torch.stack(self._window)
        self._window.clear()
        self._epoch_sum, self._epoch_count = self._epoch_sum + stacked.sum(), self._epoch_count + len(stacked)
        if record:
            kit_trainer = self._kit
            kit_trainer.state.global_step = self.trainer.global_step
            kit_trainer.record("train/loss", stacked.mean(), split="train")

    def _evaluate(self, batch: Any, split: str) -> dict[str, Any]:
        """``{"loss", "evaluation"}``: the evaluation reaches ``kit_val_step_end`` through KitCallback."""
        task = self._kit.task
        assert task is not None
        evaluation = task.evaluation_step(self.model, batch)
        self.log(f"{split}/loss", evaluation.loss, on_step=False, on_epoch=True, batch_size=evaluation.size)
        if evaluation.preds is not None and self._kit.metrics:
            if self._metrics is None:  # built when predictions show their shape, as kit's loop does
                preds = evaluation.preds
                classes = int(preds.shape[-1]) if isinstance(preds, torch.Tensor) and preds.dim() > 1 else 0
                self._metrics = self._kit.new_metrics(classes)
            for metric in self._metrics:
                metric.update(evaluation.preds, evaluation.targets)
        return {"loss": evaluation.loss.detach(), "evaluation": evaluation}

    def _reset_metrics(self) -> None:
        self._metrics = None

    def _log_metrics(self, split: str) -> None:
        for spec, metric in zip(self._kit.metrics, self._metrics or (), strict=False):
            self.log(f"{split}/{spec.name}", metric.compute())

    def on_validation_epoch_start(self) -> None:
        self._reset_metrics()

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        return self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_start(self) -> None:
        self._reset_metrics()

    def test_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        return self._evaluate(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def configure_optimizers(self) -> Any:
        trainer = self._kit
        scheduler, config = trainer.scheduler, trainer.config.scheduler
        if scheduler is None or config is None:
            return trainer.optimizer
        interval = "step" if config.interval == "step" else "epoch"
        return {"optimizer": trainer.optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": interval, "monitor": "val/loss"}}


class _Saves(L.Callback):
    """kit's checkpoints at the ends of epochs, where kit's loop takes them; before
    ``kit_iteration_end``, as kit's loop fires them."""

    def __init__(self, trainer: Trainer) -> None:
        self._kit = trainer

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._kit.stop_signal is not None:  # SIGTERM, Ctrl-C: Lightning stops after this batch
            trainer.should_stop = True

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        kit_trainer, state = self._kit, self._kit.state
        if kit_trainer.stop_signal is not None and not trainer.is_last_batch:
            return  # mid-epoch: Lightning owns that position, so the last epoch's checkpoint stands
        state.iteration = state.epoch = trainer.current_epoch + 1
        state.global_step = trainer.global_step
        state.epoch_batches = state.batch_idx = 0
        state.phase = "done"
        if kit_trainer.checkpoint_due(end_of_iteration=True) or trainer.should_stop:
            kit_trainer.save_checkpoint()


class _LightningLoop:
    """fit, validate and test through one ``lightning.pytorch.Trainer`` with ``KitCallback``."""

    def __init__(self, trainer: Trainer, backend: LightningTrainerBackend) -> None:
        self.kit = trainer
        self.backend = backend
        self.module = _KitModule(trainer)
        self.callback = KitCallback(session=kit.Session.attach(trainer))
        self.pl: L.Trainer | None = None

    def _trainer(self) -> L.Trainer:
        if self.pl is not None:
            return self.pl
        cfg = self.kit.config
        train = cfg.training
        backend = self.backend
        for name in ("lightning.pytorch", "lightning.fabric"):  # kit says what it runs on, once
            logging.getLogger(name).setLevel(logging.WARNING)
        self.pl = L.Trainer(
            accelerator=backend.accelerator, devices=1, precision=backend.precision,
            max_epochs=train.iterations, check_val_every_n_epoch=train.eval_frequency,
            log_every_n_steps=train.log_every_n_steps, gradient_clip_val=train.clip_grad_norm,
            accumulate_grad_batches=train.grad_accum, callbacks=[_Saves(self.kit), self.callback],
            logger=False, enable_checkpointing=False, use_distributed_sampler=False,
            num_sanity_val_steps=0, enable_progress_bar=False, enable_model_summary=False,
            default_root_dir=str(self.kit.run_dir) if self.kit.run_dir is not None else None,
            **backend.options.trainer)
        return self.pl

    def fit(self) -> None:
        pl = self._trainer()
        restored, self.backend._restored = self.backend._restored, None
        if restored is not None:  # where Lightning's loop stood at kit's checkpoint
            pl.fit_loop.load_state_dict(restored)
        try:
            pl.fit(self.module, self.kit.train_loader, self.kit.val_loader)
        except _SIGTERM:  # Lightning's own SIGTERM handler, during fit: the same clean stop
            self.kit.stop_signal = signal.SIGTERM
        if self.kit.stop_signal is not None:  # stopped by it, and saved when at an epoch's end
            self.kit.interrupt(save=False)
        if self.kit.val_loader is not None:
            self.kit.results["val"] = _short(pl.callback_metrics, "val")

    def validate(self, iteration: int) -> dict[str, float]:
        (results,) = self._trainer().validate(self.module, self.kit.val_loader, verbose=False) or [{}]
        return _short(results, "val")

    def test(self) -> dict[str, float]:
        (results,) = self._trainer().test(self.module, self.kit.test_loader, verbose=False) or [{}]
        return _short(results, "test")  # KitCallback's kit_test_end kept them in trainer.results

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Lightning's loop state rides in the backend's section of the checkpoint."""


def _short(results: Mapping[str, Any], split: str) -> dict[str, float]:
    return {name[len(split) + 1:]: float(value) for name, value in results.items()
            if name.startswith(f"{split}/")}
