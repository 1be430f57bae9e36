"""timer: stops before a wall-clock budget with a checkpoint at the stop, counts training time
across continues, and refuses a max_time it cannot read in one line."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

import pytest
from clitools import kit as kit_cli
from clitools import kit_process, one_error_line

import kit

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "digits" / "config.yaml"
STEP = 0.1  # seconds each training batch sleeps
BUDGET = 1.0


class SleepPerStep:
    """Makes every step take STEP seconds, and notes when training began and each step ended."""

    def __init__(self) -> None:
        self.began = 0.0
        self.ends: list[float] = []

    @kit.hookimpl
    def kit_train_begin(self) -> None:
        self.began = time.monotonic()

    @kit.hookimpl
    def kit_step_begin(self) -> None:
        time.sleep(STEP)

    @kit.hookimpl
    def kit_step_end(self) -> None:
        self.ends.append(time.monotonic())


def checkpoint(run_dir: Path, step: int) -> dict[str, Any]:
    data: dict[str, Any] = kit.load_torch_file(run_dir / "checkpoints" / f"step-{step:08d}" / "checkpoint.pt")
    return data


def said(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if "timer:" in line]


def test_stops_before_the_budget_and_counts_it_across_continues(
    kit_config: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    def run(max_time: Any, **kwargs: Any) -> tuple[kit.Trainer, SleepPerStep]:
        sleeper = SleepPerStep()
        config = kit_config(training={"iterations": 6}, plugins=[{"timer": {"max_time": max_time}}])
        trainer = kit.Trainer(config, plugins=[sleeper], autoload=False, **kwargs)
        trainer.run()
        assert trainer.status == "finished"
        return trainer, sleeper

    # a process's first validation imports and builds its metrics (seconds, when cold): done here
    # first, so the budget run's steps are regular and its stop is where the budget says
    kit.Trainer(kit_config(experiment="warm-up", training={"iterations": 1}), autoload=False).run()
    first, sleeper = run(BUDGET)  # 6 epochs of 4 steps would take 2.4 s
    assert first.run_dir is not None
    stop = first.global_step
    assert len(sleeper.ends) == stop < 20
    times = [sleeper.began, *sleeper.ends]
    gaps = [b - a for a, b in itertools.pairwise(times)]  # each step, with any validation and save before it
    trained, before = times[-1] - times[0], times[-2] - times[0]
    assert trained < BUDGET + gaps[-1]  # stopped before the budget plus one step,
    surprise = max(0.0, gaps[-1] - max(gaps[:-1]))  # and within it unless that step took longer than any
    assert trained <= BUDGET + surprise + 0.02
    assert before + max(gaps[:-1]) <= BUDGET + 0.02  # not earlier: one more step still fitted there
    assert trained + max(gaps) > BUDGET - 0.02  # here one more of the longest step might not fit
    state = checkpoint(first.run_dir, stop)["plugins"]["timer"]  # a checkpoint at the stop step
    assert state["longest"] == pytest.approx(max(gaps), abs=0.02)
    assert trained <= state["elapsed"] < trained + 1  # and its validation and save since
    lines = said(capsys)
    assert len(lines) == 1 and lines[0].startswith(f"kit: timer: stopping at step {stop}: ")
    assert "trained of the 00:00:00:01 budget (1 s)" in lines[0]
    assert lines[0].endswith("go on with `--mode continue` and a larger max_time")

    again, _ = run("00:00:00:01", mode="continue", run_dir=first.run_dir)  # the budget is spent
    assert again.global_step - stop <= 1  # the loop always finishes the step it is in
    assert len(said(capsys)) == 1

    longer, sleeper = run(60, mode="continue", run_dir=first.run_dir)
    assert longer.iteration == 6 and longer.global_step - again.global_step >= 8  # trained on, to the end
    assert said(capsys) == []
    final = checkpoint(first.run_dir, longer.global_step)["plugins"]["timer"]
    assert final["elapsed"] >= state["elapsed"] + (sleeper.ends[-1] - sleeper.began)  # counted across


@pytest.mark.parametrize("state", [
    "garbage", {"elapsed": "100", "longest": 1.0}, {"elapsed": float("inf"), "longest": 1.0},
    {"elapsed": 100.0, "longest": -1.0}, {"elapsed": True, "longest": 1.0}, {"longest": 1.0},
])
def test_a_malformed_state_in_a_checkpoint_is_refused_with_a_warning(
    kit_config: Any, capsys: pytest.CaptureFixture[str], state: Any
) -> None:
    from kit_contrib.plugins.timer import Timer

    timer = Timer(Timer.Options(max_time=60))
    trainer = kit.Trainer(kit_config(), autoload=False)
    timer.kit_checkpoint_load(trainer=trainer, checkpoint={"plugins": {"timer": state}})
    assert (timer.spent, timer.longest) == (0.0, 0.0)
    assert "timer: the checkpoint's timer state is malformed" in capsys.readouterr().err
    good = {"elapsed": 30.5, "longest": 2, "interval": "step"}
    timer.kit_checkpoint_load(trainer=trainer, checkpoint={"plugins": {"timer": good}})
    assert (timer.spent, timer.longest) == (30.5, 2.0)
    per_epoch = {**good, "interval": "iteration"}
    timer.kit_checkpoint_load(trainer=trainer, checkpoint={"plugins": {"timer": per_epoch}})
    assert (timer.spent, timer.longest) == (30.5, 0.0)  # a longest step says nothing of an epoch


@pytest.mark.parametrize(("max_time", "seconds"), [
    ("00:23:30:00", 84600.0), ("2:00:00:05", 172805.0), (90, 90.0), (0.5, 0.5),
])
def test_max_time_reads_days_hours_minutes_seconds_or_seconds(max_time: Any, seconds: float) -> None:
    from kit_contrib.plugins.timer import Timer

    assert Timer.Options.model_validate({"max_time": max_time}).max_time == seconds


@pytest.mark.parametrize(("max_time", "expected"), [
    ("1:2", "'1:2' is not a duration: write \"DD:HH:MM:SS\" (e.g. \"00:23:30:00\") or a number of seconds"),
    ("00:24:00:00", "'00:24:00:00' is out of range: hours go to 23, minutes and seconds to 59"),
    ("00:00:00:00", "'00:00:00:00' is not a positive, finite duration"),
    (-5, "-5 is not a positive, finite duration"),
    (True, "True is not a duration"),
])
def test_a_bad_max_time_is_one_error_line(write_config: Any, max_time: Any, expected: str) -> None:
    path = write_config(plugins=[{"timer": {"max_time": max_time}}])
    one_error_line(kit_cli("run", str(path)), f"plugins[0].options.max_time: {expected}")


@pytest.mark.slow
def test_a_bad_max_time_through_kit_run_is_one_error_line(write_config: Any, tmp_path: Path) -> None:
    path = write_config(plugins=[{"timer": {"max_time": "23:30:00"}}])
    one_error_line(kit_process("run", str(path), cwd=tmp_path),
                   "plugins[0].options.max_time: '23:30:00' is not a duration: write \"DD:HH:MM:SS\"")
    assert not (tmp_path / "runs").exists()


def test_digits_stops_at_an_epochs_end_with_interval_iteration(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    result = kit_cli("run", str(EXAMPLE), "--set", f"runs_dir={tmp_path}", "--set", "training.iterations=20",
                     "--set", "loggers=[{jsonl: {flush_seconds: 0}}]",
                     "--set", "plugins=[{timer: {max_time: 0.5, interval: iteration}}]")
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "digits").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["iteration"] < 20
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epoch_ends = [r["step"] for r in lines if r["name"] == "train/loss_epoch"]
    # no epoch was cut short: it stopped where the last whole epoch ended
    assert summary["global_step"] == epoch_ends[-1] == len(epoch_ends) * epoch_ends[0]
    state = checkpoint(run_dir, summary["global_step"])["plugins"]["timer"]
    assert state["interval"] == "iteration" and state["elapsed"] + state["longest"] > 0.5
    assert f"timer: stopping at step {summary['global_step']}" in result.stderr
    assert "the longest epoch took" in result.stderr
