"""The loop: the only code that fires the loop's hooks, on every backend.

``hookspecs.py`` draws the event order; this module is its one implementation: the
resume phases, the validation, save and log cadence, the train loss window, metric
recording and the stop checks. Where tensors live and how they move is the
:class:`~kit.interfaces.Backend`'s: the loop calls it for placement, mixed precision,
backward, the optimizer step and collectives, and never asks which backend it is.

Written for small steps: each hook is resolved once (``None`` when nobody implements
it); losses stay on the device in a short list that is reduced, and synced, only every
``log_every_n_steps`` optimizer steps. With more than one rank, the ranks agree on
stopping and on time-based saves, so every rank stops and saves at the same step: at the
end of each epoch, validating iteration and the run, and inside iterations about every
:data:`AGREE_EVERY_S` seconds (a small all-reduce; see :meth:`Loop._agree`).
"""

from __future__ import annotations

import itertools
import time
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal

import torch

from kit.data import EpochSampler

if TYPE_CHECKING:
    from kit.interfaces import Backend
    from kit.runstate import RunState
    from kit.trainer import Trainer

__all__ = ["AGREE_EVERY_S", "Loop"]

AGREE_EVERY_S = 0.2
"""Inside an iteration, ranks agree on stops and timed saves about this often (in seconds
of training), or at every optimizer step when one takes longer."""


def _classes(preds: Any) -> int:
    """How many classes logits ``(N, …, C)`` score; 0 when they do not say."""
    return int(preds.shape[-1]) if isinstance(preds, torch.Tensor) and preds.dim() > 1 else 0


def _skips(loader: Any) -> bool:
    """Whether ``loader`` starts a resumed pass by skipping indices (kit's EpochSampler)
    rather than by replaying batches."""
    return isinstance(getattr(loader, "sampler", None), EpochSampler) and bool(loader.batch_size)


