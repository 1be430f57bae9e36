"""Gradient-level hooks and the step veto: what plugins see between backward and the
optimizer step, what a skipped step changes (nothing but the count) and exact resume."""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import pytest
import torch

import kit
from kit.errors import RunInterrupted


def weights(trainer: kit.Trainer) -> dict[str, torch.Tensor]:
    assert trainer.model is not None
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


class GradWatcher:
    """Records each parameter gradient's norm at the three points a plugin can look."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, float]] = []

    def _norm(self, trainer: kit.Trainer) -> float:
        assert trainer.model is not None
        grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
        return float(torch.stack([g.norm() for g in grads]).norm()) if grads else 0.0

    @kit.hookimpl
    def kit_before_backward(self, trainer: kit.Trainer, loss: torch.Tensor) -> None:
        assert not loss.requires_grad
        self.seen.append(("before_backward", self._norm(trainer)))

    @kit.hookimpl
    def kit_after_backward(self, trainer: kit.Trainer) -> None:
        self.seen.append(("after_backward", self._norm(trainer)))

    @kit.hookimpl
    def kit_before_optimizer_step(self, trainer: kit.Trainer, optimizer: torch.optim.Optimizer) -> None:
        assert optimizer is trainer.optimizer
        self.seen.append(("before_optimizer_step", self._norm(trainer)))


def test_plugins_see_the_gradients_before_they_are_zeroed(kit_config: Any) -> None:
    watcher = GradWatcher()
    config = kit_config(training={"type": "step", "iterations": 2, "grad_accum": 2})
    kit.Trainer(config, plugins=[watcher], autoload=False).run()
    names = [name for name, _ in watcher.seen]
    assert names == ["before_backward", "after_backward", "before_backward", "after_backward",
                     "before_optimizer_step"] * 2
    norms = [norm for _, norm in watcher.seen]
    for step in range(2):
        before1, after1, before2, after2, final = norms[step * 5: step * 5 + 5]
        assert before1 == 0.0  # zeroed after the previous step, not before this one's hooks
        assert after1 > 0 and before2 == after1  # accumulating over the micro-batches
        assert after2 != after1 and final == after2  # complete at the optimizer step


class ZeroGrads:
    """A plugin's own 'clipping': every gradient to zero, so plain SGD changes nothing."""

    @kit.hookimpl
    def kit_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.zero_()


def test_a_plugin_may_change_the_gradients_the_optimizer_uses(kit_config: Any) -> None:
    config = kit_config(training={"type": "step", "iterations": 3}, optimizer={"name": "sgd", "lr": 0.5})
    trainer = kit.Trainer(config, autoload=False)
    trainer.build()
    before = weights(trainer)
    zeroed = kit.Trainer(config, plugins=[ZeroGrads()], autoload=False)
    zeroed.run()
    after = weights(zeroed)
    assert all(torch.equal(before[k], after[k]) for k in before)


class Veto:
    """Vetoes the optimizer steps whose global_step (before the step) is in ``at``."""

    def __init__(self, at: set[int], reason: str = "bad batch") -> None:
        self.at, self.reason, self.asked = at, reason, 0

    @kit.hookimpl
    def kit_skip_optimizer_step(self, trainer: kit.Trainer) -> str | None:
        self.asked += 1
        return self.reason if trainer.global_step in self.at else None


class Never:
    def __init__(self) -> None:
        self.asked = 0

    @kit.hookimpl
    def kit_skip_optimizer_step(self) -> str | None:
        self.asked += 1
        return None


class WeightsAt:
    def __init__(self) -> None:
        self.by_step: dict[int, dict[str, torch.Tensor]] = {}

    @kit.hookimpl
    def kit_step_end(self, trainer: kit.Trainer) -> None:
        self.by_step[trainer.global_step] = weights(trainer)


def test_a_vetoed_step_changes_nothing_but_the_count_and_is_recorded(kit_config: Any) -> None:
    config = kit_config(training={"type": "step", "iterations": 4, "log_every_n_steps": 1},
                        scheduler={"name": "StepLR", "interval": "step", "kwargs": {"step_size": 1,
                                                                                   "gamma": 0.5}},
                        loggers=["jsonl"])
    at = WeightsAt()
    trainer = kit.Trainer(config, plugins=[Veto({2}), at], autoload=False)
    trainer.run()
    assert trainer.global_step == 4  # the skipped step still counts
    assert all(torch.equal(at.by_step[2][k], at.by_step[3][k]) for k in at.by_step[2])  # step 3 skipped
    assert not all(torch.equal(at.by_step[3][k], at.by_step[4][k]) for k in at.by_step[3])
    assert trainer.optimizer is not None
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 ** 3)  # 3 scheduler steps
    assert trainer.run_dir is not None
    lines = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    skipped = [(r["name"], r["step"], r["value"]) for r in lines if r["name"].startswith("train/skip")]
    assert skipped == [("train/skipped_steps", 3, 1), ("train/skip_reason", 3, "bad batch")]


def test_the_first_veto_decides_and_the_rest_are_not_asked(kit_config: Any) -> None:
    config = kit_config(training={"type": "step", "iterations": 3})
    first, then = Veto({0, 1, 2}), Never()
    kit.Trainer(config, plugins=[then, first], autoload=False).run()  # registered last: called first
    assert first.asked == 3 and then.asked == 0


class SignalAtStep:
    def __init__(self, step: int) -> None:
        self.step, self.sent = step, False

    @kit.hookimpl
    def kit_step_end(self, trainer: kit.Trainer) -> None:
        if trainer.global_step == self.step and not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGUSR1)


def test_resume_is_exact_with_skipped_steps_and_keeps_their_count(kit_config: Any) -> None:
    training = {"iterations": 3, "log_every_n_steps": 1}
    straight = kit.Trainer(kit_config(experiment="straight", training=training),
                           plugins=[Veto({1, 6})], autoload=False)
    straight.run()
    config = kit_config(experiment="resumed", training=training)
    with pytest.raises(RunInterrupted):
        kit.Trainer(config, plugins=[Veto({1, 6}), SignalAtStep(3)], autoload=False).run()
    resumed = kit.Trainer(config, mode="continue", plugins=[Veto({1, 6})], autoload=False)
    resumed.run()
    a, b = weights(straight), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert straight.loop is not None and resumed.loop is not None
    assert straight.loop.skipped == resumed.loop.skipped == 2
