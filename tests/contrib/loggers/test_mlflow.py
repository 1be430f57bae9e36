"""The mlflow logger end to end through `kit run`, read back with MLflow's own client."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import kit
from kit.cli import main
from kit.errors import RunInterrupted

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

TESTS = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def run_info(run_dir: Path) -> tuple[MlflowClient, Any]:
    state = json.loads((run_dir / "mlflow.json").read_text())
    client = MlflowClient(tracking_uri=state["tracking_uri"])
    return client, client.get_run(state["run_id"])


def jsonl_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        out.setdefault(record["name"], []).append((record["step"], record["value"]))
    return out


def test_params_metrics_tags_and_config_read_back_and_continue_reuses_the_run(
    write_config: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    path = str(write_config(loggers=["jsonl", {"mlflow": {"tags": {"team": "kit"}}}]))
    result = CliRunner().invoke(main, ["run", path], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "runs" / "tiny").iterdir()
    client, run = run_info(run_dir)
    assert client.tracking_uri == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    assert run.info.status == "FINISHED" and run.info.run_name == run_dir.name
    assert client.get_experiment(run.info.experiment_id).name == "tiny"
    assert run.data.params["training.iterations"] == "2" and run.data.params["optimizer.name"] == "sgd"
    expected_tags = {"kit.experiment": "tiny", "kit.run_id": run_dir.name, "kit.mode": "new",
                     "kit.backend": "torch", "team": "kit"}
    assert {k: run.data.tags[k] for k in expected_tags} == expected_tags
    for name, expected in jsonl_scalars(run_dir).items():  # every value, at its step
        history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, name)]
        assert sorted(history) == sorted(expected), name
    config = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))
    assert Path(config).read_text() == (run_dir / "config.yaml").read_text()

    more = CliRunner().invoke(main, ["run", path, "--mode", "continue", "--set", "training.iterations=3"],
                              catch_exceptions=False)
    assert more.exit_code == 0, more.output
    client, again = run_info(run_dir)
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert again.data.params["training.iterations"] == "2"  # MLflow params are immutable
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/loss")]
    assert steps == [4, 8, 12]
    assert len(client.search_runs([run.info.experiment_id])) == 1


class Boom:
    @kit.hookimpl
    def kit_step_end(self, trainer: kit.Trainer) -> None:
        if trainer.global_step == 3:
            raise RuntimeError("boom")


def test_a_failed_run_is_failed_and_tracking_uri_is_honoured(
    kit_config: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    monkeypatch.chdir(tmp_path)  # MLflow puts this store's artifacts in ./mlruns
    trainer = kit.Trainer(kit_config(loggers=["mlflow"]), plugins=[Boom()], autoload=False)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.run()
    assert trainer.run_dir is not None
    client, run = run_info(trainer.run_dir)
    assert client.tracking_uri == f"sqlite:///{tmp_path / 'elsewhere.db'}"
    assert run.info.status == "FAILED"


class TermAt:
    """SIGTERM to this process at a step, as an orchestrator would send it."""

    @kit.hookimpl
    def kit_step_end(self, trainer: kit.Trainer) -> None:
        if trainer.global_step == 5 and trainer.stop_signal is None:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_leaves_mlflow_killed_and_tensorboard_readable(
    write_config: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    path = write_config(training={"type": "step", "iterations": 100_000, "device": "cpu",
                                  "log_every_n_steps": 1, "eval_frequency": 1000},
                        loggers=[{"jsonl": {"flush_seconds": 0}}, "mlflow", "tensorboard"])
    trainer = kit.Trainer(kit.load_config(path), plugins=[TermAt()], autoload=False)
    with pytest.raises(RunInterrupted) as info:
        trainer.run()
    assert info.value.signum == signal.SIGTERM  # `kit run` exits 143 on it (tests/core/test_signals.py)
    (run_dir,) = (tmp_path / "runs" / "tiny").iterdir()
    client, run = run_info(run_dir)
    assert run.info.status == "KILLED"
    logged = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    acc = event_accumulator.EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == logged == sorted(logged) == [1, 2, 3, 4, 5]
