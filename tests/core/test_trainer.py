from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from recorder import Recorder

import kit
from kit.errors import ConfigError, PluginNotFoundError


def run(config: Any, *plugins: object, **kwargs: Any) -> kit.Trainer:
    trainer = kit.Trainer(config, plugins=plugins, autoload=False, **kwargs)
    trainer.run()
    return trainer


def test_run_directory_holds_config_metrics_checkpoints_and_summary(kit_config: Any) -> None:
    trainer = run(kit_config(loggers=["jsonl"], training={"iterations": 3, "save_frequency": 1},
                             checkpoint={"keep_last": 2}))
    run_dir = trainer.run_dir
    assert run_dir is not None and run_dir.parent.name == "tiny"
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["training"]["iterations"] == 3 and "base_dir" not in saved
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {"train/loss", "train/lr", "train/loss_epoch", "val/loss", "val/accuracy",
            "test/loss", "test/accuracy"} <= {line["name"] for line in lines}
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert checkpoints == ["step-00000008", "step-00000012"]  # keep_last=2 pruned the first
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["iteration"] == 3
    assert summary["global_step"] == 3 * 4
    assert set(summary["results"]) == {"val", "test"}
    assert not any(p.name.startswith(".") for p in run_dir.rglob("*"))  # no temp files left


def test_checkpoint_loads_with_weights_only_and_carries_plugin_state(kit_config: Any) -> None:
    class Stateful:
        @kit.hookimpl
        def kit_checkpoint_save(self, trainer: kit.Trainer, checkpoint: dict[str, Any]) -> None:
            checkpoint["plugins"]["stateful"] = {"seen": trainer.global_step,
                                                 "buffer": torch.arange(3)}

    trainer = run(kit_config(), Stateful())
    assert trainer.run_dir is not None
    path = trainer.run_dir / "checkpoints" / "step-00000008" / "checkpoint.pt"
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["progress"] == {"iteration": 2, "global_step": 8, "epoch": 2, "epoch_batches": 0,
                                "phase": "done", "best": None, "world_size": 1}
    assert ckpt["plugins"]["stateful"]["seen"] == 8
    assert torch.equal(ckpt["plugins"]["stateful"]["buffer"], torch.arange(3))
    model = kit.Trainer(kit_config(), autoload=False)
    model.build()
    assert model.model is not None
    model.model.load_state_dict(ckpt["model"])
    assert {"python", "torch", "numpy"} <= set(ckpt["rng"])


def test_records_carry_step_iteration_split_and_python_values(kit_config: Any) -> None:
    recorder = Recorder()
    run(kit_config(training={"iterations": 2, "log_every_n_steps": 3}), recorder)
    train_loss = [r for r in recorder.records if r.name == "train/loss"]
    assert [r.step for r in train_loss] == [3, 6]  # every 3 optimizer steps, across epochs
    assert [r.iteration for r in train_loss] == [1, 2]
    assert all(isinstance(r.value, float) and r.split == "train" and r.kind == "scalar"
               for r in train_loss)
    val = [r for r in recorder.records if r.split == "val"]
    assert {r.name for r in val} == {"val/loss", "val/accuracy"}
    assert all(r.wall_time > 1e9 for r in recorder.records)


def test_losses_reach_hooks_as_detached_tensors(kit_config: Any) -> None:
    recorder = Recorder()
    run(kit_config(), recorder)
    assert recorder.losses and all(
        isinstance(loss, torch.Tensor) and not loss.requires_grad and loss.ndim == 0
        for loss in recorder.losses)


def test_a_plugin_added_or_removed_mid_iteration_takes_effect_at_the_next_batch(kit_config: Any) -> None:
    calls: dict[str, list[int]] = {"once": [], "late": []}

    class Late:
        @kit.hookimpl
        def kit_step_end(self, batch_idx: int) -> None:
            calls["late"].append(batch_idx)

    class Once:
        @kit.hookimpl
        def kit_step_end(self, trainer: kit.Trainer, batch_idx: int) -> None:
            calls["once"].append(batch_idx)
            trainer.pm.unregister(self)
            trainer.add_plugin(Late(), name="late")

    trainer = kit.Trainer(kit_config(training={"iterations": 1}), plugins=[Once()], autoload=False)
    trainer.run()
    assert calls["once"] == [0]
    assert trainer.batch_idx >= 2 and calls["late"] == list(range(1, trainer.batch_idx + 1))


def test_unimplemented_hooks_are_never_dispatched(kit_config: Any) -> None:
    class OnlyBegin:
        @kit.hookimpl
        def kit_train_begin(self) -> None:
            pass

    trainer = kit.Trainer(kit_config(), plugins=[OnlyBegin()], autoload=False)
    dispatched: Counter[str] = Counter()
    trainer.pm.add_hookcall_monitoring(lambda name, impls, kwargs: dispatched.update([name]),
                                       lambda *args: None)
    trainer.run()
    assert dispatched == Counter({"kit_train_begin": 1})


