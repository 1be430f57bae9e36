"""The native PyTorch backend: a plain loop on one device.

Written for small steps: each hook is resolved once (``None`` when nobody implements
it), losses stay on the device in a short list that is reduced, and synced, only every
``log_every_n_steps`` optimizer steps, and no per-step context manager runs unless
mixed precision asks for one.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

import torch

import kit

if TYPE_CHECKING:
    from kit import Trainer

__all__ = ["TorchBackend"]


def _skips(loader: Any) -> bool:
    """Whether ``loader`` starts a resumed pass by skipping indices (kit's EpochSampler)
    rather than by replaying batches."""
    return isinstance(getattr(loader, "sampler", None), kit.EpochSampler) and bool(loader.batch_size)


class TorchBackend(kit.Backend):
    """Single process on cpu, cuda or mps; epoch- or step-based; AMP, accumulation, clipping."""

    name: ClassVar[str] = "torch"

    def setup(self, trainer: Trainer) -> None:
        cfg = trainer.config.training
        assert trainer.model is not None
        self.device = trainer.device
        self.forward: Callable[..., Any] = trainer.model
        if cfg.compile:
            self.forward = torch.compile(trainer.model)
        self.amp_dtype = {"bf16": torch.bfloat16, "16": torch.float16}.get(cfg.precision)
        self.scaler = torch.amp.GradScaler("cuda") if cfg.precision == "16" else None
        self.move = self.device.type != "cpu"
        self.non_blocking = self.device.type == "cuda"
        self.params = [p for p in trainer.model.parameters() if p.requires_grad]
        self.window: list[torch.Tensor] = []  # losses since the last log, on the device
        self.iter_sum: torch.Tensor | float = 0.0
        self.iter_count = 0
        self.samples = 0  # since the last log, for throughput
        self.logged_at = (time.perf_counter(), trainer.global_step)

    # -- one batch ------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _batch(self, batch: Any) -> tuple[Any, Any]:
        inputs, targets = batch[0], batch[1]
        if self.move:
            inputs = inputs.to(self.device, non_blocking=self.non_blocking)
            targets = targets.to(self.device, non_blocking=self.non_blocking)
        return inputs, targets

    def _train_batch(self, trainer: Trainer, batch: Any, optimizer_step: bool) -> torch.Tensor:
        inputs, targets = self._batch(batch)
        self.samples += len(targets)
        accum = trainer.config.training.grad_accum
        assert trainer.loss_fn is not None
        if self.amp_dtype is None:
            loss = trainer.loss_fn(self.forward(inputs), targets)
        else:
            with self._autocast():
                loss = trainer.loss_fn(self.forward(inputs), targets)
        scaled = loss / accum if accum > 1 else loss
        if self.scaler is not None:
            self.scaler.scale(scaled).backward()  # type: ignore[no-untyped-call]
        else:
            scaled.backward()  # type: ignore[no-untyped-call]
        loss = loss.detach()
        self.window.append(loss)
        if optimizer_step:
            self._optimizer_step(trainer)
        return loss

    def _optimizer_step(self, trainer: Trainer) -> None:
        cfg = trainer.config.training
        optimizer = trainer.optimizer
        assert optimizer is not None
        if self.scaler is not None:
            if cfg.clip_grad_norm is not None:
                self.scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(self.params, cfg.clip_grad_norm)
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            if cfg.clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.params, cfg.clip_grad_norm)
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        trainer.global_step += 1
        if trainer.scheduler is not None and trainer.config.scheduler is not None \
                and trainer.config.scheduler.interval == "step":
            trainer.scheduler.step()
        if trainer.global_step % cfg.log_every_n_steps == 0:
            self._log_window(trainer)

    def _log_window(self, trainer: Trainer, *, record: bool = True) -> float | None:
        """Reduce the losses since the last log on the device; one sync, here only."""
        if not self.window:
            return None
        stacked = torch.stack(self.window)
        self.iter_sum = self.iter_sum + stacked.sum()
        self.iter_count += len(self.window)
        self.window.clear()
        if not record:
            return None
        value = float(stacked.mean())  # the sync: after it, host time is device time
        now, (since, step0) = time.perf_counter(), self.logged_at
        steps, samples = trainer.global_step - step0, self.samples
        self.logged_at, self.samples = (now, trainer.global_step), 0
        trainer.record("train/loss", value, split="train")
        optimizer = trainer.optimizer
        assert optimizer is not None
        trainer.record("train/lr", optimizer.param_groups[0]["lr"], split="train")
        if steps > 0 and now > since:
            trainer.record("train/step_time", (now - since) / steps, split="train")
            trainer.record("train/throughput", samples / (now - since), split="train")
        return value

    def _take_iteration_loss(self) -> float | None:
        """The mean training loss since the iteration started; resets the accumulator."""
        if not self.iter_count:
            return None
        value = float(self.iter_sum) / self.iter_count
        self.iter_sum, self.iter_count = 0.0, 0
        return value

    # -- the loop -------------------------------------------------------------------

    def fit(self, trainer: Trainer) -> None:
        assert trainer.model is not None
        trainer.model.train()
        self.logged_at, self.samples = (time.perf_counter(), trainer.global_step), 0
        if trainer.config.training.type == "epoch":
            self._fit_epochs(trainer)
        else:
            self._fit_steps(trainer)

    def _batches(self, trainer: Trainer, skip: int) -> Iterator[Any]:
        """The batches of pass ``trainer.epoch``, after the first ``skip`` (a resumed pass)."""
        loader = trainer.train_loader
        assert loader is not None
        sampler = getattr(loader, "sampler", None)
        if _skips(loader):
            assert isinstance(sampler, kit.EpochSampler) and loader.batch_size
            sampler.set_epoch(trainer.epoch, start=skip * loader.batch_size)  # O(1): no replay
            return iter(loader)
        set_epoch = getattr(sampler, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(trainer.epoch)
        batches: Iterator[Any] = iter(loader)
        if skip:
            warnings.warn(f"the training loader has no kit.EpochSampler: replaying {skip} batches to "
                          "reach the resume point", stacklevel=2)
            batches = itertools.islice(batches, skip, None)
        return batches

    def _fit_epochs(self, trainer: Trainer) -> None:
        cfg = trainer.config.training
        hooks = trainer.hooks
        loader = trainer.train_loader
        assert loader is not None
        accum = cfg.grad_accum
        resuming = trainer.phase != "done"  # a checkpoint taken inside an iteration
        first = trainer.iteration if resuming else trainer.iteration + 1
        for iteration in range(first, cfg.iterations + 1):
            trainer.iteration = iteration
            if resuming and trainer.phase == "end":  # trained; its validation and end were cut short
                resuming = False
                self._end_iteration(trainer, iteration, {})
                if trainer.should_stop:
                    break
                continue
            skip = trainer.epoch_batches if resuming else 0
            resuming = False
            trainer.phase = "train"
            if hooks.kit_iteration_begin is not None:
                hooks.kit_iteration_begin(trainer=trainer, iteration=iteration)
            batches = self._batches(trainer, skip)
            try:  # an EpochSampler now yields the rest of the pass; a replayed loader, all of it
                n_batches: int | None = len(loader) + (skip if _skips(loader) else 0)
            except TypeError:  # an IterableDataset without a length
                n_batches = None
            step_begin, step_end = hooks.kit_step_begin, hooks.kit_step_end
            batch_idx = skip - 1
            exhausted = True
            for batch_idx, batch in enumerate(batches, start=skip):
                trainer.batch_idx = batch_idx
                trainer.epoch_batches = batch_idx + 1
                if step_begin is not None:
                    step_begin(trainer=trainer, iteration=iteration, batch_idx=batch_idx)
                due = (batch_idx + 1) % accum == 0 or batch_idx + 1 == n_batches
                loss = self._train_batch(trainer, batch, due)
                if step_end is not None:
                    step_end(trainer=trainer, iteration=iteration, batch_idx=batch_idx, loss=loss)
                if due:  # a stop signal, or a checkpoint due by steps or seconds
                    trainer.step_done(ends_iteration=batch_idx + 1 == n_batches)
                if trainer.should_stop:
                    exhausted = False
                    break
            if exhausted and n_batches is None and (batch_idx + 1) % accum:
                self._optimizer_step(trainer)  # flush a partial accumulation
                trainer.step_done()
            trainer.epoch += 1
            trainer.epoch_batches = 0
            trainer.phase = "end"
            if exhausted and hooks.kit_loader_exhausted is not None:
                hooks.kit_loader_exhausted(trainer=trainer, iteration=iteration)
            self._log_window(trainer, record=False)
            metrics: dict[str, float] = {}
            epoch_loss = self._take_iteration_loss()
            if epoch_loss is not None:
                metrics["train/loss_epoch"] = epoch_loss
                trainer.record("train/loss_epoch", epoch_loss, split="train")
            self._end_iteration(trainer, iteration, metrics)
            if trainer.should_stop:
                break

    def _fit_steps(self, trainer: Trainer) -> None:
        cfg = trainer.config.training
        hooks = trainer.hooks
        resuming = trainer.phase != "done"
        first = trainer.iteration if resuming else trainer.iteration + 1
        batches = self._batches(trainer, trainer.epoch_batches)
        batch_idx = trainer.epoch_batches - 1
        for iteration in range(first, cfg.iterations + 1):
            trainer.iteration = iteration
            if resuming:  # step-based checkpoints are taken after an iteration's optimizer step
                resuming = False
                if trainer.phase == "end":
                    self._end_iteration(trainer, iteration, {})
                    if trainer.should_stop:
                        break
                    continue
            trainer.phase = "train"
            if hooks.kit_iteration_begin is not None:
                hooks.kit_iteration_begin(trainer=trainer, iteration=iteration)
            for micro in range(cfg.grad_accum):
                try:
                    batch = next(batches)
                except StopIteration:
                    if hooks.kit_loader_exhausted is not None:
                        hooks.kit_loader_exhausted(trainer=trainer, iteration=iteration)
                    trainer.epoch += 1
                    batches, batch_idx = self._batches(trainer, 0), -1
                    batch = next(batches)
                batch_idx += 1
                trainer.batch_idx = batch_idx
                trainer.epoch_batches = batch_idx + 1
                if hooks.kit_step_begin is not None:
                    hooks.kit_step_begin(trainer=trainer, iteration=iteration, batch_idx=batch_idx)
                loss = self._train_batch(trainer, batch, micro + 1 == cfg.grad_accum)
                if hooks.kit_step_end is not None:
                    hooks.kit_step_end(trainer=trainer, iteration=iteration, batch_idx=batch_idx,
                                       loss=loss)
            trainer.phase = "end"
            metrics: dict[str, float] = {}
            if not self.window:  # the optimizer step just logged
                value = self._take_iteration_loss()
                if value is not None:
                    metrics["train/loss"] = value
            self._end_iteration(trainer, iteration, metrics)
            if trainer.should_stop:
                break

    def _end_iteration(self, trainer: Trainer, iteration: int, metrics: dict[str, float]) -> None:
        """Validation, the scheduler, a checkpoint when due, then ``kit_iteration_end``."""
        if trainer.stop_signal is not None:
            trainer.interrupt()
        cfg = trainer.config.training
        last = iteration == cfg.iterations or trainer.should_stop
        val: dict[str, float] = {}
        if trainer.val_loader is not None and (iteration % cfg.eval_frequency == 0 or last):
            val = self.validate(trainer, iteration)
            metrics.update({f"val/{k}": v for k, v in val.items()})
        scheduler = trainer.scheduler
        if scheduler is not None and trainer.config.scheduler is not None \
                and trainer.config.scheduler.interval == "iteration":
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                if val:  # it needs a metric: the validation loss, when there is one
                    scheduler.step(val["loss"])
            else:
                scheduler.step()
        trainer.phase = "done"
        saved = trainer.checkpoint_due(end_of_iteration=True) or trainer.should_stop
        if saved:
            trainer.save_checkpoint()
        if val or saved:  # keep evaluation and checkpoint time out of step_time and throughput
            self.logged_at, self.samples = (time.perf_counter(), trainer.global_step), 0
        if trainer.hooks.kit_iteration_end is not None:
            trainer.hooks.kit_iteration_end(trainer=trainer, iteration=iteration, metrics=metrics)
        if trainer.stop_signal is not None:
            trainer.interrupt()

    # -- resuming -------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "window": torch.stack(self.window) if self.window else None,
            "iter_sum": torch.as_tensor(self.iter_sum).detach(),
            "iter_count": self.iter_count,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        window = state.get("window")
        self.window = list(window.to(self.device).unbind(0)) if window is not None else []
        if "iter_sum" in state:
            self.iter_sum = state["iter_sum"].to(self.device)
            self.iter_count = int(state["iter_count"])

    # -- evaluation -----------------------------------------------------------------

    def _evaluate(self, trainer: Trainer, loader: Any, split: str) -> dict[str, float]:
        model, loss_fn = trainer.model, trainer.loss_fn
        assert model is not None and loss_fn is not None
        begin = getattr(trainer.hooks, f"kit_{split}_step_begin")
        end = getattr(trainer.hooks, f"kit_{split}_step_end")
        metrics = [cls() for cls in trainer.metric_types]
        total: torch.Tensor | float = 0.0
        count = 0
        was_training = model.training
        model.eval()
        with torch.inference_mode(), self._autocast():
            for batch_idx, batch in enumerate(loader):
                if trainer.stop_signal is not None:
                    trainer.interrupt()
                if begin is not None:
                    begin(trainer=trainer, batch_idx=batch_idx)
                inputs, targets = self._batch(batch)
                outputs = self.forward(inputs)
                loss = loss_fn(outputs, targets).float()
                size = targets.shape[0]
                total = total + loss * size
                count += size
                for metric in metrics:
                    metric.update(outputs, targets)
                if end is not None:
                    end(trainer=trainer, batch_idx=batch_idx, loss=loss)
        model.train(was_training)
        results = {"loss": float(total) / count if count else math.nan}
        results.update({m.name: m.compute() for m in metrics})
        return results

    def validate(self, trainer: Trainer, iteration: int) -> dict[str, float]:
        trainer.hooks.call("kit_val_begin", trainer=trainer, iteration=iteration)
        results = self._evaluate(trainer, trainer.val_loader, "val")
        trainer.record_results("val", results)
        trainer.hooks.call("kit_val_end", trainer=trainer, iteration=iteration, val_results=results)
        return results

    def test(self, trainer: Trainer) -> dict[str, float]:
        trainer.hooks.call("kit_test_begin", trainer=trainer)
        results = self._evaluate(trainer, trainer.test_loader, "test")
        trainer.record_results("test", results)
        trainer.hooks.call("kit_test_end", trainer=trainer, test_results=results)
        return results
