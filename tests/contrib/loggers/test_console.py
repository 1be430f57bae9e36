from __future__ import annotations

import io
from typing import Any

from rich.console import Console

import kit
from kit_contrib.loggers.console import ConsoleLogger


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
    out = io.StringIO()
    console = Console(file=out, width=160, force_terminal=True, color_system=None)
    trainer = run_with_console(kit_config(training={"iterations": 2}), console,
                               refresh_per_second=1000)
    text = out.getvalue()
    assert "ep 2" in text and "4/4" in text  # epoch bar, completed
    assert "it/s" in text and "loss " in text
    assert "test" in text
    assert trainer.pm.has_plugin("console.progress")


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
