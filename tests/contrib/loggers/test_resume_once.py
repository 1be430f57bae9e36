"""After kills and signals, a resumed run's jsonl and csv hold each (metric, step) once, with the
values an uninterrupted run logs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import kit

pd = pytest.importorskip("pandas")
TESTS = Path(__file__).resolve().parents[2]

CONFIG = {
    "model": {"target": "tiny_task:build_model", "kwargs": {"dropout": 0.3}},
    "optimizer": {"name": "adam", "lr": 0.01},
    "training": {"iterations": 4, "device": "cpu", "log_every_n_steps": 1, "save_frequency": 100},
    "checkpoint": {"every_n_steps": 5},
    "loggers": [{"jsonl": {"flush_seconds": 0}}, "csv"],
}

KILLED = """
import os, signal, sys
import kit

class Stop:
    @kit.hookimpl
    def kit_step_end(self, trainer):
        if trainer.global_step == int(sys.argv[2]):
            for _ in range(int(sys.argv[4])):
                os.kill(os.getpid(), int(sys.argv[3]))

kit.Trainer(kit.load_config(sys.argv[1]), plugins=[Stop()], autoload=False).run()
"""


def jsonl(run_dir: Path) -> dict[tuple[str, int], Any]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    seen = [(r["name"], r["step"]) for r in records]
    assert len(seen) == len(set(seen)), sorted({p for p in seen if seen.count(p) > 1})
    return {(r["name"], r["step"]): r["value"] for r in records if r["name"] not in (
        "train/step_time", "train/throughput")}  # timings differ between runs, by nature


def csv(run_dir: Path) -> dict[tuple[str, int], Any]:
    frame = pd.read_csv(run_dir / "metrics.csv")
    out: dict[tuple[str, int], Any] = {}
    for column in frame.columns[3:]:
        if column in ("train/step_time", "train/throughput"):
            continue
        values = frame[["step", column]].dropna()
        assert values["step"].is_unique, (column, values)
        out.update({(column, int(s)): v for s, v in zip(values["step"], values[column], strict=True)})
    return out


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "times"), [(signal.SIGKILL, 1), (signal.SIGTERM, 2), (signal.SIGTERM, 1)],
                         ids=["sigkill", "double-sigterm", "sigterm"])
def test_each_metric_and_step_once_after_a_stop(
    make_config: Any, kit_config: Any, tmp_path: Path, signum: int, times: int
) -> None:
    straight = kit.Trainer(kit_config(**CONFIG, experiment="straight"), autoload=False)
    straight.run()
    assert straight.run_dir is not None

    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(make_config(**CONFIG)))
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    stopped = subprocess.run([sys.executable, "-c", KILLED, str(path), "7", str(signum), str(times)],
                             env=env, capture_output=True, text=True)
    assert stopped.returncode != 0, stopped.stderr
    resumed = kit.Trainer(kit.load_config(path), mode="continue", autoload=False)
    resumed.run()
    assert resumed.run_dir is not None
    assert jsonl(resumed.run_dir) == jsonl(straight.run_dir)
    assert csv(resumed.run_dir) == pytest.approx(csv(straight.run_dir))