class Loop:
    """Train, validate and test one run; the trainer is the context every hook receives."""

    def __init__(self, trainer: Trainer, backend: Backend) -> None:
        assert trainer.model is not None
        self.trainer = trainer
        self.backend = backend
        self.state: RunState = trainer.state
        assert trainer.task is not None
        self.task = trainer.task
        self.forward: Callable[..., Any] = backend.wrap(trainer.model, trainer)
        self.eval_forward: Callable[..., Any] = backend.unwrap(self.forward)
        self.distributed = backend.world_size > 1
        # read on every batch, so looked up once (the config does not change during a run)
        cfg = trainer.config.training
        self.accum, self.clip, self.log_every = cfg.grad_accum, cfg.clip_grad_norm, cfg.log_every_n_steps
        scheduler = trainer.config.scheduler
        self.step_scheduler = scheduler is not None and scheduler.interval == "step"
        self.window: list[torch.Tensor] = []  # losses since the last log, on the device
        self.iter_sum: torch.Tensor | float = 0.0
        self.iter_count = 0
        self.samples = 0  # since the last log, for throughput
        self.pending = 0  # losses in the window from the optimizer step under way
        self.skipped = 0  # optimizer steps a plugin vetoed (kit_skip_optimizer_step), over the run
        self.logged_at = (time.perf_counter(), self.state.global_step)
        # several ranks only: what they agreed on, and when they next agree (see _agree)
        self._stop, self._signal = False, 0
        self._agree_at = self.state.global_step + 1
        self._agreed_at = self.logged_at

    def release(self) -> None:
        """Drop the backend's wrapper of the model (DDP's, whose reducer has work queued on
        the process group) so it goes with the backend's teardown, while the group is alive,
        and not when the interpreter shuts down; the loop's state stays readable."""
        assert self.trainer.model is not None
        self.forward = self.eval_forward = self.trainer.model

    # -- stopping and timed saves, agreed across ranks -----------------------------

    @property
    def stopping(self) -> bool:
        """Whether the loop stops here: ``trainer.should_stop`` in one process; with several,
        only once every rank has agreed on it (:meth:`_agree`), so all stop at one step."""
        return self.trainer.should_stop if not self.distributed else self._stop

    @property
    def signalled(self) -> bool:
        """Whether to stop on a signal here: as caught in one process; with several, once
        every rank has agreed that one of them caught it."""
        return self.trainer.stop_signal is not None if not self.distributed else self._signal != 0

    def _agree(self, *, now: bool) -> bool:
        """Agree with the other ranks on a stop signal, ``should_stop`` and a time-based save.

        Returns whether a save by ``checkpoint.every_n_seconds`` is due; afterwards
        :attr:`signalled` and :attr:`stopping` hold what every rank agreed on. One process
        has nothing to agree on. Several MAX-reduce four numbers (the signal, the stop, the
        save, this rank's seconds per step), so a signal caught or a stop asked for on any
        rank stops every rank at the same step.

        ``now=True`` always agrees (the end of an epoch, of a validating iteration and of the
        run). Otherwise, at an optimizer step inside an iteration, the ranks agree only at
        the step they chose last time: about :data:`AGREE_EVERY_S` of the slowest rank's
        steps later, and at the next step while steps take longer than that. A collective
        costs about a millisecond on CPU, as much as a small step; this bounds its share to
        about one percent while a signal still takes effect within a fraction of a second.
        """
        trainer = self.trainer
        if not self.distributed:
            return trainer.checkpoint_due_by_time()
        step = self.state.global_step
        if not now and step < self._agree_at:
            return False
        since, step0 = self._agreed_at
        step_s = (time.perf_counter() - since) / (step - step0) if step > step0 else 0.0
        flags = torch.tensor([trainer.stop_signal or 0, int(trainer.should_stop),
                              int(trainer.checkpoint_due_by_time()), step_s], dtype=torch.float64)
        signum, stop, due, slowest = self.backend.all_reduce(flags, "max").tolist()
        # the same numbers on every rank, so the same next step
        self._agree_at = step + (max(1, int(AGREE_EVERY_S / slowest)) if slowest > 0 else 1)
        self._agreed_at = (time.perf_counter(), step)
        if signum and not self._signal:
            self._signal = int(signum)
            if trainer.stop_signal is None:  # caught on another rank: this rank exits with it too
                trainer.stop_signal = self._signal
        if stop:
            self._stop = trainer.should_stop = True
        return bool(due)

    def _stop_if_signalled(self) -> None:
        """Agree with the other ranks now, then stop (saving) when any of them caught a signal."""
        self._agree(now=True)
        if self.signalled:
            self.trainer.interrupt()

    def _step_done(self, *, ends_iteration: bool) -> None:
        """After an optimizer step: handle a stop signal, or save when due by steps or time.

        A save due on a step that ends the iteration waits for the iteration's end, so one
        checkpoint covers both; that end agrees with the other ranks itself.
        """
        trainer = self.trainer
        if ends_iteration:
            if self.signalled:
                trainer.interrupt()
            return
        timed = self._agree(now=False)
        if self.signalled:
            trainer.interrupt()
        if timed or trainer.checkpoint_due(end_of_iteration=False):
            trainer.save_checkpoint()

    # -- one batch ------------------------------------------------------------------

    def _train_batch(self, batch: Any, optimizer_step: bool) -> torch.Tensor:
        """Forward and backward one batch; on a step's last micro-batch, the optimizer step.

        Runs once per batch, so it does nothing it need not: hooks nobody implements cost an
        ``is not None`` test, and the no-sync context is entered only for the micro-batches
        of an accumulation, whose gradients wait for the step's last one.
        """
        trainer, backend = self.trainer, self.backend
        batch = backend.to_device(batch)
        self.samples += self.task.batch_size(batch)
        if optimizer_step:
            loss = self._forward_backward(batch)
        else:
            with backend.no_backward_sync(self.forward, enabled=True):
                loss = self._forward_backward(batch)
        if trainer.hooks.kit_after_backward is not None:
            trainer.hooks.kit_after_backward(trainer=trainer)
        self.window.append(loss)
        self.pending += 1
        if optimizer_step:
            self._optimizer_step(loss)
        return loss

    def _forward_backward(self, batch: Any) -> torch.Tensor:
        """The batch's loss (returned detached), and its backward, scaled by accumulation."""
        trainer, backend = self.trainer, self.backend
        with backend.autocast():
            loss = self.task.training_step(self.forward, batch)
        if trainer.hooks.kit_before_backward is not None:
            trainer.hooks.kit_before_backward(trainer=trainer, loss=loss.detach())
        backend.backward(loss / self.accum if self.accum > 1 else loss)
        return loss.detach()

    def _optimizer_step(self, loss: torch.Tensor) -> None:
        """Unscale when something reads the gradients, let plugins see or veto them, clip and
        step (or skip), zero the gradients, count the step, then log when due."""
        trainer, state, backend = self.trainer, self.state, self.backend
        hooks = trainer.hooks
        optimizer = trainer.optimizer
        assert optimizer is not None
        before, veto = hooks.kit_before_optimizer_step, hooks.kit_skip_optimizer_step
        if self.clip is not None or before is not None or veto is not None:
            backend.unscale_gradients(optimizer)
        if before is not None:
            before(trainer=trainer, optimizer=optimizer)
        reason = veto(trainer=trainer, optimizer=optimizer, loss=loss) if veto is not None else None
        if veto is not None and self.distributed:  # one rank's veto skips the step on every rank
            flag = torch.tensor([0.0 if reason is None else 1.0])
            if self.backend.all_reduce(flag, "max").item() and reason is None:
                reason = "skipped on another rank"
        if reason is None:
            backend.optimizer_step(optimizer, clip_grad_norm=self.clip)
        else:
            backend.skip_optimizer_step(optimizer)
        optimizer.zero_grad(set_to_none=True)
        state.global_step += 1
        if reason is not None:  # its losses stay out of train/loss: a NaN would poison the mean
            del self.window[len(self.window) - self.pending:]
            self.skipped += 1
            trainer.record("train/skipped_steps", self.skipped, split="train")
            trainer.record("train/skip_reason", str(reason), kind="text", split="train")
        elif self.step_scheduler and trainer.scheduler is not None:
            trainer.scheduler.step()
        self.pending = 0
        if state.global_step % self.log_every == 0:
            self._log_window()

    def _log_window(self, *, record: bool = True) -> None:
        """Reduce the losses since the last log on the device; the one sync, here only."""
        if not self.window:
            return
        stacked = torch.stack(self.window)
        self.iter_sum = self.iter_sum + stacked.sum()
        self.iter_count += len(self.window)
        self.window.clear()
        if not record:
            return
        trainer = self.trainer
        samples: float = self.samples
        if self.distributed:  # every rank's mean and sample count, in one collective
            both = torch.stack([stacked.mean().float(), stacked.new_tensor(float(samples)).float()])
            both = self.backend.all_reduce(both, "sum")
            value, samples = float(both[0]) / self.backend.world_size, float(both[1])
        else:
            value = float(stacked.mean())  # the sync: after it, host time is device time
        now, (since, step0) = time.perf_counter(), self.logged_at
        steps = self.state.global_step - step0
        self.logged_at, self.samples = (now, self.state.global_step), 0
        trainer.record("train/loss", value, split="train")
        optimizer = trainer.optimizer
        assert optimizer is not None
        trainer.record("train/lr", optimizer.param_groups[0]["lr"], split="train")
        if steps > 0 and now > since:
            trainer.record("train/step_time", (now - since) / steps, split="train")
            trainer.record("train/throughput", samples / (now - since), split="train")

    def _take_iteration_loss(self) -> float | None:
        """The mean training loss since the iteration started, over every rank; resets it."""
        if self.distributed:  # every rank has the same count: no rank skips the collective
            total = torch.as_tensor(self.iter_sum, dtype=torch.float64).reshape(1).clone()
            total = self.backend.all_reduce(total, "sum")
            count = self.iter_count * self.backend.world_size
            value = float(total) / count if count else None
        else:
            value = float(self.iter_sum) / self.iter_count if self.iter_count else None
        self.iter_sum, self.iter_count = 0.0, 0
        return value

    # -- training -------------------------------------------------------------------

    def fit(self) -> None:
        """Train from where ``trainer.state`` stands to ``training.iterations``."""
        assert self.trainer.model is not None
        self.trainer.model.train()
        self.logged_at, self.samples = (time.perf_counter(), self.state.global_step), 0
        self._agree(now=True)  # a stop asked for before the first step (in kit_train_begin, say)
        if self.stopping:
            return
        if self.trainer.config.training.type == "epoch":
            self._fit_epochs()
        else:
            self._fit_steps()

    def _batches(self, skip: int) -> Iterator[Any]:
        """The batches of pass ``state.epoch``, after the first ``skip`` (a resumed pass)."""
        loader = self.trainer.train_loader
        assert loader is not None
        sampler = getattr(loader, "sampler", None)
        if _skips(loader):
            assert isinstance(sampler, EpochSampler) and loader.batch_size
            sampler.set_epoch(self.state.epoch, start=skip * loader.batch_size)  # O(1): no replay
            return iter(loader)
        set_epoch = getattr(sampler, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(self.state.epoch)
        batches: Iterator[Any] = iter(loader)
        if skip:
            warnings.warn(f"the training loader has no kit.EpochSampler: replaying {skip} batches to "
                          "reach the resume point", stacklevel=2)
            batches = itertools.islice(batches, skip, None)
        return batches

    def _fit_epochs(self) -> None:
        trainer, state = self.trainer, self.state
        cfg = trainer.config.training
        hooks = trainer.hooks
        loader = trainer.train_loader
        assert loader is not None
        accum = cfg.grad_accum
        resuming = state.phase != "done"  # a checkpoint taken inside an iteration
        first = state.iteration if resuming else state.iteration + 1
        for iteration in range(first, cfg.iterations + 1):
            state.iteration = iteration
            if resuming and state.phase == "end":  # trained; its validation and end were cut short
                resuming = False
                self._end_iteration(iteration, {})
                if self.stopping:
                    break
                continue
            skip = state.epoch_batches if resuming else 0
            resuming = False
            state.phase = "train"
            if hooks.kit_iteration_begin is not None:
                hooks.kit_iteration_begin(trainer=trainer, iteration=iteration)
            batches = self._batches(skip)
            try:  # an EpochSampler now yields the rest of the pass; a replayed loader, all of it
                n_batches: int | None = len(loader) + (skip if _skips(loader) else 0)
            except TypeError:  # an IterableDataset without a length
                n_batches = None
            batch_idx = skip - 1
            exhausted = True
            for batch_idx, batch in enumerate(batches, start=skip):
                state.batch_idx = batch_idx
                state.epoch_batches = batch_idx + 1
                if hooks.kit_step_begin is not None:  # read each time: plugins may come and go
                    hooks.kit_step_begin(trainer=trainer, iteration=iteration, batch_idx=batch_idx)
                due = (batch_idx + 1) % accum == 0 or batch_idx + 1 == n_batches
                loss = self._train_batch(batch, due)
                if hooks.kit_step_end is not None:
                    hooks.kit_step_end(trainer=trainer, iteration=iteration, batch_idx=batch_idx,
                                       loss=loss)
                if due:  # a stop signal, or a checkpoint due by steps or seconds
                    self._step_done(ends_iteration=batch_idx + 1 == n_batches)
                if self.stopping:
                    exhausted = False
                    break
            if exhausted and n_batches is None and (batch_idx + 1) % accum:
                self._optimizer_step(self.window[-1])  # flush a partial accumulation
                self._step_done(ends_iteration=False)
            state.epoch += 1
            state.epoch_batches = 0
            state.phase = "end"
            if exhausted and hooks.kit_loader_exhausted is not None:
                hooks.kit_loader_exhausted(trainer=trainer, iteration=iteration)
            self._log_window(record=False)
            metrics: dict[str, float] = {}
            epoch_loss = self._take_iteration_loss()
            if epoch_loss is not None:
                metrics["train/loss_epoch"] = epoch_loss
                trainer.record("train/loss_epoch", epoch_loss, split="train")
            self._end_iteration(iteration, metrics)
            if self.stopping:
                break

    def _fit_steps(self) -> None:
        trainer, state = self.trainer, self.state
        cfg = trainer.config.training
        hooks = trainer.hooks
        resuming = state.phase != "done"
        first = state.iteration if resuming else state.iteration + 1
        batches = self._batches(state.epoch_batches)
        batch_idx = state.epoch_batches - 1
        for iteration in range(first, cfg.iterations + 1):
            state.iteration = iteration
            if resuming:  # step-based checkpoints are taken after an iteration's optimizer step
                resuming = False
                if state.phase == "end":
                    self._end_iteration(iteration, {})
                    if self.stopping:
                        break
                    continue
            state.phase = "train"
            if hooks.kit_iteration_begin is not None:
                hooks.kit_iteration_begin(trainer=trainer, iteration=iteration)
            for micro in range(cfg.grad_accum):
                try:
                    batch = next(batches)
                except StopIteration:
                    if hooks.kit_loader_exhausted is not None:
                        hooks.kit_loader_exhausted(trainer=trainer, iteration=iteration)
                    state.epoch += 1
                    batches, batch_idx = self._batches(0), -1
                    batch = next(batches)
                batch_idx += 1
                state.batch_idx = batch_idx
                state.epoch_batches = batch_idx + 1
                if hooks.kit_step_begin is not None:
                    hooks.kit_step_begin(trainer=trainer, iteration=iteration, batch_idx=batch_idx)
                loss = self._train_batch(batch, micro + 1 == cfg.grad_accum)
                if hooks.kit_step_end is not None:
                    hooks.kit_step_end(trainer=trainer, iteration=iteration, batch_idx=batch_idx,
                                       loss=loss)
            state.phase = "end"
            metrics: dict[str, float] = {}
            if not self.window:  # the optimizer step just logged
                value = self._take_iteration_loss()
                if value is not None:
                    metrics["train/loss"] = value
            self._end_iteration(iteration, metrics)
            if self.stopping:
                break

    def _end_iteration(self, iteration: int, metrics: dict[str, float]) -> None:
        """Validation, the scheduler, a checkpoint when due, then ``kit_iteration_end``.

        With several ranks, the end of an epoch, of an iteration that validates and of the
        last iteration agree, so a stop asked for there (early stopping on a validation
        metric) holds at once, as in one process. The other ends of a step-based run, one
        per optimizer step, agree on :meth:`_agree`'s schedule.
        """
        trainer, state = self.trainer, self.state
        cfg = trainer.config.training
        validates = trainer.val_loader is not None and iteration % cfg.eval_frequency == 0
        wait = cfg.type == "epoch" or validates or iteration == cfg.iterations or self.stopping
        timed = self._agree(now=wait)  # a signal while training: stop before validating
        if self.signalled:
            trainer.interrupt()
        last = iteration == cfg.iterations or self.stopping
        val: dict[str, float] = {}
        if trainer.val_loader is not None and (validates or last):
            val = self.validate(iteration)
            metrics.update({f"val/{k}": v for k, v in val.items()})
        scheduler = trainer.scheduler
        if scheduler is not None and trainer.config.scheduler is not None \
                and trainer.config.scheduler.interval == "iteration":
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                if val:  # it needs a metric: the validation loss, when there is one
                    scheduler.step(val["loss"])
            else:
                scheduler.step()
        state.phase = "done"
        if wait:
            timed = self._agree(now=True)
        saved = timed or trainer.checkpoint_due(end_of_iteration=True) or self.stopping
        if saved:
            trainer.save_checkpoint()
        if val or saved:  # keep evaluation and checkpoint time out of step_time and throughput
            self.logged_at, self.samples = (time.perf_counter(), state.global_step), 0
        if trainer.hooks.kit_iteration_end is not None:
            trainer.hooks.kit_iteration_end(trainer=trainer, iteration=iteration, metrics=metrics)
        if wait:
            self._stop_if_signalled()
        if self.stopping and not saved:  # asked for in kit_iteration_end: keep where it stopped
            trainer.save_checkpoint()

    # -- resuming -------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The training losses not yet logged, so a resumed run logs what a straight one would."""
        return {
            "window": torch.stack(self.window) if self.window else None,
            "iter_sum": torch.as_tensor(self.iter_sum).detach(),
            "iter_count": self.iter_count,
            "skipped": self.skipped,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = self.trainer.device
        window = state.get("window")
        self.window = list(window.to(device).unbind(0)) if window is not None else []
        if "iter_sum" in state:
            self.iter_sum = state["iter_sum"].to(device)
            self.iter_count = int(state["iter_count"])
        self.skipped = int(state.get("skipped", 0))

    # -- evaluation -----------------------------------------------------------------

    def _evaluate(self, loader: Any, split: Literal["val", "test"]) -> dict[str, float]:
        """One pass over ``loader``; results reduced over every rank.

        Ranks may see different numbers of batches (an evaluation split is sharded without
        padding, so no sample counts twice): the pass runs no collective until its end, and
        a stop signal is checked per batch only in one process (with several, at the next
        step boundary every rank shares).
        """
        trainer, backend, task = self.trainer, self.backend, self.task
        model = trainer.model
        assert model is not None
        hooks = trainer.hooks
        begin, end = ("kit_val_step_begin", "kit_val_step_end") if split == "val" else \
            ("kit_test_step_begin", "kit_test_step_end")
        import torchmetrics

        mean_loss = torchmetrics.MeanMetric(nan_strategy="ignore").to(trainer.device)
        metrics: list[torchmetrics.Metric] | None = None
        classes = 0
        was_training = model.training
        model.eval()
        with torch.inference_mode():
            with backend.autocast():
                for batch_idx, batch in enumerate(loader):
                    if trainer.stop_signal is not None and not self.distributed:
                        trainer.interrupt()
                    begin_hook = getattr(hooks, begin)  # read each time: plugins may come and go
                    if begin_hook is not None:
                        begin_hook(trainer=trainer, batch_idx=batch_idx)
                    out = task.evaluation_step(self.eval_forward, backend.to_device(batch))
                    loss = out.loss.detach().float()
                    mean_loss.update(loss, out.size)
                    if metrics is None and trainer.metrics:  # built when predictions show their shape
                        classes = _classes(out.preds) if task.classification else 0
                        metrics = trainer.new_metrics(classes)
                    for metric in metrics or ():
                        metric.update(out.preds, out.targets)
                    end_hook = getattr(hooks, end)
                    if end_hook is not None:
                        end_hook(trainer=trainer, batch_idx=batch_idx, loss=loss, evaluation=out)
            model.train(was_training)
            if self.distributed and trainer.metrics:  # a rank without batches builds them alike
                agreed = backend.all_reduce(torch.tensor([float(classes)]), "max")
                if metrics is None:
                    metrics = trainer.new_metrics(int(agreed.item()))
            results = {"loss": float(mean_loss.compute())}  # torchmetrics sums over every rank
            for spec, metric in zip(trainer.metrics, metrics or (), strict=False):
                results[spec.name] = float(metric.compute())
        return results

    def validate(self, iteration: int) -> dict[str, float]:
        """One validation pass, firing the ``kit_val_*`` hooks and recording ``val/*``."""
        trainer = self.trainer
        hooks = trainer.hooks
        if hooks.kit_val_begin is not None:
            hooks.kit_val_begin(trainer=trainer, iteration=iteration)
        results = self._evaluate(trainer.val_loader, "val")
        trainer.record_results("val", results)
        if hooks.kit_val_end is not None:
            hooks.kit_val_end(trainer=trainer, iteration=iteration, val_results=results)
        return results

    def test(self) -> dict[str, float]:
        """One test pass, firing the ``kit_test_*`` hooks and recording ``test/*``."""
        trainer = self.trainer
        hooks = trainer.hooks
        if hooks.kit_test_begin is not None:
            hooks.kit_test_begin(trainer=trainer)
        results = self._evaluate(trainer.test_loader, "test")
        trainer.record_results("test", results)
        if hooks.kit_test_end is not None:
            hooks.kit_test_end(trainer=trainer, test_results=results)
        if self.distributed:  # a signal during the pass: every rank stops here, together
            self._stop_if_signalled()
        return results
