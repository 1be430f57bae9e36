"""The documented firing order (kit/hookspecs.py), asserted event by event, per backend."""

from __future__ import annotations

from typing import Any

import pytest
from recorder import Recorder

import kit

BACKENDS = ["torch", "lightning"]


def run(config: Any, *plugins: object, backend: str) -> kit.Trainer:
    trainer = kit.Trainer(config, backend=backend, plugins=plugins, autoload=False)
    trainer.run()
    return trainer


def train_step(it: int, batch: int, steps: int | None) -> list[tuple[Any, ...]]:
    """One training batch's events; ``steps`` is global_step before the optimizer steps on this
    batch (``None``: an accumulation micro-batch, no optimizer step)."""
    events: list[tuple[Any, ...]] = [("step_begin", it, batch), ("before_backward",), ("after_backward",)]
    if steps is not None:
        events += [("before_optimizer_step", steps), ("skip_optimizer_step", steps)]
    return [*events, ("step_end", it, batch)]


def expected_epoch_order(iterations: int, train: int, val: int, test: int, *, eval_every: int = 1,
                         save_every: int = 1) -> list[tuple[Any, ...]]:
    events: list[tuple[Any, ...]] = [("train_begin",)]
    val_keys = ("accuracy", "loss")
    steps = 0
    for it in range(1, iterations + 1):
        events.append(("iteration_begin", it))
        for b in range(train):
            events += train_step(it, b, steps)
            steps += 1
        events.append(("loader_exhausted", it))
        metrics = ["train/loss_epoch"]
        last = it == iterations
        if it % eval_every == 0 or last:
            events.append(("val_begin", it))
            for b in range(val):
                events += [("val_step_begin", b), ("val_step_end", b)]
            events.append(("val_end", it, val_keys))
            metrics += ["val/accuracy", "val/loss"]
        if it % save_every == 0 or last:
            events.append(("checkpoint_save",))
        events.append(("iteration_end", it, tuple(sorted(metrics))))
    events.append(("test_begin",))
    for b in range(test):
        events += [("test_step_begin", b), ("test_step_end", b)]
    events += [("test_end", val_keys), ("train_end", "finished")]
    return events


