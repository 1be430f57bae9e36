"""continue and evaluate: exact resume after SIGKILL and signals, config diffs, evaluation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import kit
from kit.errors import CheckpointError, ConfigError, RunInterrupted

TESTS = Path(__file__).resolve().parents[1]

# Shuffling, dropout, an LR scheduler, Adam; 4 batches per epoch, a checkpoint every 5 steps:
# step 5 is the second batch of the second epoch.
RESUME = {
    "model": {"target": "tiny_task:build_model", "kwargs": {"dropout": 0.3}},
    "data": {"target": "tiny_task:build_data", "batch_size": 8},
    "optimizer": {"name": "adam", "lr": 0.01},
    "scheduler": {"name": "StepLR", "kwargs": {"step_size": 1, "gamma": 0.7}},
    "training": {"iterations": 4, "device": "cpu", "log_every_n_steps": 1, "save_frequency": 100},
    "loggers": [{"jsonl": {"flush_seconds": 0}}],  # every line reaches the OS before a SIGKILL
}


def losses(run_dir: Path) -> dict[int, float]:
    """train/loss by step from metrics.jsonl; a step logged twice (before a kill and after the
    resume) must have logged the same value both times."""
    seen: dict[int, float] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["name"] == "train/loss":
            assert seen.setdefault(record["step"], record["value"]) == record["value"], record
    return seen


def assert_same_model(a: kit.Trainer, b: kit.Trainer) -> None:
    assert a.model is not None and b.model is not None
    for (name, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(x, y), name


class SignalAt:
    """Sends this process ``signum`` when a hook reaches a point, like an orchestrator would."""

    def __init__(self, signum: int, *, step: int | None = None, val_batch: int | None = None,
                 times: int = 1) -> None:
        self.signum, self.step, self.val_batch, self.times = signum, step, val_batch, times
        self.fired = False

    def _fire(self) -> None:
        if not self.fired:
            self.fired = True
            for _ in range(self.times):
                os.kill(os.getpid(), self.signum)

    @kit.hookimpl
    def kit_step_end(self, trainer: kit.Trainer) -> None:
        if trainer.global_step == self.step:
            self._fire()

    @kit.hookimpl
    def kit_val_step_end(self, trainer: kit.Trainer, batch_idx: int) -> None:
        if self.val_batch is not None and trainer.iteration == 2 and batch_idx == self.val_batch:
            self._fire()


KILLED_RUN = """
import os, signal, sys
import kit
from kit.config import load_config

class KillAt:
    @kit.hookimpl
    def kit_step_end(self, trainer):
        if trainer.global_step == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)

