"""The lightning backend (kit's loop on Lightning Fabric): the one-process sequence and numbers
on one and two processes, started by Fabric's launcher or by torchrun; an exact resume after
SIGKILL; digits on every backend; kit's checkpoints, a Lightning-loadable one included."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from launching import (
    EXAMPLES,
    config,
    events,
    final_weights,
    kit_run,
    loop_events,
    probe,
    run_dirs,
    torchrun,
    write,
)

import kit

pytest.importorskip("lightning")
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")

# As in test_ddp: shuffling, Adam, a scheduler, accumulation over 2 micro-batches.
CONFORM = {
    "optimizer": {"name": "adam", "lr": 0.01},
    "scheduler": {"name": "StepLR", "kwargs": {"step_size": 1, "gamma": 0.7}},
    "training": {"iterations": 3, "device": "cpu", "log_every_n_steps": 1, "grad_accum": 2},
}
DATA = {"target": "tiny_task:build_data", "batch_size": 4}


def reference(tmp_path: Path, **overrides: Any) -> tuple[list[list[Any]], Path]:
    """The torch backend in this process: the events and the run every backend must match."""
    out = tmp_path / "torch-events"
    cfg = config(tmp_path, "torch", **{**CONFORM, **overrides}, data=DATA, plugins=[probe(out)])
    kit.Trainer(kit.load_config(write(tmp_path, cfg, "torch.yaml")), autoload=False).run()
    (run_dir,) = run_dirs(tmp_path, "torch")
    return events(out, 0), run_dir


def untimed(seq: list[list[Any]]) -> list[list[Any]]:
    """Events with the clock's readings (step time, throughput) left out: they differ run to run."""
    return [e[:2] if e[0] == "metric" and ("time" in e[1] or "throughput" in e[1]) else e for e in seq]


