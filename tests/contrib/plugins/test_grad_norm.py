"""grad_norm: the norms it records are the gradients' (checked by hand, before clipping), at
train/loss's step numbers, and the steps between cost nothing: no torch call at all."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from clitools import kit_process, one_error_line
from torch.overrides import TorchFunctionMode

import kit
from kit_contrib.plugins.grad_norm import GradNorm

DIGITS = Path(__file__).resolve().parents[3] / "examples" / "digits" / "config.yaml"


def records(run_dir: Path) -> dict[str, dict[int, Any]]:
    found: dict[str, dict[int, Any]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        found.setdefault(record["name"], {})[record["step"]] = record["value"]
    return found


class ByHand:
    """Every step's gradient norms per parameter group, in float64, from the same hook."""

    def __init__(self, norm_type: float) -> None:
        self.norm_type = norm_type
        self.at: dict[int, list[float]] = {}

    @kit.hookimpl
    def kit_before_optimizer_step(self, trainer: kit.Trainer, optimizer: torch.optim.Optimizer) -> None:
        groups = []
        for group in optimizer.param_groups:
            values = torch.cat([p.grad.double().abs().flatten() for p in group["params"]])
            groups.append(float(values.max()) if math.isinf(self.norm_type)
                          else float(values.pow(self.norm_type).sum()) ** (1 / self.norm_type))
        self.at[trainer.global_step + 1] = groups


def total(groups: list[float], norm_type: float) -> float:
    return max(groups) if math.isinf(norm_type) else sum(g ** norm_type for g in groups) ** (1 / norm_type)


@pytest.mark.parametrize("norm_type", [2.0, math.inf])
def test_norms_match_a_hand_computation_at_train_loss_steps(kit_config: Any, norm_type: float) -> None:
    """Two parameter groups; the default cadence is log_every_n_steps (2): steps 2, 4, 6, 8."""
    hand = ByHand(norm_type)
    config = kit_config(loggers=["jsonl"], optimizer={"name": "poison:two_groups"},
                        plugins=[{"grad_norm": {"norm_type": norm_type}}])
    trainer = kit.Trainer(config, plugins=[hand], autoload=False)
    trainer.run()
    assert trainer.run_dir is not None
    found = records(trainer.run_dir)
    assert set(found["grad_norm/total"]) == set(found["train/loss"]) == {2, 4, 6, 8}
    for step, value in found["grad_norm/total"].items():
        groups = hand.at[step]
        assert [found[f"grad_norm/group{i}"][step] for i in range(2)] == pytest.approx(groups, rel=1e-5)
        assert value == pytest.approx(total(groups, norm_type), rel=1e-5)
    assert len(set(found["grad_norm/total"].values())) == 4  # a different step's gradients each time


def test_the_norm_can_be_the_monitored_metric_of_best_checkpoints(kit_config: Any) -> None:
    """Recorded before the step is counted, with the step it reaches: the checkpoint taken at
    that step knows its norm."""
    config = kit_config(loggers=["jsonl"], plugins=[{"grad_norm": {"every_n_steps": 1}}],
                        training={"log_every_n_steps": 1},
                        checkpoint={"monitor": "grad_norm/total", "mode": "min", "every_n_steps": 2})
    trainer = kit.Trainer(config, autoload=False)
    trainer.run()
    assert trainer.run_dir is not None and trainer.best is not None
    found = records(trainer.run_dir)["grad_norm/total"]
    saved = {step: value for step, value in found.items() if step % 2 == 0}
    assert trainer.best["value"] == min(saved.values())
    assert trainer.best["step"] == min(saved, key=saved.__getitem__)


class Counted(GradNorm):
    """GradNorm with every torch call made inside its hooks counted, by optimizer step."""

    def __init__(self, options: GradNorm.Options) -> None:
        super().__init__(options)
        self.calls: dict[int, Counter[str]] = {}

    def _count(self, step: int) -> Any:
        calls = self.calls.setdefault(step, Counter())

        class Mode(TorchFunctionMode):
            def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
                calls[getattr(func, "__name__", str(func))] += 1
                return func(*args, **(kwargs or {}))

        return Mode()

    @kit.hookimpl
    def kit_before_optimizer_step(self, trainer: kit.Trainer, optimizer: torch.optim.Optimizer) -> None:
        with self._count(trainer.global_step + 1):
            super().kit_before_optimizer_step(trainer, optimizer)


def test_steps_between_do_no_torch_work_and_no_host_read(kit_config: Any) -> None:
    plugin = Counted(GradNorm.Options(every_n_steps=3, per_group=False))
    config = kit_config(loggers=["jsonl"], training={"iterations": 3})
    trainer = kit.Trainer(config, plugins=[plugin], autoload=False)
    trainer.run()
    assert trainer.run_dir is not None
    found = records(trainer.run_dir)
    assert set(found["grad_norm/total"]) == {3, 6, 9, 12}
    assert not any(name.startswith("grad_norm/group") for name in found)  # per_group: false
    assert sorted(plugin.calls) == list(range(1, 13))
    for step, calls in plugin.calls.items():
        if step % 3:
            assert not calls, (step, calls)
        else:
            assert calls["_foreach_norm"] >= 1 and calls["tolist"] + calls["item"] == 1, (step, calls)


def test_a_bad_option_is_one_line(write_config: Any) -> None:
    result = kit_process("run", str(write_config(plugins=[{"grad_norm": {"norm_type": 0}}])))
    one_error_line(result, "plugins[0].options.norm_type: ")


def test_digits_records_the_norm_before_clipping(tmp_path: Path) -> None:
    """Real data, a real ``kit run``: every 5th step, the unclipped norm (clipping to 0.001
    follows it); one parameter group, so group0 is the total."""
    pytest.importorskip("sklearn")
    result = kit_process(
        "run", str(DIGITS), "--set", f"runs_dir={tmp_path}", "--set", "training.iterations=1",
        "--set", "training.clip_grad_norm=0.001", "--set", "loggers=[jsonl]",
        "--set", "plugins=[{grad_norm: {every_n_steps: 5}}]")
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "digits").iterdir()
    found = records(run_dir)
    steps = json.loads((run_dir / "summary.json").read_text())["global_step"]
    assert steps >= 30 and set(found["grad_norm/total"]) == set(range(5, steps + 1, 5))
    assert found["grad_norm/group0"] == found["grad_norm/total"]
    assert all(0.01 < value < 100 for value in found["grad_norm/total"].values())
