"""kit.Session: kit's loggers, plugins and hooks in a plain PyTorch loop, read back with
TensorBoard's and MLflow's own readers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from recorder import Recorder
from torch import nn

import kit
from kit.errors import PluginError
from kit.plugins import EntryPointSpec, Registry
from kit.runlock import lock_held


def plain_loop(run: kit.Session, steps: int = 6) -> list[float]:
    """What a user writes by hand, recording through the session."""
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for step in range(1, steps + 1):
        loss = model(torch.randn(8, 4)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        run.record("train/loss", loss, step=step)
        losses.append(loss.item())
    return losses


def test_a_plain_loop_writes_through_tensorboard_and_mlflow(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with kit.Session("plain", runs_dir=tmp_path / "runs", loggers=["tensorboard", "mlflow", "jsonl"],
                     hparams={"lr": 0.1, "net": {"width": 4}}, autoload=False) as run:
        losses = plain_loop(run)
        run.record_results("test", {"accuracy": 0.75})
    assert run.run_dir is not None and run.run_dir.parent == tmp_path / "runs" / "plain"

    acc = accumulator.EventAccumulator(str(run.run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == \
        [(step, pytest.approx(loss, rel=1e-6)) for step, loss in enumerate(losses, 1)]
    assert [e.value for e in acc.Scalars("test/accuracy")] == [0.75]

    state = json.loads((run.run_dir / "mlflow.json").read_text())
    client = MlflowClient(tracking_uri=state["tracking_uri"])
    mlrun = client.get_run(state["run_id"])
    assert mlrun.info.status == "FINISHED"
    assert mlrun.data.params == {"lr": "0.1", "net.width": "4"}  # the caller's, not kit's defaults
    assert mlrun.data.tags["kit.mode"] == "session"
    history = sorted((m.step, m.value) for m in client.get_metric_history(mlrun.info.run_id, "train/loss"))
    assert history == [(step, pytest.approx(loss, rel=1e-6)) for step, loss in enumerate(losses, 1)]

    summary = json.loads((run.run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["mode"] == "session"
    assert summary["global_step"] == 6 and summary["results"] == {"test": {"accuracy": 0.75}}
    saved = (run.run_dir / "config.yaml").read_text()
    assert saved.startswith("# kit run:") and "width: 4" in saved


def test_loggers_and_plugins_may_be_objects_and_hooks_fire_in_order(tmp_path: Path) -> None:
    recorder = Recorder()
    with kit.Session(runs_dir=tmp_path, loggers=[], plugins=[recorder], autoload=False) as run:
        run.fire("kit_iteration_begin", iteration=1)
        assert run.iteration == 1
        run.fire("kit_step_begin", iteration=1, batch_idx=0)
        run.record("train/loss", 0.5, step=1)
        run.fire("kit_step_end", iteration=1, batch_idx=0, loss=torch.tensor(0.5))
        run.fire("kit_iteration_end", iteration=1, metrics={"train/loss": 0.5})
    assert recorder.names() == ["train_begin", "iteration_begin", "step_begin", "step_end",
                                "iteration_end", "train_end"]
    (record,) = recorder.records
    assert (record.name, record.value, record.step, record.iteration, record.split) == \
        ("train/loss", 0.5, 1, 1, "train")
    assert recorder.events[-1] == ("train_end", "finished")


def test_the_callers_error_ends_the_run_failed_and_propagates_unchanged(tmp_path: Path) -> None:
    recorder = Recorder()
    with pytest.raises(ValueError, match="the user's own bug"), \
            kit.Session(runs_dir=tmp_path, loggers=["jsonl"], plugins=[recorder], autoload=False) as run:
        run.record("train/loss", 1.0, step=1)
        raise ValueError("the user's own bug")
    assert run.run_dir is not None
    assert json.loads((run.run_dir / "summary.json").read_text())["status"] == "failed"
    assert [e[0] for e in recorder.events][-2:] == ["exception", "train_end"]
    assert not lock_held(run.run_dir)  # released


def test_the_run_is_locked_while_open(tmp_path: Path) -> None:
    with kit.Session(runs_dir=tmp_path, loggers=[], autoload=False) as run:
        assert run.run_dir is not None and lock_held(run.run_dir) is True
    assert not lock_held(run.run_dir)


def test_ctrl_c_ends_the_run_interrupted(tmp_path: Path) -> None:
    recorder = Recorder()
    with pytest.raises(KeyboardInterrupt), \
            kit.Session(runs_dir=tmp_path, loggers=[], plugins=[recorder], autoload=False) as run:
        raise KeyboardInterrupt
    assert [e[0] for e in recorder.events][-2:] == ["interrupt", "train_end"]
    assert run.run_dir is not None
    assert json.loads((run.run_dir / "summary.json").read_text())["status"] == "interrupted"


class Failing:
    @kit.hookimpl
    def kit_metric_recorded(self, record: kit.MetricRecord) -> None:
        raise ZeroDivisionError("plugin bug")


def test_a_failing_plugin_is_named_with_its_hook(tmp_path: Path) -> None:
    with pytest.raises(PluginError, match=r"plugin Failing failed in kit_metric_recorded: .*plugin bug"), \
            kit.Session(runs_dir=tmp_path, loggers=[], plugins=[Failing()], autoload=False) as run:
        run.record("train/loss", 1.0)


def test_a_broken_unrelated_plugin_is_reported_and_skipped(tmp_path: Path,
                                                           capfd: pytest.CaptureFixture[str]) -> None:
    registry = Registry([*Registry.from_environment().specs,
                         EntryPointSpec(group="kit.plugins", name="broken", package="acme",
                                        value="broken_plugin_mod:X")])
    with kit.Session(runs_dir=tmp_path, loggers=["jsonl"], autoload=True, registry=registry) as run:
        run.record("train/loss", 1.0, step=1)
    err = capfd.readouterr().err
    assert "acme[broken] failed to load" in err and "skipped" in err and "blocked=['broken']" in err
    assert "-p no:" not in err and "kit -" not in err
    assert run.run_dir is not None and (run.run_dir / "metrics.jsonl").read_text().count("\n") == 1
    # blocked: not even tried
    with kit.Session(runs_dir=tmp_path, loggers=[], registry=registry, autoload=True, blocked=["broken"]):
        pass
    assert "broken" not in capfd.readouterr().err


def test_autoload_off_leaves_installed_plugins_out(tmp_path: Path) -> None:
    registry = Registry([EntryPointSpec(group="kit.plugins", name="rec", package="acme",
                                        value="recorder:Recorder")])
    with kit.Session(runs_dir=tmp_path, loggers=[], registry=registry, autoload=True) as on:
        assert on.trainer.pm.has_plugin("rec")
    with kit.Session(runs_dir=tmp_path, loggers=[], registry=registry, autoload=False) as off:
        assert not off.trainer.pm.has_plugin("rec")


def test_other_ranks_write_nothing_and_run_plugins_but_no_loggers(tmp_path: Path) -> None:
    recorder, logger = Recorder(), Recorder()
    with kit.Session(runs_dir=tmp_path, loggers=["jsonl", logger], plugins=[recorder], rank=1,
                     world_size=2, autoload=False) as run:
        run.record("train/loss", 1.0, step=1)
        run.fire("kit_iteration_end", iteration=1, metrics={})
    assert run.run_dir is None and not any(tmp_path.iterdir())
    assert recorder.names() == ["train_begin", "iteration_end", "train_end"] and not recorder.records
    assert logger.events == []


def test_plugin_state_round_trips_through_the_callers_checkpoint(tmp_path: Path) -> None:
    class Counting:
        def __init__(self) -> None:
            self.seen = 0

        @kit.hookimpl
        def kit_step_end(self) -> None:
            self.seen += 1

        @kit.hookimpl
        def kit_checkpoint_save(self, checkpoint: dict[str, Any]) -> None:
            checkpoint["plugins"]["counting"] = {"seen": self.seen}

        @kit.hookimpl
        def kit_checkpoint_load(self, checkpoint: dict[str, Any]) -> None:
            self.seen = checkpoint["plugins"]["counting"]["seen"]

    first = Counting()
    with kit.Session(runs_dir=tmp_path, loggers=[], plugins=[first], autoload=False) as run:
        for step in range(3):
            run.global_step = step + 1
            run.fire("kit_step_end", iteration=1, batch_idx=step, loss=torch.tensor(0.0))
        saved = run.state_dict()
    second = Counting()
    with kit.Session(runs_dir=tmp_path, loggers=[], plugins=[second], autoload=False) as again:
        again.load_state_dict(json.loads(json.dumps(saved)))  # plain data, as any checkpoint keeps it
        assert second.seen == 3 and again.global_step == 3 and again.iteration == 1


def test_misuse_is_one_clear_error(tmp_path: Path) -> None:
    run = kit.Session(runs_dir=tmp_path, loggers=[], autoload=False)
    with pytest.raises(kit.KitError, match=r"not open.*inside `with kit.Session"):
        run.record("x", 1.0)
    with run:
        with pytest.raises(kit.KitError, match=r"no kit hook named 'kit_step_ends'.*kit_step_end"):
            run.fire("kit_step_ends")
        with pytest.raises(kit.KitError, match="kit_train_end is fired by the session itself"):
            run.fire("kit_train_end")
    with pytest.raises(kit.KitError, match="runs once"), run:
        pass
    with pytest.raises(kit.KitError, match=r"takes a list, not str \(loggers=\['jsonl'\]\)"):
        kit.Session(loggers="jsonl")
    with pytest.raises(kit.ConfigError, match=r"loggers\[0\].*unknown logger 'nope'"), \
            kit.Session(runs_dir=tmp_path, loggers=["nope"], autoload=False):
        pass
    with pytest.raises(kit.ConfigError, match=r"^experiment: .* is not a folder name"):
        kit.Session("../escape", runs_dir=tmp_path)


def test_a_session_config_cannot_train(tmp_path: Path) -> None:
    run = kit.Session(runs_dir=tmp_path, loggers=[], autoload=False)
    with pytest.raises(kit.ConfigError, match=r"^model: required to train"):
        kit.Trainer(run.trainer.config, autoload=False).run()
