"""Signals at any moment, start-up included, in real ``kit run`` processes: nothing is lost,
the exit code says which signal, and ``--mode continue`` always has a way forward."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from clitools import TESTS, kit, one_error_line

import kit as kitlib

pytestmark = pytest.mark.slow

LONG = {"type": "step", "iterations": 100_000, "device": "cpu", "log_every_n_steps": 1,
        "eval_frequency": 1000, "save_frequency": 1000}


def start(path: Path, *args: str, cwd: Path, group: bool = False) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{cwd}"}
    return subprocess.Popen([sys.executable, "-m", "kit", "run", str(path), *args], env=env, cwd=cwd,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=group)


def wait_for(condition: Any, process: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def pairs(run_dir: Path) -> list[tuple[str, int]]:
    records = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return [(r["name"], r["step"]) for r in records]


SLOW_SAVE = """
import time
import kit

class SlowSave:
    @kit.hookimpl
    def kit_checkpoint_save(self, trainer):
        if trainer.stop_signal is not None:
            time.sleep(30)  # the second signal lands while the first one's checkpoint is written
"""


def test_sigterm_twice_exits_143_and_the_run_continues(write_config: Any, tmp_path: Path) -> None:
    (tmp_path / "slow_save.py").write_text(SLOW_SAVE)
    path = write_config(training=LONG, loggers=[{"jsonl": {"flush_seconds": 0}}],
                        checkpoint={"every_n_steps": 5}, plugins=["slow_save:SlowSave"])
    process = start(path, cwd=tmp_path)
    runs = tmp_path / "runs" / "tiny"
    wait_for(lambda: any(runs.glob("*/checkpoints/step-*/manifest.json")), process)
    process.send_signal(signal.SIGTERM)
    assert process.stderr is not None and "SIGTERM received" in process.stderr.readline()
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert "Interrupted by SIGTERM again: stopped at once, the last checkpoint is kept" in err
    (run_dir,) = runs.iterdir()
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"
    result = kit("run", str(path), "--mode", "continue", "--set", "training.iterations=40",
                 "--set", "plugins=[]")
    assert result.exit_code == 0, result.output
    seen = pairs(run_dir)
    assert len(seen) == len(set(seen))  # every (name, step) once, however the run stopped
    assert sorted(s for n, s in seen if n == "train/loss") == list(range(1, 41))


SLOW_MODEL = """
import time
from pathlib import Path
from tiny_task import build_model

def slow_model():
    Path("building").write_text("")
    time.sleep(30)
    return build_model()
"""


def test_sigterm_while_building_stops_before_anything_is_written(write_config: Any, tmp_path: Path) -> None:
    (tmp_path / "slow.py").write_text(SLOW_MODEL)
    path = write_config(model={"target": "slow:slow_model"})
    process = start(path, cwd=tmp_path)
    wait_for((tmp_path / "building").exists, process)
    process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    _, err = process.communicate(timeout=60)
    assert time.monotonic() - started < 20  # at once: the factory's 30 s sleep is not waited out
    assert process.returncode == 143, err
    assert "Interrupted by SIGTERM." in err
    assert not (tmp_path / "runs").exists()


TERM_AT_BEGIN = """
import os, signal
import kit

class TermAtBegin:
    @kit.hookimpl
    def kit_train_begin(self):
        os.kill(os.getpid(), signal.SIGTERM)
"""


def test_sigterm_once_the_run_exists_saves_step_0_and_continue_is_exact(
    write_config: Any, kit_config: Any, tmp_path: Path
) -> None:
    (tmp_path / "term.py").write_text(TERM_AT_BEGIN)
    path = write_config(plugins=["term:TermAtBegin"], model={"target": "tiny_task:build_model",
                                                             "kwargs": {"dropout": 0.3}})
    process = start(path, cwd=tmp_path)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    (run_dir,) = (tmp_path / "runs" / "tiny").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["global_step"] == 0
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-00000000"]

    resumed = kitlib.Trainer(kitlib.load_config(path, ["plugins=[]"]), mode="continue", autoload=False)
    resumed.run()
    model = {"target": "tiny_task:build_model", "kwargs": {"dropout": 0.3}}
    straight = kitlib.Trainer(kit_config(model=model, experiment="straight"), autoload=False)
    straight.run()
    assert resumed.run_dir == run_dir and resumed.results == straight.results
    assert resumed.model is not None and straight.model is not None
    for a, b in zip(resumed.model.parameters(), straight.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_continue_restarts_a_run_that_has_no_checkpoint_in_place(
    write_config: Any, tmp_path: Path
) -> None:
    path = write_config(loggers=["jsonl"])
    assert kit("run", str(path)).exit_code == 0
    (good,) = (tmp_path / "runs" / "tiny").iterdir()
    before = {p.name: p.stat().st_mtime_ns for p in good.rglob("*")}
    empty = good.with_name(good.name + "-9")  # what a kill during start-up used to leave
    empty.mkdir()
    (empty / "config.yaml").write_bytes((good / "config.yaml").read_bytes())
    (empty / "metrics.jsonl").write_text('{"name": "train/loss", "step": 1, "value": 9.0}\n{"torn')

    result = kit("run", str(path), "--mode", "continue")
    assert result.exit_code == 0, result.output
    assert f"kit: {empty} has no checkpoint yet: starting it from the beginning" in result.stderr
    summary = json.loads((empty / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["run_id"] == empty.name
    assert pairs(empty) == pairs(good)  # the dead attempt's lines are gone
    assert {p.name: p.stat().st_mtime_ns for p in good.rglob("*")} == before  # the older run untouched


def test_a_run_directory_from_an_attacker_is_refused_cleanly(write_config: Any, tmp_path: Path) -> None:
    path = write_config()
    assert kit("run", str(path)).exit_code == 0
    (run_dir,) = (tmp_path / "runs" / "tiny").iterdir()
    (run_dir / "config.yaml").write_bytes(b"\xff\xfe")
    one_error_line(kit("run", str(path), "--mode", "continue"),
                   "--run-dir: cannot read the run's saved config")


def test_sigterm_to_the_whole_process_group_with_loader_workers(
    write_config: Any, make_config: Any, tmp_path: Path
) -> None:
    """scancel, systemd and Ctrl-C signal every process of the group, loader workers included."""
    path = write_config(make_config(training=LONG, checkpoint={"every_n_steps": 5},
                                    data={"target": "tiny_task:build_data", "batch_size": 8,
                                          "num_workers": 2}))
    process = start(path, cwd=tmp_path, group=True)
    runs = tmp_path / "runs" / "tiny"
    wait_for(lambda: any(runs.glob("*/checkpoints/step-*/manifest.json")), process)
    os.killpg(process.pid, signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert err.count("SIGTERM received") == 1 and "Interrupted by SIGTERM; checkpoint saved at" in err
    (run_dir,) = runs.iterdir()
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"


class SigintAt:
    @kitlib.hookimpl
    def kit_step_end(self, trainer: kitlib.Trainer) -> None:
        if trainer.global_step == 2:
            os.kill(os.getpid(), signal.SIGINT)


def test_a_signal_the_parent_ignores_stays_ignored(kit_config: Any) -> None:
    """A background job (`kit run … &` in a script) starts with SIGINT ignored; kit keeps it so."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        trainer = kitlib.Trainer(kit_config(), plugins=[SigintAt()], autoload=False)
        trainer.run()
        assert trainer.status == "finished" and trainer.stop_signal is None
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
