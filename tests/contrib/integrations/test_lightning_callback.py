"""KitCallback in a bare Lightning Trainer: kit's hooks in the documented mapping, kit's jsonl
logger fed by ``self.log``, a kit plugin's stop and veto obeyed, plugin state in Lightning's
checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from recorder import Recorder
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import kit

L = pytest.importorskip("lightning")
from kit_contrib.integrations.lightning import KitCallback  # noqa: E402


class Module(L.LightningModule):
    def __init__(self, fail_at: int = -1) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(4, 2)
        self.fail_at = fail_at

    def _loss(self, batch: Any) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.global_step == self.fail_at:
            raise ValueError("the model's own bug")
        loss = self._loss(batch)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("val/loss", loss)
        return loss

    def test_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("test/loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader() -> DataLoader[Any]:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(16, 4, generator=g), torch.randint(0, 2, (16,), generator=g)),
                      batch_size=8)


def lightning_trainer(callback: KitCallback, tmp_path: Path, **options: Any) -> Any:
    settings = {"max_epochs": 2, "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
                "enable_model_summary": False, "log_every_n_steps": 1, "num_sanity_val_steps": 0,
                "default_root_dir": str(tmp_path), **options}
    return L.Trainer(callbacks=[callback], **settings)


def one_run(tmp_path: Path, experiment: str = "lt") -> Path:
    (run_dir,) = (tmp_path / "runs" / experiment).iterdir()
    return run_dir


STEP = ["step_begin", "before_backward", "after_backward", "before_optimizer_step", "skip_optimizer_step",
        "step_end"]
EPOCH = ["iteration_begin", *STEP, *STEP, "loader_exhausted", "val_begin", "val_step_begin", "val_step_end",
         "val_step_begin", "val_step_end", "val_end", "iteration_end"]


def test_a_bare_trainer_drives_kit_hooks_and_the_jsonl_logger(tmp_path: Path) -> None:
    recorder = Recorder()
    callback = KitCallback("lt", runs_dir=tmp_path / "runs", loggers=["jsonl"], plugins=[recorder],
                           autoload=False)
    trainer = lightning_trainer(callback, tmp_path)
    trainer.fit(Module(), loader(), loader())
    assert recorder.names() == ["train_begin", *EPOCH, *EPOCH, "train_end"]
    assert recorder.events[-1] == ("train_end", "finished")
    run_dir = one_run(tmp_path)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [(r["step"], r["split"]) for r in lines if r["name"] == "train/loss"]
    assert train == [(0, "train"), (1, "train"), (2, "train"), (3, "train")]  # Lightning's steps
    val = [r["value"] for r in lines if r["name"] == "val/loss"]
    assert len(val) == 2 and val[-1] == pytest.approx(float(trainer.callback_metrics["val/loss"]))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["mode"] == "session" and summary["global_step"] == 4
    assert [r.name for r in recorder.records] == [r["name"] for r in lines]


def test_test_results_reach_the_summary(tmp_path: Path) -> None:
    callback = KitCallback("lt", runs_dir=tmp_path / "runs", loggers=["jsonl"], autoload=False)
    lightning_trainer(callback, tmp_path).test(Module(), loader())
    summary = json.loads((one_run(tmp_path) / "summary.json").read_text())
    assert set(summary["results"]["test"]) == {"loss"}


def test_a_kit_plugin_stops_lightning(tmp_path: Path) -> None:
    class StopAtTwo:
        @kit.hookimpl
        def kit_step_end(self, trainer: kit.Trainer) -> None:
            if trainer.global_step >= 2:
                trainer.should_stop = True

    callback = KitCallback("lt", runs_dir=tmp_path / "runs", loggers=[], plugins=[StopAtTwo()],
                           autoload=False)
    trainer = lightning_trainer(callback, tmp_path, max_epochs=10)
    trainer.fit(Module(), loader(), loader())
    assert trainer.global_step == 2 and trainer.current_epoch <= 1


def test_a_veto_leaves_the_weights_as_they_were_and_is_recorded(tmp_path: Path) -> None:
    class VetoSecond:
        @kit.hookimpl
        def kit_skip_optimizer_step(self, trainer: kit.Trainer) -> str | None:
            return "bad batch" if trainer.global_step == 1 else None

    class Weights:
        def __init__(self) -> None:
            self.before: dict[int, torch.Tensor] = {}

        @kit.hookimpl
        def kit_step_begin(self, trainer: kit.Trainer) -> None:
            assert trainer.model is not None
            self.before[trainer.global_step] = trainer.model.net.weight.detach().clone()

    weights = Weights()
    callback = KitCallback("lt", runs_dir=tmp_path / "runs", loggers=["jsonl"],
                           plugins=[VetoSecond(), weights], autoload=False)
    lightning_trainer(callback, tmp_path, max_epochs=2, limit_val_batches=0).fit(Module(), loader())
    assert not torch.equal(weights.before[0], weights.before[1])  # a step taken moves the weights
    assert torch.equal(weights.before[1], weights.before[2])  # the vetoed one does not
    lines = [json.loads(line) for line in (one_run(tmp_path) / "metrics.jsonl").read_text().splitlines()]
    assert [(r["name"], r["value"]) for r in lines if r["name"].startswith("train/skip")] == \
        [("train/skipped_steps", 1), ("train/skip_reason", "bad batch")]


def test_plugin_state_rides_in_lightnings_checkpoint(tmp_path: Path) -> None:
    class Counting:
        def __init__(self) -> None:
            self.seen = 0
            self.loaded: int | None = None

        @kit.hookimpl
        def kit_step_end(self) -> None:
            self.seen += 1

        @kit.hookimpl
        def kit_checkpoint_save(self, checkpoint: dict[str, Any]) -> None:
            checkpoint["plugins"]["counting"] = {"seen": self.seen}

        @kit.hookimpl
        def kit_checkpoint_load(self, checkpoint: dict[str, Any]) -> None:
            self.loaded = checkpoint["plugins"]["counting"]["seen"]

    first = Counting()
    trainer = lightning_trainer(KitCallback("lt", runs_dir=tmp_path / "runs", loggers=[], plugins=[first],
                                            autoload=False), tmp_path, max_epochs=1)
    trainer.fit(Module(), loader(), loader())
    path = tmp_path / "lt.ckpt"
    trainer.save_checkpoint(path)
    second = Counting()
    again = lightning_trainer(KitCallback("lt", runs_dir=tmp_path / "runs", loggers=[], plugins=[second],
                                          autoload=False), tmp_path, max_epochs=2)
    again.fit(Module(), loader(), loader(), ckpt_path=path)
    assert first.seen == 2 and second.loaded == 2 and second.seen == 2


def test_a_failure_in_the_model_ends_the_kit_run_failed(tmp_path: Path) -> None:
    recorder = Recorder()
    callback = KitCallback("lt", runs_dir=tmp_path / "runs", loggers=["jsonl"], plugins=[recorder],
                           autoload=False)
    with pytest.raises(ValueError, match="the model's own bug"):
        lightning_trainer(callback, tmp_path).fit(Module(fail_at=1), loader(), loader())
    assert [e[0] for e in recorder.events][-2:] == ["exception", "train_end"]
    assert json.loads((one_run(tmp_path) / "summary.json").read_text())["status"] == "failed"
