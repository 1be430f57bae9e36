"""The quickstart example, trained for real: the README promises >= 95% test accuracy."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from kit.cli import main

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "digits" / "config.yaml"


def test_digits_reaches_95_percent(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    started = time.monotonic()
    result = CliRunner().invoke(main, ["run", str(EXAMPLE), "--set", f"runs_dir={tmp_path}"],
                                catch_exceptions=False)
    elapsed = time.monotonic() - started
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "digits").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert summary["results"]["test"]["accuracy"] >= 0.95
    assert elapsed < 60


def test_every_logger_reads_back_the_same_run_with_its_own_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One digits run, all five loggers; each file or store is read by its tool's reader."""
    pytest.importorskip("sklearn")
    pandas = pytest.importorskip("pandas")
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    tracking = pytest.importorskip("mlflow.tracking")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = CliRunner().invoke(main, [
        "run", str(EXAMPLE), "--set", f"runs_dir={tmp_path}", "--set", "training.iterations=3",
        "--set", "loggers=[console, jsonl, csv, tensorboard, mlflow]"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "digits").iterdir()
    assert "results (finished)" in result.output  # console
    expected: dict[str, list[tuple[int, float]]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():  # jsonl
        record = json.loads(line)
        expected.setdefault(record["name"], []).append((record["step"], record["value"]))
    assert {"train/loss", "train/lr", "val/accuracy", "test/accuracy"} <= set(expected)

    table = pandas.read_csv(run_dir / "metrics.csv")
    tb = accumulator.EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    tb.Reload()
    state = json.loads((run_dir / "mlflow.json").read_text())
    client = tracking.MlflowClient(tracking_uri=state["tracking_uri"])
    for name, points in expected.items():
        steps, values = [p[0] for p in points], [p[1] for p in points]
        column = table.dropna(subset=[name])
        assert list(column["step"]) == steps and list(column[name]) == pytest.approx(values), name
        events = tb.Scalars(name)  # float32 on disk
        assert [e.step for e in events] == steps, name
        assert [e.value for e in events] == pytest.approx(values, rel=1e-6), name
        history = sorted((m.step, m.value) for m in client.get_metric_history(state["run_id"], name))
        assert history == sorted(points), name
    assert client.get_run(state["run_id"]).info.status == "FINISHED"