@pytest.mark.parametrize("backend", BACKENDS)
def test_epoch_based_order(kit_config: Any, backend: str) -> None:
    recorder = Recorder()
    # 96 samples: 32 train / 32 val / 32 test, batch 8 -> 4 batches each
    config = kit_config(training={"iterations": 3, "eval_frequency": 2, "save_frequency": 2})
    run(config, recorder, backend=backend)
    got = [e for e in recorder.events if e[0] != "metric"]
    assert got == expected_epoch_order(3, 4, 4, 4, eval_every=2, save_every=2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_metrics_are_recorded_before_the_end_hooks(kit_config: Any, backend: str) -> None:
    recorder = Recorder()
    run(kit_config(training={"iterations": 1}), recorder, backend=backend)
    names = [e[0] if e[0] != "metric" else e[1] for e in recorder.events]
    assert names.index("val/loss") < names.index("val_end")
    assert names.index("test/accuracy") < names.index("test_end")
    assert names.index("train/loss_epoch") < names.index("iteration_end")


@pytest.mark.parametrize("backend", BACKENDS)
def test_step_based_order_with_accumulation(kit_config: Any, backend: str) -> None:
    recorder = Recorder()
    # 4 train batches per pass; 3 iterations x 2 micro-batches = 6 batches -> one restart
    config = kit_config(training={"type": "step", "iterations": 3, "grad_accum": 2,
                                  "eval_frequency": 3, "save_frequency": 10,
                                  "log_every_n_steps": 1})
    trainer = run(config, recorder, backend=backend)
    got = [e for e in recorder.events if e[0] != "metric"]
    expected: list[tuple[Any, ...]] = [("train_begin",)]
    batch = 0
    for it in (1, 2, 3):
        expected.append(("iteration_begin", it))
        for micro in range(2):
            if batch == 4:
                expected.append(("loader_exhausted", it))
                batch = 0
            expected += train_step(it, batch, it - 1 if micro == 1 else None)
            batch += 1
        metrics = ["train/loss"]
        if it == 3:
            expected.append(("val_begin", 3))
            expected += [e for b in range(4) for e in (("val_step_begin", b), ("val_step_end", b))]
            expected.append(("val_end", 3, ("accuracy", "loss")))
            expected.append(("checkpoint_save",))
            metrics += ["val/accuracy", "val/loss"]
        expected.append(("iteration_end", it, tuple(sorted(metrics))))
    expected.append(("test_begin",))
    expected += [e for b in range(4) for e in (("test_step_begin", b), ("test_step_end", b))]
    expected += [("test_end", ("accuracy", "loss")), ("train_end", "finished")]
    assert got == expected
    assert trainer.global_step == 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_should_stop_ends_after_the_current_step(kit_config: Any, backend: str) -> None:
    class StopAtThirdStep:
        @kit.hookimpl
        def kit_step_end(self, trainer: kit.Trainer, batch_idx: int) -> None:
            if trainer.global_step == 3:
                trainer.should_stop = True

    recorder = Recorder()
    trainer = run(kit_config(training={"iterations": 5, "save_frequency": 5}),
                  StopAtThirdStep(), recorder, backend=backend)
    got = recorder.names()
    assert got.count("step_end") == 3
    assert "loader_exhausted" not in got  # the pass was cut short
    # the stopping iteration is the last: validated and checkpointed, then test and end
    test_begin = got.index("test_begin")
    assert got[test_begin - 3: test_begin] == ["val_end", "checkpoint_save", "iteration_end"]
    assert got[-1] == "train_end"
    assert trainer.iteration == 1 and trainer.status == "finished"


@pytest.mark.parametrize("backend", BACKENDS)
def test_failure_fires_exception_then_train_end(kit_config: Any, backend: str) -> None:
    class Explode:
        @kit.hookimpl
        def kit_step_end(self, batch_idx: int) -> None:
            if batch_idx == 1:
                raise ValueError("plugin bug")

    recorder = Recorder()
    trainer = kit.Trainer(kit_config(), backend=backend, plugins=[Explode(), recorder],
                          autoload=False)
    with pytest.raises(ValueError, match="plugin bug"):
        trainer.run()
    assert recorder.events[-2:] == [("exception", "ValueError"), ("train_end", "failed")]
    assert trainer.status == "failed"


@pytest.mark.parametrize("backend", BACKENDS)
def test_ctrl_c_fires_interrupt_then_train_end(kit_config: Any, backend: str) -> None:
    class CtrlC:
        @kit.hookimpl
        def kit_step_begin(self, batch_idx: int) -> None:
            if batch_idx == 2:
                raise KeyboardInterrupt

    recorder = Recorder()
    trainer = kit.Trainer(kit_config(), backend=backend, plugins=[CtrlC(), recorder], autoload=False)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    assert recorder.events[-2:] == [("interrupt", 2), ("train_end", "interrupted")]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_stop_asked_for_in_iteration_end_is_saved_where_it_stopped(kit_config: Any, backend: str) -> None:
    class StopAfterFirst:
        @kit.hookimpl
        def kit_iteration_end(self, trainer: kit.Trainer, iteration: int) -> None:
            if iteration == 1:
                trainer.should_stop = True

    trainer = run(kit_config(training={"iterations": 5, "save_frequency": 5}), StopAfterFirst(),
                  backend=backend)
    assert trainer.iteration == 1 and trainer.checkpoints is not None
    assert [p.name for p in trainer.checkpoints.list()] == [f"step-{trainer.global_step:08d}"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_stop_asked_for_before_the_first_step_trains_nothing(kit_config: Any, backend: str) -> None:
    class StopAtOnce:
        @kit.hookimpl
        def kit_train_begin(self, trainer: kit.Trainer) -> None:
            trainer.should_stop = True

    recorder = Recorder()
    trainer = run(kit_config(), StopAtOnce(), recorder, backend=backend)
    assert trainer.global_step == 0 and "step_begin" not in recorder.names()
