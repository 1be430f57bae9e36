"""The hook contract: every event kit fires, in the order it fires them.

A plugin implements any subset of these hooks with ``@kit.hookimpl`` and may accept
any subset of each hook's arguments. kit calls hooks with keywords only, and arguments
only ever grow, so a plugin written today keeps working. The same events fire in the
same order on every backend; ``tests/backends`` asserts it.

The loop, as the hooks see it, in firing order (``iteration`` counts from 1; it is an
epoch in epoch-based training and one optimizer step in step-based training; ``last``
is ``iteration == iterations`` and ``stopping`` is ``trainer.should_stop``). Nesting is
by indentation: a ``for`` block repeats, an ``if`` block may be skipped, and lines that
call no hook say what happens in between. ``tests/core/test_hookspecs.py`` checks that
real runs fire their hooks in exactly this order::

    kit_train_begin(trainer)
    for iteration in range(start + 1, iterations + 1):  # none when stopping already
        kit_iteration_begin(trainer, iteration)
        for batch_idx, batch in train_loader:  # step-based: the iteration's grad_accum batches
            if step-based and the loader ran out:
                kit_loader_exhausted(trainer, iteration)  # then it starts over
            kit_step_begin(trainer, iteration, batch_idx)
            forward and loss
            kit_before_backward(trainer, loss)
            backward
            kit_after_backward(trainer)
            if this is the step's last micro-batch (every grad_accum batches):
                kit_before_optimizer_step(trainer, optimizer)
                kit_skip_optimizer_step(trainer, optimizer, loss)  # a reason vetoes the step
                if it gave a reason:
                    kit_metric_recorded(trainer, record)  # train/skipped_steps
                    kit_metric_recorded(trainer, record)  # train/skip_reason
                else clip, then the optimizer and a per-step scheduler step
                gradients are zeroed; global_step += 1
            if the optimizer stepped and global_step % log_every_n_steps == 0:
                for name in train/loss, train/lr, train/step_time, train/throughput:
                    kit_metric_recorded(trainer, record)
            kit_step_end(trainer, iteration, batch_idx, loss)
            if epoch-based, the optimizer stepped and a step/time save is due:
                kit_checkpoint_save(trainer, checkpoint)  # mid-epoch (not on its last batch)
            if stopping: break
        if epoch-based:
            if a loader without a length left a partial accumulation, the optimizer steps:
                kit_before_optimizer_step(trainer, optimizer)
                kit_skip_optimizer_step(trainer, optimizer, loss)  # as above
                if global_step % log_every_n_steps == 0:
                    for name in train/loss, train/lr, train/step_time, train/throughput:
                        kit_metric_recorded(trainer, record)
                if a step/time save is due:
                    kit_checkpoint_save(trainer, checkpoint)
            if the loader ran out (the pass was not cut short by stopping):
                kit_loader_exhausted(trainer, iteration)
            kit_metric_recorded(trainer, record)          # train/loss_epoch
        if there is a val loader and (iteration % eval_frequency == 0 or last or stopping):
            kit_val_begin(trainer, iteration)
            for batch_idx, batch in val_loader:
                kit_val_step_begin(trainer, batch_idx)
                kit_val_step_end(trainer, batch_idx, loss, evaluation)
            for name in val/loss, val/<metric>:
                kit_metric_recorded(trainer, record)
            kit_val_end(trainer, iteration, val_results)
        if iteration % save_frequency == 0 or last or stopping or a step/time save is due:
            kit_checkpoint_save(trainer, checkpoint)      # then written atomically
        kit_iteration_end(trainer, iteration, metrics)
        if stopping:
            if this iteration was not saved (the stop was asked for in kit_iteration_end):
                kit_checkpoint_save(trainer, checkpoint)
            break
    if there is a test loader:
        kit_test_begin(trainer)
        for batch_idx, batch in test_loader:
            kit_test_step_begin(trainer, batch_idx)
            kit_test_step_end(trainer, batch_idx, loss, evaluation)
        for name in test/loss, test/<metric>:
            kit_metric_recorded(trainer, record)
        kit_test_end(trainer, test_results)
    kit_train_end(trainer)                                # always, however the run ended

    A step/time save is one due by checkpoint.every_n_steps or checkpoint.every_n_seconds.

    resuming:         kit_checkpoint_load(trainer, checkpoint) fires before kit_train_begin
                      (--mode continue, or auto continuing a run that has a checkpoint),
                      then the loop goes on where the checkpoint was taken: a mid-epoch one
                      fires kit_iteration_begin again and goes on from the next batch; one
                      taken during validation goes straight to that iteration's validation.
    --mode evaluate:  kit_checkpoint_load, kit_train_begin, the validation block (when there
                      is a val loader), the test block, kit_train_end; nothing is saved.
    on an error:      kit_exception(trainer, error), then kit_train_end.
    on a signal:      the current optimizer step (all its grad_accum batches; step-based: the
                      iteration's training) or validation or test batch finishes; then
                      kit_checkpoint_save(trainer, checkpoint) when training (unless this
                      state is saved already), kit_interrupt(trainer, signum), kit_train_end.
                      A second signal stops at once: kit_interrupt, kit_train_end, no save.

Loss tensors handed to hooks are detached and stay on the device: converting one to
a Python number forces a host sync, so do it only when you log. Hooks that nobody
implements are never dispatched.

With several processes (``backend: ddp``) every hook above fires on every rank, in this
order, at the same steps, with ``trainer.rank``, ``trainer.world_size`` and
``trainer.is_global_zero`` set; each rank sees its own share of the batches. Except:

- ``kit_metric_recorded`` fires on global rank zero only, with values reduced over every
  rank (train loss: the mean of the ranks' means; validation and test: over every sample).
  Loggers are registered on global rank zero only.
- ``metrics`` of ``kit_iteration_end`` and the results of ``kit_val_end``/``kit_test_end``
  are those reduced values, the same on every rank; the ``loss`` of the step hooks is this
  rank's own.
- ``kit_checkpoint_save`` fires on every rank (each adds what it wants kept), but only
  rank zero's ``checkpoint`` is written. Setting ``trainer.should_stop`` on any rank stops
  every rank at the same optimizer step: at once when set at an epoch's end or after a
  validation, otherwise at the ranks' next agreement, within about 0.2 s of training
  (``kit.loop.AGREE_EVERY_S``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kit.markers import hookspec

if TYPE_CHECKING:
    import torch

    from kit.metrics import MetricRecord
    from kit.tasks import Evaluation
    from kit.trainer import Trainer

__all__ = [
    "HOOK_NAMES",
    "kit_checkpoint_load",
    "kit_checkpoint_save",
    "kit_exception",
    "kit_interrupt",
    "kit_iteration_begin",
    "kit_iteration_end",
    "kit_loader_exhausted",
    "kit_metric_recorded",
    "kit_step_begin",
    "kit_step_end",
    "kit_test_begin",
    "kit_test_end",
    "kit_test_step_begin",
    "kit_test_step_end",
    "kit_train_begin",
    "kit_train_end",
    "kit_val_begin",
    "kit_val_end",
    "kit_val_step_begin",
    "kit_val_step_end",
]

# -- run ---------------------------------------------------------------------------


@hookspec
def kit_train_begin(trainer: Trainer) -> None:
    """Training starts: the model, optimizer and loaders are built and on the device.

    :param trainer: the running trainer. A hook may set ``trainer.should_stop`` or
        adjust the model and optimizer before the first step.
    """


# -- iteration and step ------------------------------------------------------------


@hookspec
def kit_iteration_begin(trainer: Trainer, iteration: int) -> None:
    """An iteration starts: an epoch (epoch-based) or one optimizer step (step-based).

    :param trainer: the running trainer; may be changed (``trainer.should_stop``).
    :param iteration: the iteration about to run, counting from 1.
    """


@hookspec
def kit_step_begin(trainer: Trainer, iteration: int, batch_idx: int) -> None:
    """A training batch is about to go through forward and backward.

    :param trainer: the running trainer; read-only by convention, this is the hot path.
    :param iteration: the current iteration.
    :param batch_idx: the batch's index in the current pass over the training loader.
    """


@hookspec
def kit_before_backward(trainer: Trainer, loss: torch.Tensor) -> None:
    """A training batch's loss is about to go through backward.

    Lightning calls this point ``on_before_backward``.

    Fires on every rank, for every micro-batch, with this rank's own loss.

    :param trainer: the running trainer; read-only by convention, this is the hot path.
    :param loss: the batch's loss: a detached scalar tensor on the training device, not
        divided by ``grad_accum``. Do not mutate it; ``.item()`` forces a sync.
    """


@hookspec
def kit_after_backward(trainer: Trainer) -> None:
    """Backward ran: each parameter's ``.grad`` holds this optimizer step's gradients so far.

    Lightning calls this point ``on_after_backward``. Fires on every rank, for every
    micro-batch. Under ``precision: "16"`` the gradients are still multiplied by the grad
    scaler's scale; with several ranks they are averaged over ranks only after the step's
    last micro-batch. Gradients are zeroed after the optimizer step, so every
    micro-batch's are here.

    :param trainer: the running trainer; read-only by convention.
    """


@hookspec
def kit_before_optimizer_step(trainer: Trainer, optimizer: torch.optim.Optimizer) -> None:
    """The optimizer is about to step: plugins see the finished gradients.

    Lightning calls this point ``on_before_optimizer_step``. Fires on every rank, once per
    optimizer step, after the step's last micro-batch: gradients are complete, averaged
    over ranks, unscaled (``precision: "16"``) and not yet clipped
    (``training.clip_grad_norm`` comes next). Every rank sees the same gradients.

    :param trainer: the running trainer; read-only by convention.
    :param optimizer: the optimizer about to step. A plugin may change the gradients
        (its own clipping, say), the same way on every rank.
    """


@hookspec(firstresult=True)
def kit_skip_optimizer_step(trainer: Trainer, optimizer: torch.optim.Optimizer,
                            loss: torch.Tensor) -> str | None:
    """Veto this optimizer step: return why (a short text) to skip it, or ``None``.

    ``firstresult``: the first implementation that returns a reason decides, and the rest
    are not called. Fires after :func:`kit_before_optimizer_step` (gradients unscaled, not
    clipped), on every rank; with several ranks the step is skipped on every rank when any
    of them vetoes it (one more small all-reduce per step, paid only when a plugin
    implements this hook). A skipped step zeroes the gradients without stepping the
    optimizer or a per-step scheduler (the grad scaler still updates, so fp16 recovers
    from overflow); ``global_step`` still counts it, so log, save and iteration cadence
    are unchanged and resume stays exact. kit records ``train/skipped_steps`` (the run's
    count so far) and ``train/skip_reason`` (text) at that step, and leaves the skipped
    step's losses out of ``train/loss``.

    :param trainer: the running trainer; read-only by convention.
    :param optimizer: the optimizer that would step.
    :param loss: the loss of the step's last micro-batch, detached; non-finite gradients
        from any micro-batch show in the gradients themselves.
    """


@hookspec
def kit_step_end(trainer: Trainer, iteration: int, batch_idx: int, loss: torch.Tensor) -> None:
    """A training batch went through backward (and the optimizer, on its last micro-batch).

    :param trainer: the running trainer; may set ``trainer.should_stop``.
    :param iteration: the current iteration.
    :param batch_idx: the batch's index in the current pass over the training loader.
    :param loss: the batch's loss: a detached scalar tensor on the training device,
        not divided by ``grad_accum``. Do not mutate it; ``.item()`` forces a sync.
    """


@hookspec
def kit_loader_exhausted(trainer: Trainer, iteration: int) -> None:
    """The training loader ran out of batches (end of an epoch).

    Not fired when a pass is cut short by ``trainer.should_stop``. In step-based
    training it fires between the steps where the loader restarts.

    :param trainer: the running trainer; may be changed.
    :param iteration: the iteration during which the loader ran out.
    """


# -- validation --------------------------------------------------------------------


@hookspec
def kit_val_begin(trainer: Trainer, iteration: int) -> None:
    """Validation starts; the model is in eval mode and gradients are off.

    :param trainer: the running trainer; may be changed.
    :param iteration: the iteration being validated.
    """


@hookspec
def kit_val_step_begin(trainer: Trainer, batch_idx: int) -> None:
    """A validation batch is about to be evaluated.

    :param trainer: the running trainer; read-only by convention.
    :param batch_idx: the batch's index in the validation loader.
    """


@hookspec
def kit_val_step_end(trainer: Trainer, batch_idx: int, loss: torch.Tensor,
                     evaluation: Evaluation) -> None:
    """A validation batch was evaluated.

    :param trainer: the running trainer; read-only by convention.
    :param batch_idx: the batch's index in the validation loader.
    :param loss: the batch's mean loss, a detached tensor on the device.
    :param evaluation: what the task made of the batch (:class:`kit.Evaluation`): ``loss``,
        ``size`` and the ``preds`` and ``targets`` the metrics compare, on the device
        (``None`` when the task gives none). Read-only.
    """


@hookspec
def kit_val_end(trainer: Trainer, iteration: int, val_results: dict[str, float]) -> None:
    """Validation finished and its results were recorded.

    :param trainer: the running trainer; may set ``trainer.should_stop`` (early stopping).
    :param iteration: the iteration that was validated.
    :param val_results: ``{"loss": …, "<metric>": …}`` over the whole validation set,
        as Python floats. The dict is kit's: do not mutate it.
    """


# -- end of an iteration -----------------------------------------------------------


@hookspec
def kit_iteration_end(trainer: Trainer, iteration: int, metrics: dict[str, float]) -> None:
    """An iteration finished, after its validation and checkpoint (when due).

    :param trainer: the running trainer; may set ``trainer.should_stop``.
    :param iteration: the iteration that finished.
    :param metrics: namespaced values computed during the iteration (``train/loss_epoch``,
        ``val/loss``, …). In step-based training it holds only what was computed at this
        step (no host sync is forced to fill it). A plugin may add entries.
    """


# -- test --------------------------------------------------------------------------


@hookspec
def kit_test_begin(trainer: Trainer) -> None:
    """The test pass starts, after training (or alone, when evaluating).

    :param trainer: the running trainer; may be changed.
    """


@hookspec
def kit_test_step_begin(trainer: Trainer, batch_idx: int) -> None:
    """A test batch is about to be evaluated.

    :param trainer: the running trainer; read-only by convention.
    :param batch_idx: the batch's index in the test loader.
    """


@hookspec
def kit_test_step_end(trainer: Trainer, batch_idx: int, loss: torch.Tensor,
                      evaluation: Evaluation) -> None:
    """A test batch was evaluated.

    :param trainer: the running trainer; read-only by convention.
    :param batch_idx: the batch's index in the test loader.
    :param loss: the batch's mean loss, a detached tensor on the device.
    :param evaluation: what the task made of the batch (:class:`kit.Evaluation`): ``loss``,
        ``size`` and the ``preds`` and ``targets`` the metrics compare, on the device
        (``None`` when the task gives none). Read-only.
    """


@hookspec
def kit_test_end(trainer: Trainer, test_results: dict[str, float]) -> None:
    """The test pass finished and its results were recorded.

    :param trainer: the running trainer; may be changed.
    :param test_results: ``{"loss": …, "<metric>": …}`` over the whole test set.
    """


@hookspec
def kit_train_end(trainer: Trainer) -> None:
    """The run ends: fires once, however it ended; close files and connections here.

    :param trainer: the trainer; ``trainer.status`` is ``finished``, ``failed`` or
        ``interrupted``, and ``trainer.results`` holds the final results.
    """


# -- anytime -----------------------------------------------------------------------


@hookspec
def kit_metric_recorded(trainer: Trainer, record: MetricRecord) -> None:
    """A value was recorded through ``trainer.record()``: the one way metrics reach loggers.

    :param trainer: the running trainer; read-only by convention.
    :param record: the immutable record: ``name`` (namespaced, ``train/loss``), ``value``
        (a Python number, or text), ``kind`` (``scalar``, ``text``, …), ``split``
        (``train``, ``val``, ``test`` or None), ``step`` (global optimizer step),
        ``iteration`` and ``wall_time`` (seconds since the epoch).
    """


@hookspec
def kit_checkpoint_save(trainer: Trainer, checkpoint: dict[str, Any]) -> None:
    """A checkpoint is about to be written; plugins add their own state to it.

    :param trainer: the running trainer; read-only by convention.
    :param checkpoint: the mutable checkpoint dict. Add state under
        ``checkpoint["plugins"]["<your name>"]``, using only tensors and plain Python
        data (checkpoints load with ``weights_only=True``).
    """


@hookspec
def kit_checkpoint_load(trainer: Trainer, checkpoint: dict[str, Any]) -> None:
    """A checkpoint was loaded and kit restored its own state; plugins restore theirs.

    Fires in ``continue`` (everything restored) and ``evaluate`` (the model only).

    :param trainer: the trainer being restored; may be changed.
    :param checkpoint: the loaded checkpoint dict, as saved.
    """


@hookspec
def kit_exception(trainer: Trainer, error: BaseException) -> None:
    """An exception escaped the run; ``kit_train_end`` follows, then it propagates.

    :param trainer: the failing trainer; ``trainer.status`` is ``failed``.
    :param error: the exception. Hooks must not raise; kit reports the original error.
    """


@hookspec
def kit_interrupt(trainer: Trainer, signum: int) -> None:
    """A signal (SIGTERM, SIGINT, SIGUSR1) stopped the run; ``kit_train_end`` follows.

    When training, a checkpoint was saved first; ``kit run`` then exits with 128+signum.
    Also fired when a second signal (or Ctrl-C outside a run's loops) aborts at once.

    :param trainer: the interrupted trainer; ``trainer.status`` is ``interrupted``.
    :param signum: the signal's number.
    """


HOOK_NAMES: tuple[str, ...] = tuple(name for name in list(globals()) if name.startswith("kit_"))
"""Every hook, in the order this module defines them (firing order)."""