def test_same_seed_same_parameters(kit_config: Any) -> None:
    def final_params(seed: int) -> list[torch.Tensor]:
        trainer = run(kit_config(model={"kwargs": {"dropout": 0.3}}, training={"seed": seed}))
        assert trainer.model is not None
        return [p.detach().clone() for p in trainer.model.parameters()]

    a, b, c = final_params(3), final_params(3), final_params(4)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_unknown_mode_backend_and_logger_list_the_choices(kit_config: Any) -> None:
    with pytest.raises(ConfigError, match=r"^--mode: unknown mode 'nwe' \(did you mean 'new'\?"):
        kit.Trainer(kit_config(), mode="nwe", autoload=False).run()
    available = r"available: ddp, lightning, lightning-trainer, torch"
    with pytest.raises(ConfigError, match=rf"^backend: unknown backend 'jax'.*{available}"):
        kit.Trainer(kit_config(), backend="jax", autoload=False).run()
    with pytest.raises(ConfigError, match=r"^loggers\[0\]: unknown logger 'tensorbored'"):
        kit.Trainer(kit_config(loggers=["tensorbored"]), autoload=False)


def test_user_errors_name_the_config_key(kit_config: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^model.kwargs: build_model\(\) does not accept"):
        run(kit_config(model={"kwargs": {"width": 3}}))
    with pytest.raises(ConfigError, match=r"^model.target: cannot import 'no_such_module'"):
        run(kit_config(model={"target": "no_such_module:f"}))
    with pytest.raises(ConfigError, match=r"^model.target: module 'tiny_task' has no attribute"):
        run(kit_config(model={"target": "tiny_task:nope"}))
    with pytest.raises(ConfigError, match=r"^optimizer.name: unknown optimizer 'adamm'"):
        run(kit_config(optimizer={"name": "adamm"}))
    with pytest.raises(ConfigError, match=r"^task.metrics\[0\]: unknown metric 'f2'"):
        run(kit_config(task={"metrics": ["f2"]}))
    with pytest.raises(ConfigError, match=r"^training.precision: fp16 needs CUDA"):
        run(kit_config(training={"precision": "16"}))
    with pytest.raises(ConfigError, match=r"^data.target: the data factory returned int"):
        run(kit_config(data={"target": "tiny_task:not_data"}))
    assert not (tmp_path / "runs").exists()  # a bad config writes nothing


def test_errors_in_user_code_keep_their_traceback(kit_config: Any) -> None:
    with pytest.raises(RuntimeError, match="boom in user code"):
        run(kit_config(model={"target": "tiny_task:broken_model"}))


def test_targets_resolve_from_the_config_folder(tmp_path: Path, make_config: Any) -> None:
    for name, hidden in (("a", 5), ("b", 7)):  # same module name, two folders
        folder = tmp_path / name
        folder.mkdir()
        (folder / "mymodel.py").write_text(
            "from torch import nn\n"
            f"def build():\n    return nn.Sequential(nn.Linear(8, {hidden}), nn.Linear({hidden}, 3))\n")
        path = folder / "config.yaml"
        path.write_text(yaml.safe_dump(make_config(model={"target": "mymodel:build"},
                                                   data={"target": "tiny_task:build_data"})))
        trainer = kit.Trainer(kit.load_config(path), autoload=False)
        trainer.run()
        assert trainer.model is not None
        assert trainer.model[0].out_features == hidden


def test_plugins_not_installed_are_refused(kit_config: Any) -> None:
    with pytest.raises(ConfigError, match=r"^plugins\[0\]: unknown plugin 'ghost'"):
        kit.Trainer(kit_config(plugins=["ghost"]), autoload=False)
    assert issubclass(ConfigError, kit.KitError) and not issubclass(ConfigError, PluginNotFoundError)


def test_hparams_flatten_the_resolved_config(kit_config: Any) -> None:
    trainer = kit.Trainer(kit_config(loggers=["jsonl"], optimizer={"kwargs": {"momentum": 0.9}}),
                          autoload=False)
    hp = trainer.hparams()
    assert hp["training.iterations"] == 2 and hp["optimizer.kwargs.momentum"] == 0.9
    assert hp["model.target"] == "tiny_task:build_model"
    assert hp["task.name"] == "classification" and hp["task.metrics"] is None  # the task's own
    assert all(not isinstance(v, dict | list) for v in hp.values())


def test_step_time_and_throughput_are_logged_with_the_loss(kit_config: Any) -> None:
    recorder = Recorder()
    run(kit_config(training={"iterations": 2, "log_every_n_steps": 2}), recorder)
    by_name: dict[str, list[kit.MetricRecord]] = {}
    for r in recorder.records:
        by_name.setdefault(r.name, []).append(r)
    assert [r.step for r in by_name["train/step_time"]] == [r.step for r in by_name["train/loss"]]
    assert all(0 < r.value < 1 for r in by_name["train/step_time"])
    # 2 steps of 8 samples per window: throughput = samples / time = 8 / step_time
    for t, s in zip(by_name["train/throughput"], by_name["train/step_time"], strict=True):
        assert t.value == pytest.approx(8 / s.value, rel=1e-6)


def test_checkpoints_every_n_steps_and_seconds_and_always_at_the_end(kit_config: Any) -> None:
    by_steps = run(kit_config(training={"iterations": 2, "save_frequency": 100},
                              checkpoint={"every_n_steps": 3, "keep_last": 10}))
    assert by_steps.checkpoints is not None
    assert [p.name for p in by_steps.checkpoints.list()] == [
        "step-00000003", "step-00000006", "step-00000008"]  # 8: the end
    by_time = run(kit_config(training={"iterations": 1, "save_frequency": 100},
                             checkpoint={"every_n_seconds": 1e-9, "keep_last": 10}))
    assert by_time.checkpoints is not None
    assert [p.name for p in by_time.checkpoints.list()] == [f"step-0000000{i}" for i in (1, 2, 3, 4)]