def test_one_process_is_the_torch_backend_bit_for_bit(tmp_path: Path) -> None:
    expected, torch_dir = reference(tmp_path)
    out = tmp_path / "lightning-events"
    cfg = config(tmp_path, "lightning", **CONFORM, data=DATA, backend={"lightning": {"accelerator": "cpu"}},
                 plugins=[probe(out)])
    kit.Trainer(kit.load_config(write(tmp_path, cfg)), autoload=False).run()
    assert untimed(events(out, 0)) == untimed(expected)  # every hook, step and recorded value
    (run_dir,) = run_dirs(tmp_path, "lightning")
    a, b = final_weights(torch_dir), final_weights(run_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["backend"] == "lightning" and summary["world_size"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["fabric", "torchrun"])
def test_two_processes_fire_the_one_process_sequence_and_rank_zero_records(tmp_path: Path,
                                                                           launcher: str) -> None:
    expected, _ = reference(tmp_path)
    out = tmp_path / "events"
    backend = {"lightning": {"accelerator": "cpu", "devices": 2, "strategy": "ddp"}}
    cfg = config(tmp_path, "two", **CONFORM, backend=backend, plugins=[probe(out)],
                 data={**DATA, "batch_size": 2})  # the same global batch, split over the ranks
    path = str(write(tmp_path, cfg))
    result = kit_run("run", path, cwd=tmp_path) if launcher == "fabric" else \
        torchrun("run", path, cwd=tmp_path, nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):
        seq = events(out, rank)
        assert seq[0] == ["train_begin", rank, 2, rank == 0]
        assert loop_events(seq) == loop_events(expected), f"rank {rank}"
    recorded = [e for e in events(out, 0) if e[0] == "metric"]
    assert [e[1] for e in recorded] == [e[1] for e in expected if e[0] == "metric"]
    assert not [e for e in events(out, 1) if e[0] == "metric"]  # recorded once, by rank zero
    numbers = {e[1]: e[2] for e in expected if e[0] == "metric" and "time" not in e[1]
               and "throughput" not in e[1]}
    assert {e[1]: e[2] for e in recorded if e[1] in numbers} == pytest.approx(numbers, rel=1e-4, abs=1e-6)
    (run_dir,) = run_dirs(tmp_path, "two")  # one run directory
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["world_size"] == 2


RESUME = {
    "model": {"target": "tiny_task:build_model", "kwargs": {"dropout": 0.3}},
    "data": DATA,
    "optimizer": {"name": "adam", "lr": 0.01},
    "scheduler": {"name": "StepLR", "kwargs": {"step_size": 1, "gamma": 0.7}},
    "training": {"iterations": 4, "device": "cpu", "log_every_n_steps": 1, "save_frequency": 100},
    "checkpoint": {"every_n_steps": 3},
    "backend": {"lightning": {"accelerator": "cpu"}},
}


@pytest.mark.slow
def test_sigkill_then_continue_is_bitwise_identical(tmp_path: Path) -> None:
    straight = write(tmp_path, config(tmp_path, "straight", **RESUME), "straight.yaml")
    kit.Trainer(kit.load_config(straight), autoload=False).run()
    cfg = config(tmp_path, "resumed", **RESUME,
                 plugins=[probe(tmp_path / "killed", signal_rank=0, signal_at_step=7, signum=9)])
    killed = kit_run("run", str(write(tmp_path, cfg)), cwd=tmp_path)
    assert killed.returncode == -9
    (run_dir,) = run_dirs(tmp_path, "resumed")
    assert [p.name for p in sorted((run_dir / "checkpoints").glob("step-*"))] == ["step-00000003",
                                                                                "step-00000006"]
    cfg["plugins"] = []
    resumed = kit.Trainer(kit.load_config(write(tmp_path, cfg)), mode="continue", autoload=False)
    resumed.run()
    assert resumed.run_dir == run_dir and resumed.last_checkpoint is not None
    (straight_dir,) = run_dirs(tmp_path, "straight")
    a, b = final_weights(straight_dir), final_weights(run_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


DIGITS_TOLERANCE = 0.02
"""Test accuracy on digits may differ between backends by at most this much (docs/backends)."""


@pytest.mark.slow
def test_digits_reaches_the_same_accuracy_on_torch_and_on_two_fabric_processes(tmp_path: Path) -> None:
    common = ["training.iterations=8", "loggers=[jsonl]", f"runs_dir={tmp_path / 'runs'}"]
    digits = EXAMPLES / "digits" / "config.yaml"
    one = kit.Trainer(kit.load_config(digits, [*common, "experiment=digits-torch"]), autoload=False)
    accuracy = {("torch", 1): one.run()["test"]["accuracy"]}
    two = ["--set", "backend={lightning: {accelerator: cpu, devices: 2, strategy: ddp}}",
           "--set", "experiment=digits-fabric", *(arg for value in common for arg in ("--set", value))]
    result = kit_run("run", str(digits), *two, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = run_dirs(tmp_path, "digits-fabric")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["backend"], summary["world_size"]) == ("lightning", 2)
    accuracy["lightning", 2] = summary["results"]["test"]["accuracy"]
    assert all(value >= 0.95 for value in accuracy.values()), accuracy
    assert max(accuracy.values()) - min(accuracy.values()) <= DIGITS_TOLERANCE, accuracy


def test_a_lightning_format_checkpoint_loads_with_lightning(tmp_path: Path) -> None:
    import tiny_task

    from kit_contrib.integrations.lightning import KitLightningModule

    cfg = config(tmp_path, "ckpt", data=DATA, backend={"lightning": {"accelerator": "cpu"}},
                 checkpoint={"format": "lightning"})
    trainer = kit.Trainer(kit.load_config(write(tmp_path, cfg)), autoload=False)
    trainer.run()
    assert trainer.model is not None and trainer.checkpoints is not None
    (folder,) = trainer.checkpoints.list()[-1:]
    module = KitLightningModule.load_from_checkpoint(folder / "model.ckpt", model=tiny_task.build_model())
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(module.model.state_dict()[name], value), name


@pytest.mark.parametrize(("backend", "extra", "message"), [
    ({"lightning": {"strategy": "fsdp"}}, [],
     "backend.lightning.strategy: Input should be 'auto', 'ddp' or 'ddp_find_unused_parameters_true'"),
    ({"lightning": {"precision": "bf16-mixed"}}, ["--set", "training.precision=16"],
     "backend.lightning.precision: training.precision 16 and backend.lightning.precision bf16-mixed"),
    ({"lightning": {"devices": 0, "accelerator": "cpu"}}, [],
     "backend.lightning: Lightning Fabric refused it: `Fabric(devices=0)`"),
    ({"lightning": {"colour": 1}}, [], "backend.lightning.colour: Extra inputs are not permitted"),
])
def test_bad_options_are_one_line_and_exit_2(tmp_path: Path, backend: dict[str, Any], extra: list[str],
                                             message: str) -> None:
    from click.testing import CliRunner

    from kit.cli import main

    path = write(tmp_path, config(tmp_path, "bad", backend=backend))
    result = CliRunner().invoke(main, ["run", str(path), *extra])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"Error: {message}") and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "runs").exists()
