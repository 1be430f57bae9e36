"""early_stopping: stops where its rule says on the values kit recorded, says why once, warns
about a monitor that never appears, and resumes its count exactly after a signal."""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path
from typing import Any

import pytest
from clitools import kit as kit_cli
from clitools import kit_process, one_error_line
from conftest import base_config

import kit
from kit.config import validate_config

TESTS = Path(__file__).resolve().parents[2]
EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "digits" / "config.yaml"
# Adam with dropout on the tiny task: val/loss falls to iteration 4, then rises, with noise
LEARNS = {
    "model": {"target": "tiny_task:build_model", "kwargs": {"dropout": 0.3}},
    "optimizer": {"name": "adam", "lr": 0.05},
    "training": {"iterations": 12, "device": "cpu", "log_every_n_steps": 2, "save_frequency": 100},
    "loggers": [{"jsonl": {"flush_seconds": 0}}],
}


def records(run_dir: Path, name: str) -> list[tuple[int, Any]]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["value"]) for r in lines if r["name"] == name]


def rule(values: list[float], *, mode: str, patience: int, min_delta: float) -> tuple[int | None, list[int]]:
    """The documented rule, written out: the 1-based validation at which it stops (None: never),
    and the wait count after each validation."""
    best: float | None = None
    wait, waits = 0, []
    for i, value in enumerate(values, start=1):
        better = best is None or (value < best - min_delta if mode == "min" else value > best + min_delta)
        best, wait = (value, 0) if better else (best, wait + 1)
        waits.append(wait)
        if wait >= patience:
            return i, waits
    return None, waits


def checkpoint(run_dir: Path, step: int) -> dict[str, Any]:
    data: dict[str, Any] = kit.load_torch_file(run_dir / "checkpoints" / f"step-{step:08d}" / "checkpoint.pt")
    return data


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[float]]:
    """val/loss and val/accuracy of the run without early stopping, once for this module."""
    tmp = tmp_path_factory.mktemp("straight")
    config = validate_config(base_config(tmp, **LEARNS))
    config.base_dir = TESTS
    trainer = kit.Trainer(config, autoload=False)
    trainer.run()
    assert trainer.run_dir is not None
    return {name: [v for _, v in records(trainer.run_dir, name)] for name in ("val/loss", "val/accuracy")}


@pytest.mark.parametrize(("monitor", "mode", "patience", "min_delta"), [
    ("val/loss", "min", 3, 0.0),
    ("val/loss", "min", 3, 0.01),  # the small gain at iteration 4 no longer counts
    ("val/accuracy", "max", 2, 0.0),
])
def test_stops_where_the_rule_says_on_the_recorded_values(
    kit_config: Any, capsys: pytest.CaptureFixture[str], straight: dict[str, list[float]], monitor: str,
    mode: str, patience: int, min_delta: float,
) -> None:
    values = straight[monitor]
    stop, waits = rule(values, mode=mode, patience=patience, min_delta=min_delta)
    assert stop is not None and 2 < stop < len(values)  # the case is one that stops mid-run

    options = {"monitor": monitor, "mode": mode, "patience": patience, "min_delta": min_delta}
    capsys.readouterr()
    stopped = kit.Trainer(kit_config(**LEARNS, plugins=[{"early_stopping": options}]), autoload=False)
    stopped.run()
    assert stopped.run_dir is not None and stopped.status == "finished"
    assert stopped.iteration == stop and stopped.global_step == 4 * stop
    assert [v for _, v in records(stopped.run_dir, monitor)] == values[:stop]  # it only watched
    assert [v for _, v in records(stopped.run_dir, "early_stopping/wait")] == waits
    said = [line for line in capsys.readouterr().err.splitlines() if "early_stopping" in line]
    best = values[stop - patience - 1]
    assert said == [f"kit: early_stopping: {monitor} has not improved for {patience} validations (patience "
                    f"{patience}, min_delta {min_delta:g}; best {best:.6g} at iteration {stop - patience}): "
                    f"stopping after iteration {stop}"]
    state = checkpoint(stopped.run_dir, stopped.global_step)["plugins"]["early_stopping"]
    assert state == {"monitor": monitor, "mode": mode, "best": best, "best_iteration": stop - patience,
                     "wait": patience}


SIGTERM_AT = """
import os, signal
import kit

class SigtermAt:
    @kit.hookimpl
    def kit_step_end(self, trainer):
        if trainer.global_step == {step}:
            os.kill(os.getpid(), signal.SIGTERM)
"""


@pytest.mark.slow
def test_a_signal_mid_run_then_continue_stops_where_a_straight_run_does(
    make_config: Any, tmp_path: Path, straight: dict[str, list[float]]
) -> None:
    values = straight["val/loss"]
    stop, waits = rule(values, mode="min", patience=3, min_delta=0)
    assert stop is not None
    # stopped inside the iteration after a validation that did not improve: the count is not zero
    signal_iteration = next(i for i in range(2, stop + 1) if waits[i - 2] > 0)
    step = 4 * (signal_iteration - 1) + 2
    fresh, _ = rule(values[signal_iteration - 1:], mode="min", patience=3, min_delta=0)
    assert fresh is None or fresh + signal_iteration - 1 != stop  # a count started afresh stops elsewhere

    (tmp_path / "sigterm_at.py").write_text(SIGTERM_AT.replace("{step}", str(step)))
    path = tmp_path / "config.yaml"
    plugins = [{"early_stopping": {"monitor": "val/loss", "patience": 3}}, "sigterm_at:SigtermAt"]
    path.write_text(json.dumps(make_config(**LEARNS, plugins=plugins)))
    interrupted = kit_process("run", str(path), cwd=tmp_path)
    assert interrupted.returncode == 128 + signal.SIGTERM, interrupted.stderr
    (run_dir,) = (tmp_path / "runs" / "tiny").iterdir()
    saved = checkpoint(run_dir, step)
    assert saved["progress"]["phase"] == "train"
    assert saved["plugins"]["early_stopping"]["wait"] == waits[signal_iteration - 2]

    resumed = kit.Trainer(kit.load_config(path), mode="continue", run_dir=run_dir, autoload=False)
    resumed.run()
    assert (resumed.iteration, resumed.global_step) == (stop, 4 * stop)
    assert [v for _, v in records(run_dir, "val/loss")] == values[:stop]  # resumed exactly
    assert [v for _, v in records(run_dir, "early_stopping/wait")] == waits
    assert checkpoint(run_dir, 4 * stop)["plugins"]["early_stopping"] == {
        "monitor": "val/loss", "mode": "min", "best": min(values[:stop]),
        "best_iteration": values.index(min(values[:stop])) + 1, "wait": 3}


