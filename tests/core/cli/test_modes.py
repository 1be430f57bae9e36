"""`kit run --mode continue|evaluate`, `kit ckpt` and `kit runs` as a user runs them."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from kit.cli import main

TESTS = Path(__file__).resolve().parents[2]


def kit(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def one_error_line(result: Any, expected: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"Error: {expected}"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_sigterm_saves_exits_143_and_the_run_continues(write_config: Any, tmp_path: Path) -> None:
    path = write_config(training={"type": "step", "iterations": 100_000, "device": "cpu",
                                  "log_every_n_steps": 1, "eval_frequency": 1000},
                        loggers=[{"jsonl": {"flush_seconds": 0}}])
    env = {"PYTHONPATH": str(TESTS), "PATH": "/usr/bin:/bin"}
    process = subprocess.Popen([sys.executable, "-m", "kit", "run", str(path)], env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    metrics = tmp_path / "runs" / "tiny"
    deadline = time.monotonic() + 60
    while not any(p.stat().st_size for p in metrics.glob("*/metrics.jsonl")):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM == 143, err
    assert "Interrupted by SIGTERM; checkpoint saved at" in err and "--mode continue" in err
    (run_dir,) = metrics.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and not (run_dir / "run.lock").exists()
    stopped = summary["iteration"]

    result = kit("run", str(path), "--mode", "continue", "--set", f"training.iterations={stopped + 3}")
    assert result.exit_code == 0, result.output
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["iteration"] == stopped + 3
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["name"] == "train/loss"]
    assert sorted(set(steps)) == list(range(1, stopped + 4))  # no step lost or skipped


def test_mode_errors_are_one_clear_line(write_config: Any, tmp_path: Path) -> None:
    path = str(write_config())
    one_error_line(kit("run", path, "--mode", "continue"),
                   f"--mode: no run of experiment 'tiny' under {tmp_path / 'runs'} to continue")
    one_error_line(kit("run", path, "--mode", "evaluate", "--checkpoint", "missing/step-1"),
                   "--checkpoint: checkpoint missing/step-1 not found")
    (tmp_path / "empty").mkdir()
    one_error_line(kit("run", path, "--mode", "continue", "--run-dir", str(tmp_path / "empty")),
                   f"--run-dir: {tmp_path / 'empty'} is not a kit run directory")
    one_error_line(kit("run", path, "--mode", "continue", "--run-dir", path),
                   f"--run-dir: {path} is not a kit run directory")
    assert kit("run", path).exit_code == 0
    one_error_line(kit("run", path, "--mode", "continue", "--set", "model.kwargs.hidden=4",
                       "--set", "data.batch_size=4"),
                   "--mode continue: the config changed in ways that break an exact resume: "
                   "data.batch_size: 8 -> 4; model.kwargs.hidden: (unset) -> 4")


def test_evaluate_prints_a_table(write_config: Any) -> None:
    path = str(write_config())
    assert kit("run", path).exit_code == 0
    result = kit("run", path, "--mode", "evaluate", "--checkpoint", "last")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("step-00000008 (iteration 2, step 8)")
    assert [line.split()[0] for line in lines[1:]] == ["split", "val", "test"]


def test_ckpt_inspect_and_convert(write_config: Any, tmp_path: Path) -> None:
    path = str(write_config())
    assert kit("run", path).exit_code == 0
    (folder,) = [p for p in tmp_path.glob("runs/tiny/*/checkpoints/step-00000008")]
    shown = kit("ckpt", "inspect", str(folder))
    assert shown.exit_code == 0, shown.output
    assert "format      torch" in shown.output and "verified against its manifest" in shown.output
    assert "iteration 2, global_step 8, epoch 2" in shown.output
    assert any(line.startswith("model       4 tensors, 195 values") for line in shown.output.splitlines())

    converted = kit("ckpt", "convert", str(folder), "--to", "safetensors")
    assert converted.exit_code == 0, converted.output
    target = folder.with_name("step-00000008-safetensors")
    report = json.loads(kit("ckpt", "inspect", str(target), "--json").output)
    assert report["format"] == "safetensors" and report["progress"]["global_step"] == 8
    assert report["sections"]["model"]["elements"] == 195
    # the converted checkpoint evaluates to the same results
    same = kit("run", path, "--mode", "evaluate", "--checkpoint", str(target))
    original = kit("run", path, "--mode", "evaluate", "--checkpoint", str(folder))
    assert same.stdout.splitlines()[1:] == original.stdout.splitlines()[1:]

    one_error_line(kit("ckpt", "convert", str(folder), "--to", "safetensors"),
                   f"{target} already exists")
    one_error_line(kit("ckpt", "convert", str(folder), "--to", "onnx"),
                   "--to: unknown checkpoint format 'onnx'")
    for command in (["inspect"], ["convert", "--to", "torch"]):
        one_error_line(kit("ckpt", *command, str(tmp_path / "nowhere")),
                       f"checkpoint {tmp_path / 'nowhere'} not found (check the path)")
    (folder / "checkpoint.pt").write_bytes(b"garbage")
    one_error_line(kit("ckpt", "inspect", str(folder)), f"checkpoint {folder}: checkpoint.pt is 7 bytes")


def test_runs_list_shows_status_progress_and_best(write_config: Any, tmp_path: Path) -> None:
    path = str(write_config(checkpoint={"monitor": "val/loss"}))
    assert kit("run", path).exit_code == 0
    assert kit("run", path, "--set", "experiment=second").exit_code == 0
    crashed = next((tmp_path / "runs" / "second").iterdir())
    (crashed / "summary.json").unlink()
    dead = {"pid": 2**22 + 12345, "host": socket.gethostname()}  # above Linux's pid_max
    (crashed / "run.lock").write_text(json.dumps(dead))
    listed = kit("runs", "list", str(tmp_path / "runs"), "--json").output
    rows = [json.loads(line) for line in listed.splitlines()]
    assert [(r["status"], r["iteration"], r["iterations"]) for r in rows] == [
        ("crashed", 2, 2), ("finished", 2, 2)]
    assert rows[1]["best"]["name"] == "val/loss"
    table = kit("runs", "list", str(tmp_path / "runs")).output.splitlines()
    assert table[0].split() == ["RUN", "STATUS", "PROGRESS", "BEST"]
    assert table[2].split()[1:3] == ["finished", "2/2"] and "val/loss=" in table[2]


def test_two_runs_on_one_directory_exactly_one_runs(write_config: Any, tmp_path: Path) -> None:
    path = str(write_config())
    assert kit("run", path).exit_code == 0
    (run_dir,) = (tmp_path / "runs" / "tiny").iterdir()
    args = [sys.executable, "-m", "kit", "run", path, "--mode", "continue", "--run-dir", str(run_dir),
            "--set", "training.iterations=100000"]
    env = {"PYTHONPATH": str(TESTS), "PATH": "/usr/bin:/bin"}
    first = subprocess.Popen(args, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (run_dir / "run.lock").exists():
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.05)
    second = subprocess.run(args, env=env, text=True, capture_output=True)
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=60)
    assert first.returncode == 143
    assert second.returncode == 2
    assert second.stderr.startswith(f"Error: run directory {run_dir} is in use by pid {first.pid}")
    assert len(second.stderr.strip().splitlines()) == 1