kit.Trainer(load_config(sys.argv[1]), plugins=[KillAt()], autoload=False).run()
"""


@pytest.mark.parametrize("fmt", ["torch", "safetensors", "lightning"])
def test_resume_after_sigkill_is_bitwise_identical(
    fmt: str, kit_config: Any, make_config: Any, write_config: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    if fmt != "torch":
        pytest.importorskip("safetensors")
    overrides = {**RESUME, "checkpoint": {"format": fmt, "every_n_steps": 5}}
    straight = kit.Trainer(kit_config(**overrides), autoload=False)
    straight.run()
    assert straight.run_dir is not None

    path = write_config(make_config(**overrides, runs_dir=str(Path(straight.run_dir).parents[2] / "killed")))
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    killed = subprocess.run([sys.executable, "-c", KILLED_RUN, str(path), "7"], env=env,
                            capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = kit.Trainer(kit.load_config(path), mode="continue", autoload=False)
    resumed.run()
    err = capfd.readouterr().err
    assert "reclaimed a stale lock" in err  # SIGKILL left the lock behind
    assert "from step-00000005 (iteration 2, step 5)" in err  # mid-epoch

    assert resumed.run_dir is not None
    assert losses(resumed.run_dir) == losses(straight.run_dir)
    assert len(losses(straight.run_dir)) == 16
    assert_same_model(straight, resumed)
    assert resumed.results == straight.results


@pytest.mark.parametrize("where", ["train-step", "validation", "step-mode"])
def test_a_stop_signal_saves_and_continue_matches_a_straight_run(kit_config: Any, where: str) -> None:
    overrides: dict[str, Any] = dict(RESUME)
    signal_at = SignalAt(signal.SIGTERM, step=6)
    if where == "validation":
        signal_at = SignalAt(signal.SIGUSR1, val_batch=1)
    elif where == "step-mode":
        overrides["training"] = {**RESUME["training"], "type": "step", "iterations": 14, "eval_frequency": 4,
                                 "save_frequency": 4}
    straight = kit.Trainer(kit_config(**overrides), autoload=False)
    straight.run()

    first = kit.Trainer(kit_config(**overrides), plugins=[signal_at], autoload=False)
    with pytest.raises(RunInterrupted) as info:
        first.run()
    assert info.value.signum == signal_at.signum and info.value.checkpoint is not None
    assert first.status == "interrupted" and first.run_dir is not None
    summary = json.loads((first.run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored

    resumed = kit.Trainer(kit_config(**overrides), mode="continue", autoload=False)
    resumed.run()
    assert resumed.run_dir == first.run_dir and resumed.status == "finished"
    assert losses(first.run_dir) == losses(straight.run_dir)  # type: ignore[arg-type]
    assert_same_model(straight, resumed)
    assert resumed.results == straight.results


def test_a_second_sigint_aborts_at_once_and_keeps_the_last_checkpoint(kit_config: Any) -> None:
    trainer = kit.Trainer(kit_config(training={"iterations": 3}), autoload=False,
                          plugins=[SignalAt(signal.SIGINT, step=6, times=2)])
    with pytest.raises(RunInterrupted) as info:
        trainer.run()
    assert info.value.aborted and info.value.signum == signal.SIGINT and info.value.checkpoint is None
    assert trainer.status == "interrupted"
    store = trainer.checkpoints
    assert store is not None
    assert [p.name for p in store.list()] == ["step-00000004"]  # nothing saved after the abort
    assert store.latest() is not None


def test_continue_extends_a_finished_run_and_records_the_change(
    kit_config: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    first = kit.Trainer(kit_config(training={"iterations": 2}), autoload=False)
    first.run()
    assert first.run_dir is not None
    more = kit.Trainer(kit_config(training={"iterations": 3}, loggers=["jsonl"]), mode="continue",
                       autoload=False)
    more.run()
    assert more.run_dir == first.run_dir and more.iteration == 3 and more.global_step == 12
    err = capfd.readouterr().err
    assert "training.iterations: 2 -> 3" in err and "loggers: [] -> [{'name': 'jsonl'" in err
    changes = [json.loads(line) for line in (first.run_dir / "config_changes.jsonl").read_text().splitlines()]
    assert {c["key"] for c in changes[0]["changes"]} == {"training.iterations", "loggers"}
    assert "iterations: 3" in (first.run_dir / "config.yaml").read_text()


def test_continue_refuses_changes_that_break_resumption(kit_config: Any) -> None:
    kit.Trainer(kit_config(), autoload=False).run()
    changed = kit_config(optimizer={"name": "adam"}, training={"seed": 3})
    with pytest.raises(ConfigError, match=r"optimizer\.name: 'sgd' -> 'adam'; training\.seed: 0 -> 3"):
        kit.Trainer(changed, mode="continue", autoload=False).run()
    forced = kit.Trainer(changed, mode="continue", autoload=False, allow_config_change=True)
    forced.run()
    assert forced.status == "finished"


def test_continue_with_nothing_to_continue_is_a_clear_error(kit_config: Any) -> None:
    with pytest.raises(ConfigError, match="no run of experiment 'tiny'"):
        kit.Trainer(kit_config(), mode="continue", autoload=False).run()


def test_evaluate_loads_best_last_or_a_path_and_never_writes_checkpoints(
    kit_config: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    config = kit_config(training={"iterations": 3}, checkpoint={"monitor": "val/accuracy", "mode": "max",
                                                                "keep_last": 1})
    trained = kit.Trainer(config, autoload=False)
    trained.run()
    assert trained.run_dir is not None and trained.checkpoints is not None
    before = sorted(p.name for p in trained.checkpoints.folders())
    best = trained.checkpoints.best()
    assert best is not None and trained.best is not None

    evaluated = kit.Trainer(config, mode="evaluate", autoload=False)
    results = evaluated.run()
    assert evaluated.run_dir == trained.run_dir and evaluated.global_step == trained.best["step"]
    assert set(results) == {"val", "test"}
    assert results["val"]["accuracy"] == pytest.approx(trained.best["value"])
    assert capsys.readouterr().out == ""  # library code returns results; `kit run` prints them
    assert evaluated.last_checkpoint == best
    saved = json.loads((trained.run_dir / f"evaluate-{best.name}.json").read_text())
    assert saved["results"] == results

    last = kit.Trainer(config, mode="evaluate", checkpoint="last", autoload=False)
    assert last.run()["test"] == trained.results["test"]
    by_path = kit.Trainer(config, mode="evaluate", checkpoint=str(best / "checkpoint.pt"), autoload=False)
    assert by_path.run()["val"] == results["val"]
    assert sorted(p.name for p in trained.checkpoints.folders()) == before
    assert json.loads((trained.run_dir / "summary.json").read_text())["mode"] == "new"

    with pytest.raises(ConfigError, match="--checkpoint: checkpoint nowhere not found"):
        kit.Trainer(config, mode="evaluate", checkpoint="nowhere", autoload=False).run()
    unmonitored = kit.Trainer(kit_config(experiment="other"), autoload=False)
    unmonitored.run()
    with pytest.raises(CheckpointError, match="no best checkpoint"):
        kit.Trainer(kit_config(experiment="other"), mode="evaluate", checkpoint="best", autoload=False).run()