def test_a_monitor_that_never_appears_is_a_warning_naming_the_results(
    kit_config: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    trainer = kit.Trainer(kit_config(training={"iterations": 3},
                                        plugins=[{"early_stopping": {"monitor": "val/acc", "patience": 1}}]),
                             autoload=False)
    trainer.run()
    assert trainer.iteration == 3  # it did not stop
    warnings = [line for line in capsys.readouterr().err.splitlines() if "early_stopping" in line]
    assert warnings == ["kit: warning: early_stopping: val/acc is not among the validation results "
                        "(val/accuracy, val/loss), so early_stopping will not stop this run (set its "
                        "monitor to one of them)"]


def test_a_run_without_validation_data_is_warned_at_once(
    kit_config: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    config = kit_config(data={"target": "tiny_task:build_data", "kwargs": {"with_val": False}},
                        plugins=[{"early_stopping": {"monitor": "val/loss"}}])
    kit.Trainer(config, autoload=False).run()
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "early_stopping" in line]
    assert line.startswith("kit: warning: early_stopping: this run has no validation data, so val/loss")


@pytest.mark.parametrize("state", [
    "garbage", {"monitor": "val/loss", "mode": "min", "best": "0.5", "best_iteration": 1, "wait": 0},
    {"monitor": "val/loss", "mode": "min", "best": math.nan, "best_iteration": 1, "wait": 0},
    {"monitor": "val/loss", "mode": "min", "best": 0.5, "best_iteration": 1, "wait": -1},
    {"monitor": "val/loss", "mode": "min", "best": 0.5, "best_iteration": 1, "wait": True},
])
def test_a_malformed_state_in_a_checkpoint_is_refused_with_a_warning(
    kit_config: Any, capsys: pytest.CaptureFixture[str], state: Any
) -> None:
    from kit_contrib.plugins.early_stopping import EarlyStopping

    plugin = EarlyStopping(EarlyStopping.Options(monitor="val/loss"))
    trainer = kit.Trainer(kit_config(), autoload=False)
    plugin.kit_checkpoint_load(trainer=trainer, checkpoint={"plugins": {"early_stopping": state}})
    assert (plugin.best, plugin.best_iteration, plugin.wait) == (None, None, 0)
    assert "early_stopping: the checkpoint's early_stopping state is malformed" in capsys.readouterr().err
    good = {"monitor": "val/loss", "mode": "min", "best": 0.5, "best_iteration": 2, "wait": 1}
    plugin.kit_checkpoint_load(trainer=trainer, checkpoint={"plugins": {"early_stopping": good}})
    assert (plugin.best, plugin.best_iteration, plugin.wait) == (0.5, 2, 1)


@pytest.mark.parametrize(("options", "expected"), [
    ({"patience": 0}, "plugins[0].options.patience: Input should be greater than or equal to 1 (got 0)"),
    ({"mode": "avg"}, "plugins[0].options.mode: Input should be 'min' or 'max' (got 'avg')"),
    ({"monitor": "train/loss"}, "plugins[0].options.monitor: 'train/loss' is not a validation result"),
    ({"min_delta": -1}, "plugins[0].options.min_delta: Input should be greater than or equal to 0"),
])
def test_a_bad_option_is_one_error_line(write_config: Any, options: dict[str, Any], expected: str) -> None:
    path = write_config(plugins=[{"early_stopping": {"monitor": "val/loss", **options}}])
    one_error_line(kit_cli("run", str(path)), expected)


@pytest.mark.slow
def test_a_missing_monitor_through_kit_run_is_one_error_line(write_config: Any, tmp_path: Path) -> None:
    path = write_config(plugins=[{"early_stopping": {"patience": 2}}])
    result = kit_process("run", str(path), cwd=tmp_path)
    one_error_line(result, "plugins[0].options.monitor: Field required")
    assert not (tmp_path / "runs").exists()  # refused before anything was written


def test_stops_digits_when_val_loss_stops_falling(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    result = kit_cli("run", str(EXAMPLE), "--set", f"runs_dir={tmp_path}", "--set", "training.iterations=8",
                 "--set", "loggers=[{jsonl: {flush_seconds: 0}}]",
                 "--set", "plugins=[{early_stopping: {monitor: val/loss, patience: 1}}]")
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "digits").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    values = [v for _, v in records(run_dir, "val/loss")]
    stop, waits = rule(values, mode="min", patience=1, min_delta=0)
    assert summary["status"] == "finished" and summary["iteration"] == stop == len(values) < 8
    assert [v for _, v in records(run_dir, "early_stopping/wait")] == waits
    assert "early_stopping: val/loss has not improved for 1 validation" in result.stderr
    assert checkpoint(run_dir, summary["global_step"])["plugins"]["early_stopping"]["wait"] == 1
