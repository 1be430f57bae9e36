"""The tensorboard logger, read back with TensorBoard's own EventAccumulator."""

from __future__ import annotations

from typing import Any

import pytest

import kit

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


class TextAndHistogram:
    @kit.hookimpl
    def kit_val_end(self, trainer: kit.Trainer, iteration: int) -> None:
        trainer.record("notes/val", f"validated iteration {iteration}", kind="text", split="val")
        trainer.record("weights/first", trainer.model[0].weight.flatten(), kind="histogram")


def test_every_record_is_read_back_at_its_step(kit_config: Any) -> None:
    from recorder import Recorder

    recorder = Recorder()
    trainer = kit.Trainer(kit_config(loggers=["tensorboard"], training={"iterations": 2}),
                          plugins=[recorder, TextAndHistogram()], autoload=False)
    trainer.run()
    assert trainer.run_dir is not None
    acc = event_accumulator.EventAccumulator(
        str(trainer.run_dir / "tensorboard"),
        size_guidance={"scalars": 0, "tensors": 0, "histograms": 0})
    acc.Reload()
    scalars = [r for r in recorder.records if r.kind == "scalar"]
    assert {r.name for r in scalars} >= {"train/loss", "val/accuracy", "test/loss"}
    for name in {r.name for r in scalars}:
        expected = [(r.step, pytest.approx(r.value, rel=1e-6)) for r in scalars if r.name == name]
        assert [(e.step, e.value) for e in acc.Scalars(name)] == expected, name
    texts = acc.Tensors("notes/val/text_summary")
    assert [t.step for t in texts] == [4, 8]
    assert texts[0].tensor_proto.string_val[0] == b"validated iteration 1"
    assert [h.step for h in acc.Histograms("weights/first")] == [4, 8]
    hparams = acc.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in hparams
    assert b"training.iterations" in hparams["_hparams_/session_start_info"]


def test_missing_tensorboard_is_named_with_the_extra() -> None:
    registry = kit.Registry.from_environment()
    spec = registry.find("kit.loggers", "tensorboard")
    assert spec.requires == ("tensorboard",) and spec.unavailable(registry) is None
    without = kit.Registry(registry.specs, installed=["kit-trainer", "torch"])  # no tensorboard here
    assert spec.unavailable(without) == "missing tensorboard: install `kit-trainer[tensorboard]`"


def test_a_run_restarted_from_the_beginning_draws_one_curve(kit_config: Any) -> None:
    import shutil

    config = kit_config(loggers=["tensorboard"], training={"iterations": 2, "log_every_n_steps": 1})
    first = kit.Trainer(config, autoload=False)
    first.run()
    assert first.run_dir is not None
    shutil.rmtree(first.run_dir / "checkpoints")  # as if killed before its first checkpoint
    again = kit.Trainer(config, mode="continue", autoload=False)
    again.run()
    assert again.run_dir == first.run_dir
    acc = event_accumulator.EventAccumulator(str(first.run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    steps = [e.step for e in acc.Scalars("train/loss")]
    assert steps == sorted(set(steps)) == list(range(1, 9))  # once each, not two overlapping curves
