"""The ddp backend under real torchrun processes (gloo on CPU): conformance with one process,
one run directory, rank rules, kills and signals, and an exact resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from launching import (
    EXAMPLES,
    TESTS,
    config,
    events,
    final_weights,
    loop_events,
    probe,
    run_dirs,
    torchrun,
    write,
)

import kit

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")


# Shuffling, Adam, a scheduler, accumulation over 2 micro-batches (no_sync on the first):
# 32 training samples, a global batch of 8 -> 2 optimizer steps per epoch.
CONFORM = {
    "optimizer": {"name": "adam", "lr": 0.01},
    "scheduler": {"name": "StepLR", "kwargs": {"step_size": 1, "gamma": 0.7}},
    "training": {"iterations": 3, "device": "cpu", "log_every_n_steps": 1, "grad_accum": 2},
}


@pytest.mark.parametrize(("world", "kind"), [(1, "epoch"), (2, "epoch"), (2, "step")])
def test_every_rank_fires_the_one_process_sequence_and_rank_zero_records(tmp_path: Path, world: int,
                                                                          kind: str) -> None:
    single_out, ddp_out = tmp_path / "single", tmp_path / "ddp"
    loop = {**CONFORM["training"], "type": kind, "iterations": 3 if kind == "epoch" else 5}
    single = config(tmp_path, "single", **{**CONFORM, "training": loop},
                    data={"target": "tiny_task:build_data", "batch_size": 4}, plugins=[probe(single_out)])
    validated = kit.load_config(write(tmp_path, single, "single.yaml"))
    kit.Trainer(validated, autoload=False).run()

    per_rank = 4 // world  # the same global batch, split over the ranks
    ddp = config(tmp_path, "ddp", **{**CONFORM, "training": loop}, backend="ddp",
                 data={"target": "tiny_task:build_data", "batch_size": per_rank}, plugins=[probe(ddp_out)])
    result = torchrun("run", str(write(tmp_path, ddp)), cwd=tmp_path, nproc=world)
    assert result.returncode == 0, result.stderr[-3000:]

    reference = events(single_out, 0)
    for rank in range(world):
        seq = events(ddp_out, rank)
        assert seq[0] == ["train_begin", rank, world, rank == 0]
        assert loop_events(seq) == loop_events(reference), f"rank {rank}"
    recorded = [e for e in events(ddp_out, 0) if e[0] == "metric"]
    assert [e[1] for e in recorded] == [e[1] for e in reference if e[0] == "metric"]
    for rank in range(1, world):  # recorded once, by rank zero
        assert not [e for e in events(ddp_out, rank) if e[0] == "metric"]
    # the same global batches, gradients averaged over ranks: the same numbers, up to float rounding
    expected = {e[1]: e[2] for e in reference if e[0] == "metric" and "time" not in e[1]
                and "throughput" not in e[1]}
    got = {e[1]: e[2] for e in recorded if e[1] in expected}
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-6)
    (run_dir,) = run_dirs(tmp_path, "ddp")  # one run directory, whatever the world size
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["world_size"] == world
    assert summary["backend"] == "ddp"


def test_digits_trains_under_kit_run_nproc_per_node(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "kit", "run", str(EXAMPLES / "digits" / "config.yaml"),
         "--nproc-per-node", "2", "--set", "backend=ddp", "--set", "training.iterations=8",
         "--set", "loggers=[jsonl]", "--set", "plugins=[predictions]"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = run_dirs(tmp_path, "digits")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["results"]["test"]["accuracy"] >= 0.95, summary
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in lines if json.loads(line)["name"] == "train/loss"]
    assert steps == sorted(set(steps))  # one logger, on rank zero: each step once
    import numpy as np  # every rank's share of the test split, gathered to rank zero in order

    (test,) = (run_dir / "predictions").glob("test-*.npz")
    with np.load(test, allow_pickle=False) as saved:
        assert list(saved["indices"]) == list(range(len(saved["targets"])))
        accuracy = float((saved["predictions"] == saved["targets"]).mean())
    assert accuracy == pytest.approx(summary["results"]["test"]["accuracy"])


RESUME = {
    "model": {"target": "tiny_task:build_model", "kwargs": {"dropout": 0.3}},
    "data": {"target": "tiny_task:build_data", "batch_size": 4},
    "optimizer": {"name": "adam", "lr": 0.01},
    "scheduler": {"name": "StepLR", "kwargs": {"step_size": 1, "gamma": 0.7}},
    "training": {"iterations": 4, "device": "cpu", "log_every_n_steps": 1, "save_frequency": 100},
    "checkpoint": {"every_n_steps": 3},
    "backend": {"ddp": {"timeout_s": 30}},
}


def test_sigkill_of_one_rank_then_continue_is_bitwise_identical(tmp_path: Path) -> None:
    straight = write(tmp_path, config(tmp_path, "straight", **RESUME), "straight.yaml")
    assert torchrun("run", str(straight), cwd=tmp_path).returncode == 0

    cfg = config(tmp_path, "resumed", **RESUME, plugins=[probe(tmp_path / "killed", signal_rank=1,
                                                                signal_at_step=7, signum=9)])
    started = time.monotonic()
    killed = torchrun("run", str(write(tmp_path, cfg)), cwd=tmp_path)
    assert killed.returncode != 0
    assert time.monotonic() - started < 120  # the other rank did not wait for a dead peer
    (run_dir,) = run_dirs(tmp_path, "resumed")
    assert [p.name for p in sorted((run_dir / "checkpoints").glob("step-*"))] == ["step-00000003",
                                                                                "step-00000006"]
    cfg["plugins"] = [probe(tmp_path / "continued")]
    resumed = torchrun("run", str(write(tmp_path, cfg)), "--mode", "continue", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "from step-00000006" in resumed.stderr
    (straight_dir,) = run_dirs(tmp_path, "straight")
    a, b = final_weights(straight_dir), final_weights(run_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    first = next(e for e in events(tmp_path / "continued", 1) if e[0] == "step_end")
    assert first[3] == 7  # rank 1 picked up after the checkpoint's step (dropout from its own RNG)


def test_a_signal_on_one_rank_stops_every_rank_at_one_step_with_one_checkpoint(tmp_path: Path) -> None:
    # Steps slower than kit.loop.AGREE_EVERY_S: the ranks agree after every optimizer step, so
    # a signal caught at step 5 stops every rank right after it.
    sigterm = probe(tmp_path / "out", signal_rank=1, signal_at_step=5, signum=int(signal.SIGTERM),
                    step_sleep=0.25)
    cfg = config(tmp_path, "signal", **RESUME, plugins=[sigterm])
    path = write(tmp_path, cfg)
    result = torchrun("run", str(path), cwd=tmp_path)
    assert result.returncode != 0
    assert "exitcode  : 143" in result.stderr or "exitcode: 143" in result.stderr, result.stderr[-3000:]
    for rank in (0, 1):
        seq = events(tmp_path / "out", rank)
        assert ["interrupt", int(signal.SIGTERM)] in seq and seq[-1] == ["train_end", "interrupted"]
        assert [e for e in seq if e[0] == "step_end"][-1][3] == 5  # the same step on every rank
    (run_dir,) = run_dirs(tmp_path, "signal")
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"
    assert [p.name for p in sorted((run_dir / "checkpoints").glob("step-*"))] == ["step-00000003",
                                                                                "step-00000005"]
    # another world size is refused, naming both; the same one resumes
    one = torchrun("run", str(path), "--mode", "continue", cwd=tmp_path, nproc=1)
    errors = [line for line in one.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "taken with 2 processes and this run has 1" in errors[0], one.stderr[-2000:]
    assert "exitcode  : 2" in one.stderr  # torchrun's report (its own traceback) says so too
    cfg["plugins"] = []
    again = torchrun("run", str(write(tmp_path, cfg)), "--mode", "continue", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"


def test_two_nodes_on_loopback(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = write(tmp_path, config(tmp_path, "nodes", **CONFORM, backend="ddp",
                                 data={"target": "tiny_task:build_data", "batch_size": 2},
                                 plugins=[probe(tmp_path / "out")]))
    env = {**os.environ, "PYTHONPATH": str(TESTS), "OMP_NUM_THREADS": "1"}

    def node(rank: int) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "kit", "run", str(cfg), "--nproc-per-node", "1", "--nnodes", "2",
             "--node-rank", str(rank), "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-timeout", "60"],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    nodes = [node(0), node(1)]
    outputs = [p.communicate(timeout=240) for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], [o[1][-2000:] for o in outputs]
    assert events(tmp_path / "out", 1)[0] == ["train_begin", 1, 2, False]
    (run_dir,) = run_dirs(tmp_path, "nodes")
    assert json.loads((run_dir / "summary.json").read_text())["world_size"] == 2


def test_a_signal_to_the_whole_job_is_one_clean_stop(tmp_path: Path) -> None:
    """Ctrl-C or a scheduler signals every process: each rank gets it directly and again from
    torchrun, which forwards it. That is one stop, with a checkpoint, not an abort."""
    out = tmp_path / "out"
    cfg = config(tmp_path, "job", **{**RESUME, "training": {**RESUME["training"], "iterations": 50}},
                 plugins=[probe(out, mark_at_step=4, step_sleep=0.05)])
    env = {**os.environ, "PYTHONPATH": str(TESTS), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "kit", "run", str(write(tmp_path, cfg)), "--nproc-per-node", "2"]
    job = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (out / "marked").exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(job.pid, signal.SIGTERM)
    _, stderr = job.communicate(timeout=120)
    (run_dir,) = run_dirs(tmp_path, "job")
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted", stderr[-3000:]
    last_steps = set()
    for rank in (0, 1):
        seq = events(out, rank)
        assert seq[-1] == ["train_end", "interrupted"] and ["interrupt", int(signal.SIGTERM)] in seq
        last_steps.add([e for e in seq if e[0] == "step_end"][-1][3])
    (stopped_at,) = last_steps  # every rank stopped at the same step, and it was saved
    assert sorted((run_dir / "checkpoints").glob("step-*"))[-1].name == f"step-{stopped_at:08d}"
    assert stderr.count("Interrupted by SIGTERM;") == 1 and "stopped at once" not in stderr, stderr[-3000:]


def test_a_veto_on_one_rank_skips_the_step_on_every_rank(tmp_path: Path) -> None:
    """Ranks that disagreed would train different models; the veto is agreed instead."""
    finals = []
    for name, rank in (("one", 1), ("every", -2)):
        cfg = config(tmp_path, name, **{**RESUME, "checkpoint": {}}, loggers=["jsonl"],
                     plugins=[probe(tmp_path / name, veto_rank=rank, veto_at_step=2)])
        result = torchrun("run", str(write(tmp_path, cfg, f"{name}.yaml")), cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        (run_dir,) = run_dirs(tmp_path, name)
        finals.append(final_weights(run_dir))
        lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [(r["step"], r["value"]) for r in lines if r["name"] == "train/skipped_steps"] == [(3, 1)]
    one, every = finals
    assert all(torch.equal(one[k], every[k]) for k in one)

