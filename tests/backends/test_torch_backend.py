"""What the native loop does beyond event order: accumulation, clipping, AMP, schedulers."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from recorder import Recorder

import kit


def trained(config: Any, *plugins: object) -> kit.Trainer:
    trainer = kit.Trainer(config, plugins=plugins, autoload=False)
    trainer.run()
    return trainer


def params(trainer: kit.Trainer) -> list[torch.Tensor]:
    assert trainer.model is not None
    return [p.detach() for p in trainer.model.parameters()]


def test_gradient_accumulation_matches_a_larger_batch(kit_config: Any) -> None:
    big = trained(kit_config(training={"iterations": 2},
                             data={"shuffle": False, "batch_size": 16}))
    small = trained(kit_config(training={"iterations": 2, "grad_accum": 2},
                               data={"shuffle": False, "batch_size": 8}))
    assert small.global_step == big.global_step == 4
    for a, b in zip(params(big), params(small), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_clipping_bounds_the_update(kit_config: Any) -> None:
    config = kit_config(training={"type": "step", "iterations": 1, "clip_grad_norm": 0.01},
                        optimizer={"name": "sgd", "lr": 1.0})
    before = kit.Trainer(config, autoload=False)
    before.build()
    start = [p.clone() for p in params(before)]
    after = trained(config)
    moved = torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(params(after), start, strict=True)))
    assert 0 < float(moved) <= 0.01 + 1e-6


def test_bf16_autocast_on_cpu(kit_config: Any) -> None:
    seen: list[torch.dtype] = []

    class Probe:
        @kit.hookimpl
        def kit_train_begin(self, trainer: kit.Trainer) -> None:
            assert trainer.model is not None
            trainer.model[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))

    trainer = trained(kit_config(training={"precision": "bf16-mixed"}), Probe())
    assert torch.bfloat16 in seen
    assert trainer.results["test"]["loss"] == trainer.results["test"]["loss"]  # not NaN


@pytest.mark.parametrize(("interval", "expected_steps"), [("iteration", 3), ("step", 12)])
def test_scheduler_interval(kit_config: Any, interval: str, expected_steps: int) -> None:
    config = kit_config(training={"iterations": 3},
                        scheduler={"name": "steplr", "interval": interval,
                                   "kwargs": {"step_size": 1, "gamma": 0.5}})
    trainer = trained(config)
    assert trainer.optimizer is not None
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**expected_steps)


def test_plateau_scheduler_steps_on_validation_loss(kit_config: Any) -> None:
    recorder = Recorder()
    config = kit_config(training={"iterations": 3},
                        scheduler={"name": "reducelronplateau", "kwargs": {"patience": 0}})
    trainer = trained(config, recorder)
    val_losses = [r.value for r in recorder.records if r.name == "val/loss"]
    assert len(val_losses) == 3
    assert trainer.scheduler is not None and trainer.scheduler.last_epoch == 3
    assert trainer.scheduler.best == pytest.approx(min(val_losses))


def test_inference_batch_size_is_used_for_evaluation(kit_config: Any) -> None:
    trainer = kit.Trainer(kit_config(training={"inference_batch_size": 32}), autoload=False)
    trainer.build()
    assert trainer.val_loader is not None and trainer.val_loader.batch_size == 32
    assert trainer.train_loader is not None and trainer.train_loader.batch_size == 8


def test_epoch_sampler_order_depends_only_on_seed_and_epoch() -> None:
    sampler = kit.EpochSampler(10, seed=5)
    sampler.set_epoch(3)
    first = list(sampler)
    torch.manual_seed(123)  # global RNG state does not matter
    assert list(sampler) == first
    sampler.set_epoch(4)
    assert list(sampler) != first and sorted(sampler) == list(range(10))


def test_compile(kit_config: Any) -> None:
    pytest.importorskip("torch._inductor")
    trainer = trained(kit_config(training={"compile": True, "iterations": 1}))
    assert trainer.status == "finished"
    assert trainer.run_dir is not None
    ckpt = torch.load(trainer.run_dir / "checkpoints" / "step-00000004" / "checkpoint.pt", weights_only=True)
    assert not any(k.startswith("_orig_mod") for k in ckpt["model"])


def test_a_resumed_pass_over_the_users_own_loader_is_exact(kit_config: Any) -> None:
    """Replaying batches to the resume point must still end the pass with its optimizer step."""
    import os
    import signal

    from kit.errors import RunInterrupted

    class StopAtFirstStep:
        @kit.hookimpl
        def kit_step_end(self, trainer: kit.Trainer) -> None:
            if trainer.global_step == 1 and trainer.stop_signal is None:
                os.kill(os.getpid(), signal.SIGTERM)

    overrides = {"data": {"target": "tiny_task:build_loaders"},
                 "training": {"iterations": 2, "grad_accum": 3}}  # 4 batches: steps after 3 and 4
    straight = kit.Trainer(kit_config(**overrides, experiment="straight"), autoload=False)
    straight.run()
    stopped = kit.Trainer(kit_config(**overrides), plugins=[StopAtFirstStep()], autoload=False)
    with pytest.raises(RunInterrupted):
        stopped.run()
    assert stopped.epoch_batches == 3
    with pytest.warns(UserWarning, match="replaying 3 batches"):
        resumed = kit.Trainer(kit_config(**overrides), mode="continue", autoload=False)
        resumed.run()
    assert resumed.global_step == straight.global_step == 4
    assert straight.model is not None and resumed.model is not None
    for a, b in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)
