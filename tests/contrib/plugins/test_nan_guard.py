"""nan_guard: non-finite steps are skipped with the weights untouched; a run of them stops
the run with a checkpoint of the last good weights; the streak resumes across continue."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from clitools import kit_process, one_error_line
from poison import Poison

import kit
from kit_contrib.plugins.nan_guard import NanGuard

DIGITS = Path(__file__).resolve().parents[3] / "examples" / "digits" / "config.yaml"


class Weights:
    """The model's parameters after each optimizer step, by step number."""

    def __init__(self) -> None:
        self.at: dict[int, list[torch.Tensor]] = {}

    @kit.hookimpl
    def kit_train_begin(self, trainer: kit.Trainer) -> None:
        self.at[trainer.global_step] = self._copy(trainer)

    @kit.hookimpl
    def kit_step_end(self, trainer: kit.Trainer) -> None:
        self.at[trainer.global_step] = self._copy(trainer)

    @staticmethod
    def _copy(trainer: kit.Trainer) -> list[torch.Tensor]:
        assert trainer.model is not None
        return [p.detach().clone() for p in trainer.model.parameters()]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def records(run_dir: Path, name: str) -> dict[int, Any]:
    lines = (json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines())
    return {r["step"]: r["value"] for r in lines if r["name"] == name}


def newest_checkpoint(run_dir: Path) -> dict[str, Any]:
    folder = sorted((run_dir / "checkpoints").iterdir())[-1]
    return torch.load(folder / "checkpoint.pt", weights_only=True)  # type: ignore[no-any-return]


def run(kit_config: Any, poison: Poison, weights: Weights, guard: dict[str, Any] | None = None,
        **overrides: Any) -> kit.Trainer:
    config = kit_config(loggers=["jsonl"], plugins=[{"nan_guard": guard or {}}], **overrides)
    trainer = kit.Trainer(config, plugins=[poison, weights], autoload=False)
    trainer.run()
    return trainer


@pytest.mark.parametrize(("where", "reason"), [
    ("loss", "non-finite loss"),
    ("grad", "non-finite gradients in 0.weight"),
])
def test_non_finite_steps_are_skipped_and_change_nothing(kit_config: Any, where: str, reason: str) -> None:
    weights = Weights()
    trainer = run(kit_config, Poison(Poison.Options(steps=[3, 6], where=where)), weights)
    assert trainer.run_dir is not None and trainer.status == "finished" and trainer.global_step == 8
    assert records(trainer.run_dir, "train/skipped_steps") == {3: 1, 6: 2}
    assert records(trainer.run_dir, "train/skip_reason") == {3: reason, 6: reason}
    for step in range(1, 9):  # a skipped step leaves the weights exactly as they were
        assert same(weights.at[step], weights.at[step - 1]) == (step in (3, 6)), step
    assert all(p.isfinite().all() for p in weights.at[8])
    assert newest_checkpoint(trainer.run_dir)["plugins"]["nan_guard"] == {"consecutive": 0}


def test_check_gradients_false_checks_the_loss_only(kit_config: Any) -> None:
    """An inf gradient goes through (the weights turn inf), and the next loss is caught."""
    weights = Weights()
    trainer = run(kit_config, Poison(Poison.Options(steps=[3], where="grad")), weights,
                  {"check_gradients": False, "max_consecutive": 100})
    assert trainer.run_dir is not None
    assert not weights.at[3][0].isfinite().all()  # stepped with the inf gradient
    assert records(trainer.run_dir, "train/skip_reason") == dict.fromkeys(range(4, 9), "non-finite loss")


