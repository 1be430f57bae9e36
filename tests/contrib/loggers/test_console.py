from __future__ import annotations

import io
import re
import time
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

import kit
from kit_contrib.loggers.console import ConsoleLogger, _Rate, _speed


def run_with_console(config: Any, console: Console, mode: str = "new", **options: Any) -> kit.Trainer:
    logger = ConsoleLogger(ConsoleLogger.Options(**options), console=console)
    trainer = kit.Trainer(config, plugins=[logger], autoload=False, mode=mode)
    trainer.run()
    return trainer


def test_plain_lines_and_a_results_table_off_a_terminal(kit_config: Any) -> None:
    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=False)
    trainer = run_with_console(kit_config(training={"iterations": 2}), console)
    text = out.getvalue()
    assert "experiment tiny" in text and "device cpu" in text
    assert "epoch 1/2  train/loss_epoch" in text and "epoch 2/2" in text
    assert "val/accuracy" in text
    assert "results (finished)" in text
    test_acc = trainer.results["test"]["accuracy"]
    assert f"{test_acc:.4g}" in text
    assert f"run finished in {trainer.run_dir}" in text
    # off a terminal no progress plugin is registered: no per-step hook at all
    assert trainer.hooks.kit_step_end is None


def test_progress_bars_on_a_terminal(kit_config: Any) -> None:
    console = Console(record=True, force_terminal=True, width=80, color_system=None)
    trainer = run_with_console(kit_config(training={"iterations": 2}), console,
                               refresh_per_second=1000)
    text = console.export_text()
    assert "ep 2" in text and "4/4" in text  # epoch bar, completed
    assert "loss " in text and "test" in text
    assert "epoch 2/2" in text and "results (finished)" in text
    # a run this short never trains for a second: no rate is worth showing
    assert "it/s" not in text and "s/it" not in text
    assert trainer.pm.has_plugin("console.progress")


class SlowSteps:
    """Each training step takes at least ``seconds``: the rate can never exceed 1/seconds."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    @kit.hookimpl
    def kit_step_end(self) -> None:
        time.sleep(self.seconds)


def test_the_rate_appears_after_a_second_of_training_and_is_never_a_first_batch_reading(
        kit_config: Any) -> None:
    console = Console(record=True, force_terminal=True, width=80, color_system=None)
    logger = ConsoleLogger(ConsoleLogger.Options(refresh_per_second=1000), console=console)
    config = kit_config(data={"batch_size": 2}, training={"iterations": 3})  # 16 steps an epoch
    kit.Trainer(config, plugins=[logger, SlowSteps(0.03)], autoload=False).run()
    text = console.export_text()
    rates = [float(r.replace(",", "")) for r in re.findall(r"([\d,.]+) it/s", text)]
    assert rates, "no rate shown after more than a second of training"
    assert max(rates) <= 1 / 0.03 * 1.05, rates  # a first-batch reading would be far faster
    assert re.search(r"it/s eta 0:00:0\d", text)


def test_rate_counts_training_time_only_over_a_window() -> None:
    rate = _Rate(window=10.0, min_span=1.0)
    rate.add(1, now=0.0)  # a pass's first reading is a baseline, not a measurement
    rate.add(10, now=0.5)
    assert rate.value() is None  # half a second of training says nothing yet
    rate.add(10, now=1.0)
    assert rate.value() == pytest.approx(20.0)
    rate.pause()  # validation, test, the end of an epoch: not training time
    rate.add(5, now=100.0)
    rate.add(10, now=100.5)
    assert rate.value() == pytest.approx(30 / 1.5)
    for second in range(1, 31):  # 100 it/s for 30 s: the slow start leaves the window
        rate.add(100, now=100.5 + second)
    assert rate.value() == pytest.approx(100.0)


def test_speed_text() -> None:
    assert _speed(None, 10) == ""
    assert _speed(1234.5, None) == "1,234.5 it/s"
    assert _speed(0.25, 2) == "4.0 s/it eta 0:00:08"
    assert _speed(10.0, 600) == "10.0 it/s eta 0:01:00"


class OddNames:
    """A metric and a result whose names look like rich markup."""

    @kit.hookimpl(tryfirst=True)
    def kit_iteration_end(self, metrics: dict[str, float]) -> None:
        metrics["val/top[bold]1"] = 0.5

    @kit.hookimpl
    def kit_test_end(self, trainer: kit.Trainer) -> None:
        trainer.results["test"]["[red]recall"] = 0.25


@pytest.mark.parametrize("console_kind", ["default", "markup_console"])
def test_paths_and_names_print_literally(kit_config: Any, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str], console_kind: str) -> None:
    config = kit_config(training={"iterations": 1},
                        runs_dir=str(tmp_path / "[safetensors]" / "[bold]runs :thumbs_up:"))
    out = io.StringIO()
    console = None if console_kind == "default" else Console(file=out, width=200, markup=True)
    logger = ConsoleLogger(console=console)
    trainer = kit.Trainer(config, plugins=[logger, OddNames()], autoload=False)
    trainer.run()
    text = capsys.readouterr().out if console is None else out.getvalue()
    assert "[safetensors]" in str(trainer.run_dir)
    assert f"run directory: {trainer.run_dir}" in text.replace("\n", "")
    assert "val/top[bold]1 0.5" in text
    assert "[red]recall" in text
    assert f"run finished in {trainer.run_dir}" in text.replace("\n", "")


def test_step_based_prints_only_at_validation(kit_config: Any) -> None:
    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=False)
    run_with_console(kit_config(training={"type": "step", "iterations": 6, "eval_frequency": 3}),
                     console)
    lines = [line for line in out.getvalue().splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["3/6", "6/6"]


def test_evaluate_leaves_the_results_table_to_the_mode(kit_config: Any) -> None:
    kit.Trainer(kit_config(), autoload=False).run()
    out = io.StringIO()
    trainer = run_with_console(kit_config(), Console(file=out, width=120, force_terminal=False),
                               mode="evaluate")
    assert "results (" not in out.getvalue()  # evaluate prints its own table, once
    assert f"evaluate finished in {trainer.run_dir}" in out.getvalue()


def test_evaluating_shows_a_test_bar_only(kit_config: Any) -> None:
    config = kit_config(training={"type": "step", "iterations": 4, "eval_frequency": 2})
    kit.Trainer(config, autoload=False).run()
    console = Console(record=True, force_terminal=True, width=80, color_system=None)
    run_with_console(config, console, mode="evaluate", refresh_per_second=1000)
    text = console.export_text()
    assert " test " in text and "4/4" in text
    assert "train " not in text
