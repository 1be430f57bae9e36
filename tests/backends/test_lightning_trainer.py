"""The lightning-trainer backend: Lightning's Trainer runs the loop and KitCallback fires kit's
hooks. The same hook sequence as kit's loop and the same numbers, except exactly the
documented differences; kit's checkpoints at the ends of epochs, and an exact resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from launching import config, events, final_weights, loop_events, probe, run_dirs, write

import kit

pytest.importorskip("lightning")

CONFORM = {
    "optimizer": {"name": "adam", "lr": 0.01},
    "scheduler": {"name": "StepLR", "kwargs": {"step_size": 1, "gamma": 0.7}},
    "training": {"iterations": 3, "device": "cpu", "log_every_n_steps": 1, "grad_accum": 2},
    "data": {"target": "tiny_task:build_data", "batch_size": 4},
}


def run(tmp_path: Path, name: str, backend: str, **overrides: Any) -> tuple[list[list[Any]], Path]:
    out = tmp_path / f"{name}-events"
    cfg = config(tmp_path, name, **{**CONFORM, **overrides}, backend=backend, plugins=[probe(out)])
    kit.Trainer(kit.load_config(write(tmp_path, cfg, f"{name}.yaml")), autoload=False).run()
    (run_dir,) = run_dirs(tmp_path, name)
    return events(out, 0), run_dir


def metric_names(seq: list[list[Any]]) -> list[str]:
    return [e[1] for e in seq if e[0] == "metric"]


def test_the_hook_sequence_and_the_numbers_are_kits_but_for_the_documented_differences(
        tmp_path: Path) -> None:
    kit_events, kit_dir = run(tmp_path, "kit", "torch")
    pl_events, pl_dir = run(tmp_path, "pl", "lightning-trainer")
    # every hook, in order, at the same iterations, batches and optimizer steps
    assert loop_events(pl_events) == loop_events(kit_events)
    # the same data order, gradients, optimizer and scheduler: the same weights, bit for bit
    a, b = final_weights(kit_dir), final_weights(pl_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    kit_summary = json.loads((kit_dir / "summary.json").read_text())
    pl_summary = json.loads((pl_dir / "summary.json").read_text())
    assert pl_summary["results"].keys() == kit_summary["results"].keys() == {"val", "test"}
    for split, values in kit_summary["results"].items():
        assert pl_summary["results"][split] == pytest.approx(values, rel=1e-6), split
    # train/loss (the mean since the last log) and train/loss_epoch are kit's own numbers
    for name in ("train/loss", "train/loss_epoch"):
        ours = [e[2] for e in pl_events if e[0] == "metric" and e[1] == name]
        assert ours and ours == pytest.approx([e[2] for e in kit_events if e[0] == "metric" and e[1] == name],
                                     rel=1e-6), name
    # the difference: kit's lr, step time and throughput records are not made
    assert set(metric_names(kit_events)) - set(metric_names(pl_events)) == \
        {"train/lr", "train/step_time", "train/throughput"}
    assert set(metric_names(pl_events)) == set(metric_names(kit_events)) - \
        {"train/lr", "train/step_time", "train/throughput"}


def test_a_stopped_run_continues_to_the_same_weights(tmp_path: Path) -> None:
    straight = config(tmp_path, "straight", **CONFORM, backend="lightning-trainer")
    kit.Trainer(kit.load_config(write(tmp_path, straight, "straight.yaml")), autoload=False).run()

    class StopAfterFirstEpoch:
        @kit.hookimpl
        def kit_iteration_end(self, trainer: kit.Trainer, iteration: int) -> None:
            if iteration == 1:
                trainer.should_stop = True

    resumed = config(tmp_path, "resumed", **CONFORM, backend="lightning-trainer")
    cfg = kit.load_config(write(tmp_path, resumed))
    first = kit.Trainer(cfg, plugins=[StopAfterFirstEpoch()], autoload=False)
    first.run()
    assert first.iteration == 1 and first.checkpoints is not None and len(first.checkpoints.list()) == 1
    again = kit.Trainer(cfg, mode="continue", autoload=False)
    again.run()
    assert again.iteration == 3 and again.global_step == 12
    (straight_dir,) = run_dirs(tmp_path, "straight")
    a, b = final_weights(straight_dir), final_weights(again.run_dir)  # type: ignore[arg-type]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"training": {**CONFORM["training"], "type": "step"}},
     "training.type: the lightning-trainer backend trains by epochs"),
    ({"checkpoint": {"every_n_steps": 5}}, "checkpoint.every_n_steps: Lightning owns the loop"),
])
def test_what_lightning_owns_is_refused_before_anything_is_written(tmp_path: Path, overrides: dict[str, Any],
                                                                   message: str) -> None:
    cfg = kit.load_config(write(tmp_path, config(tmp_path, "bad", **{**CONFORM, **overrides},
                                                 backend="lightning-trainer")))
    with pytest.raises(kit.ConfigError, match=message):
        kit.Trainer(cfg, autoload=False).run()
    assert not (tmp_path / "runs").exists()


def test_trainer_options_pass_through_and_kits_own_are_refused(tmp_path: Path) -> None:
    ok = {"lightning-trainer": {"trainer": {"deterministic": True, "profiler": "simple"}}}
    cfg = config(tmp_path, "opts", **CONFORM, backend=ok)
    trainer = kit.Trainer(kit.load_config(write(tmp_path, cfg)), autoload=False)
    trainer.run()
    assert trainer.status == "finished"
    for bad, says in (({"max_epochs": 3}, "max_epochs: set by kit from its config"),
                      ({"colour": 1}, "colour: not an argument of lightning.pytorch.Trainer")):
        wrong = config(tmp_path, "wrong", **CONFORM, backend={"lightning-trainer": {"trainer": bad}})
        with pytest.raises(kit.ConfigError, match=f"backend.lightning-trainer.trainer: {says}"):
            kit.Trainer(kit.load_config(write(tmp_path, wrong, "wrong.yaml")), autoload=False).run()


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_a_signal_mid_epoch_stops_cleanly_keeping_the_last_epochs_checkpoint(tmp_path: Path,
                                                                            signame: str) -> None:
    """Lightning owns a position inside an epoch: the run stops after the batch, keeps the
    checkpoint of the last finished epoch, and continues from there to the straight weights."""
    import os
    import signal

    from kit.errors import RunInterrupted

    class SignalAt:
        @kit.hookimpl
        def kit_step_end(self, trainer: kit.Trainer) -> None:
            if trainer.global_step == 6 and trainer.stop_signal is None:
                os.kill(os.getpid(), getattr(signal, signame))

    straight = kit.Trainer(kit.load_config(write(tmp_path, config(tmp_path, "straight", **CONFORM,
                                                                  backend="lightning-trainer"), "s.yaml")),
                           autoload=False)
    straight.run()
    cfg = kit.load_config(write(tmp_path, config(tmp_path, "sig", **CONFORM, backend="lightning-trainer")))
    stopped = kit.Trainer(cfg, plugins=[SignalAt()], autoload=False)
    with pytest.raises(RunInterrupted):
        stopped.run()
    assert stopped.status == "interrupted" and stopped.checkpoints is not None
    assert [p.name for p in stopped.checkpoints.list()] == ["step-00000004"]  # epoch 1's end
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Lightning's abort path not taken
    again = kit.Trainer(cfg, mode="continue", autoload=False)
    again.run()
    a, b = final_weights(straight.run_dir), final_weights(again.run_dir)  # type: ignore[arg-type]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_disagreeing_precisions_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    training = {**CONFORM["training"], "precision": "bf16"}
    cfg = config(tmp_path, "precision", **{**CONFORM, "training": training},
                 backend={"lightning-trainer": {"precision": "16-mixed"}})
    says = (r"^backend\.lightning-trainer\.precision: training\.precision bf16 and "
            r"backend\.lightning-trainer\.precision 16-mixed disagree")
    with pytest.raises(kit.ConfigError, match=says):
        kit.Trainer(kit.load_config(write(tmp_path, cfg)), autoload=False).run()
    assert not (tmp_path / "runs").exists()