def test_a_run_of_skips_stops_with_the_last_good_weights(
    kit_config: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = Weights()
    trainer = run(kit_config, Poison(Poison.Options(from_step=3)), weights, {"max_consecutive": 3},
                  training={"iterations": 5})
    assert trainer.run_dir is not None and trainer.should_stop and trainer.global_step == 5
    assert records(trainer.run_dir, "train/skipped_steps") == {3: 1, 4: 2, 5: 3}
    checkpoint = newest_checkpoint(trainer.run_dir)
    assert checkpoint["progress"]["global_step"] == 5
    assert checkpoint["plugins"]["nan_guard"] == {"consecutive": 3}
    saved = list(checkpoint["model"].values())
    assert same(saved, weights.at[2]) and all(t.isfinite().all() for t in saved)  # the last good state
    warnings = [line for line in capsys.readouterr().err.splitlines() if "nan_guard" in line]
    assert len(warnings) == 1 and "3 optimizer steps in a row were skipped (last: non-finite loss); " \
        "stopping at step 5" in warnings[0]


class StopAt:
    """Stops the run after optimizer step ``step`` (a stand-in for a requeued job's SIGTERM)."""

    def __init__(self, step: int) -> None:
        self.step = step

    @kit.hookimpl
    def kit_step_end(self, trainer: kit.Trainer) -> None:
        if trainer.global_step == self.step:
            trainer.should_stop = True


def test_the_streak_resumes_across_continue(kit_config: Any) -> None:
    """Stopped two skips into a streak of four allowed, a continued run stops after two more."""
    config = kit_config(loggers=["jsonl"], plugins=[{"nan_guard": {"max_consecutive": 4}}],
                        training={"iterations": 5})
    first = kit.Trainer(config, plugins=[Poison(Poison.Options(from_step=3)), StopAt(4)], autoload=False)
    first.run()
    assert first.run_dir is not None and first.global_step == 4
    assert newest_checkpoint(first.run_dir)["plugins"]["nan_guard"] == {"consecutive": 2}
    resumed = kit.Trainer(config, mode="continue", run_dir=first.run_dir,
                          plugins=[Poison(Poison.Options(from_step=3))], autoload=False)
    resumed.run()
    assert resumed.should_stop and resumed.global_step == 6  # without the count: 8, and no stop
    assert records(first.run_dir, "train/skipped_steps") == {3: 1, 4: 2, 5: 3, 6: 4}


@pytest.mark.parametrize("state", [{"consecutive": "3"}, {"consecutive": -1}, {"consecutive": True},
                                   {"count": 3}, [3], "garbage"])
def test_garbage_state_in_a_checkpoint_counts_from_zero(
    state: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    guard = NanGuard()
    guard.consecutive = 7
    guard.kit_checkpoint_load({"plugins": {"nan_guard": state}})
    assert guard.consecutive == 0
    assert "nan_guard: the checkpoint's state" in capsys.readouterr().err
    guard.kit_checkpoint_load({"plugins": {"nan_guard": {"consecutive": 2}}})
    guard.kit_checkpoint_load({"plugins": {}})  # saved by a run without nan_guard: nothing to say
    assert guard.consecutive == 2 and capsys.readouterr().err == ""


def test_a_bad_option_is_one_line(write_config: Any) -> None:
    result = kit_process("run", str(write_config(plugins=[{"nan_guard": {"max_consecutive": 0}}])))
    one_error_line(result, "plugins[0].options.max_consecutive: ")


def test_digits_stops_with_the_last_good_checkpoint(tmp_path: Path) -> None:
    """Real data, a real ``kit run``: every step from 4 on is NaN; after 3 skips the run stops
    (exit 0, with a warning), and its checkpoint holds step 3's weights, finite."""
    pytest.importorskip("sklearn")
    result = kit_process(
        "run", str(DIGITS), "--set", f"runs_dir={tmp_path}", "--set", "training.iterations=1",
        "--set", "loggers=[jsonl]", "--set", "checkpoint={every_n_steps: 3, keep_last: 10}",
        "--set", '''plugins=[{nan_guard: {max_consecutive: 3}}, {"poison:Poison": {from_step: 4}}]''')
    assert result.returncode == 0, result.stderr
    assert "nan_guard: 3 optimizer steps in a row were skipped" in result.stderr
    (run_dir,) = (tmp_path / "digits").iterdir()
    assert records(run_dir, "train/skipped_steps") == {4: 1, 5: 2, 6: 3}
    assert json.loads((run_dir / "summary.json").read_text())["global_step"] == 6
    good = torch.load(run_dir / "checkpoints" / "step-00000003" / "checkpoint.pt", weights_only=True)
    last = newest_checkpoint(run_dir)
    assert last["progress"]["global_step"] == 6 and last["plugins"]["nan_guard"] == {"consecutive": 3}
    for name, tensor in last["model"].items():
        assert tensor.isfinite().all() and torch.equal(tensor, good["model"][name]), name


def test_a_skipped_steps_loss_stays_out_of_train_loss(kit_config: Any) -> None:
    config = kit_config(training={"iterations": 2, "log_every_n_steps": 2}, loggers=["jsonl"],
                        plugins=["nan_guard", {"poison:Poison": {"steps": [3]}}])
    trainer = kit.Trainer(config, autoload=False)
    trainer.run()
    assert trainer.run_dir is not None
    lines = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["value"] for r in lines if r["name"] in ("train/loss", "train/loss_epoch")}
    assert 4 in losses and all(math.isfinite(v) for v in losses.values()), losses
