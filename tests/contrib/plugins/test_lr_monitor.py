"""lr_monitor: every parameter group's learning rate (and momentum), read back from metrics.jsonl,
every N optimizer steps and after each per-iteration scheduler step."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import torch
from clitools import kit as kit_cli
from clitools import kit_process, one_error_line

import kit

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "digits" / "config.yaml"
JSONL = [{"jsonl": {"flush_seconds": 0}}]


def two_groups(params: Iterable[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """SGD with the first layer in one group and the rest in another, each its own lr and momentum."""
    params = list(params)
    return torch.optim.SGD([{"params": params[:2], "momentum": 0.9},
                            {"params": params[2:], "lr": lr / 10, "momentum": 0.5}], lr=lr)


def records(run_dir: Path) -> dict[str, list[tuple[int, Any]]]:
    out: dict[str, list[tuple[int, Any]]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        out.setdefault(record["name"], []).append((record["step"], record["value"]))
    return out


def test_each_group_every_n_steps_with_momentum(kit_config: Any) -> None:
    config = kit_config(
        optimizer={"name": "test_lr_monitor:two_groups", "lr": 0.1},
        scheduler={"name": "steplr", "interval": "step", "kwargs": {"step_size": 1, "gamma": 0.5}},
        training={"iterations": 3}, loggers=JSONL,
        plugins=[{"lr_monitor": {"every_n_steps": 3, "momentum": True}}])
    trainer = kit.Trainer(config, autoload=False)
    trainer.run()
    assert trainer.run_dir is not None and trainer.global_step == 12
    got = records(trainer.run_dir)
    steps = [0, 3, 6, 9]  # the lr each step from here uses: halved after every optimizer step
    assert got["lr/group0"] == [(s, pytest.approx(0.1 * 0.5**s)) for s in steps]
    assert got["lr/group1"] == [(s, pytest.approx(0.01 * 0.5**s)) for s in steps]
    assert got["momentum/group0"] == [(s, 0.9) for s in steps]
    assert got["momentum/group1"] == [(s, 0.5) for s in steps]
    assert not {"lr/group2", "momentum/group2"} & set(got)


def test_by_default_it_records_with_kits_own_train_lr(kit_config: Any) -> None:
    config = kit_config(
        optimizer={"name": "adam", "lr": 0.01, "kwargs": {"betas": [0.8, 0.99]}},
        scheduler={"name": "exponentiallr", "interval": "step", "kwargs": {"gamma": 0.9}},
        training={"iterations": 2, "log_every_n_steps": 2}, loggers=JSONL,
        plugins=[{"lr_monitor": {"momentum": True}}])
    trainer = kit.Trainer(config, autoload=False)
    trainer.run()
    assert trainer.run_dir is not None
    got = records(trainer.run_dir)
    train_lr = got["train/lr"]
    assert [s for s, _ in train_lr] == [2, 4, 6, 8]
    # kit logs train/lr after a step; lr_monitor records before the next one: the same value at
    # the same step, plus the starting lr at step 0 (and nothing for a step that never comes)
    assert got["lr/group0"] == [(0, 0.01), *train_lr[:-1]]
    assert got["momentum/group0"] == [(s, 0.8) for s in (0, 2, 4, 6)]


def test_an_optimizer_without_momentum_is_warned_once(
    kit_config: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    config = kit_config(optimizer={"name": "adagrad", "lr": 0.01}, loggers=JSONL,
                        plugins=[{"lr_monitor": {"momentum": True, "every_n_steps": 1}}])
    trainer = kit.Trainer(config, autoload=False)
    trainer.run()
    assert trainer.run_dir is not None
    got = records(trainer.run_dir)
    assert [s for s, _ in got["lr/group0"]] == list(range(8)) and "momentum/group0" not in got
    warnings = [line for line in capsys.readouterr().err.splitlines() if "lr_monitor" in line]
    assert warnings == ["kit: warning: lr_monitor: Adagrad has no momentum or betas in its parameter groups, "
                        "so no momentum/group<i> is recorded (set momentum: false)"]


@pytest.mark.parametrize(("options", "expected"), [
    ({"every_n_steps": -2}, "plugins[0].options.every_n_steps: Input should be greater than or equal to 1"),
    ({"momentum": "maybe"}, "plugins[0].options.momentum: Input should be a valid boolean"),
    ({"every": 5}, "plugins[0].options.every: Extra inputs are not permitted"),
])
def test_a_bad_option_is_one_error_line(write_config: Any, options: dict[str, Any], expected: str) -> None:
    one_error_line(kit_cli("run", str(write_config(plugins=[{"lr_monitor": options}]))), expected)


@pytest.mark.slow
def test_a_bad_option_through_kit_run_is_one_error_line(write_config: Any, tmp_path: Path) -> None:
    path = write_config(plugins=[{"lr_monitor": {"every_n_steps": 0}}])
    one_error_line(kit_process("run", str(path), cwd=tmp_path),
                   "plugins[0].options.every_n_steps: Input should be greater than or equal to 1 (got 0)")
    assert not (tmp_path / "runs").exists()


def test_digits_cosine_schedule_at_each_epoch(tmp_path: Path) -> None:
    """The example's cosine schedule steps once per epoch: lr_monitor records each new value
    where the next epoch starts (AdamW's beta1 alongside)."""
    pytest.importorskip("sklearn")
    result = kit_cli("run", str(EXAMPLE), "--set", f"runs_dir={tmp_path}", "--set", "training.iterations=4",
                     "--set", "loggers=[{jsonl: {flush_seconds: 0}}]",
                     "--set", "plugins=[{lr_monitor: {every_n_steps: 1000000, momentum: true}}]")
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "digits").iterdir()
    got = records(run_dir)
    epoch_ends = [s for s, _ in got["train/loss_epoch"]]
    starts = [0, *epoch_ends[:-1]]
    cosine = [0.001 * (1 + math.cos(math.pi * epoch / 20)) for epoch in range(4)]  # T_max 20, lr 0.002
    assert got["lr/group0"] == [(s, pytest.approx(lr)) for s, lr in zip(starts, cosine, strict=True)]
    assert got["momentum/group0"] == [(s, 0.9) for s in starts]
