"""Tasks: any batch and model through one loop, with torchmetrics by name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from clitools import kit_process, one_error_line

import kit
from kit.errors import ConfigError

REGRESSION = {"optimizer": {"name": "adam", "lr": 0.05},
              "training": {"iterations": 30, "eval_frequency": 30, "save_frequency": 30}}


def run(kit_config: Any, **overrides: Any) -> kit.Trainer:
    trainer = kit.Trainer(kit_config(**{**REGRESSION, **overrides}), autoload=False)
    trainer.run()
    return trainer


def test_regression_learns_and_reports_torchmetrics(kit_config: Any) -> None:
    trainer = run(kit_config, model={"target": "tiny_regression:build_linear"},
                  data={"target": "tiny_regression:build_pairs", "batch_size": 8},
                  task={"name": "regression", "metrics": ["r2", {"mean_absolute_error": {}},
                                                           "torchmetrics:MeanSquaredError"]})
    test = trainer.results["test"]
    assert set(test) == {"loss", "r2", "mean_absolute_error", "mean_squared_error"}
    assert test["r2"] > 0.95 and test["mean_squared_error"] == pytest.approx(test["loss"], rel=1e-4)


def test_a_regression_mask_keeps_masked_targets_out_of_loss_and_metrics(kit_config: Any) -> None:
    trainer = run(kit_config, model={"target": "tiny_regression:build_linear"},
                  data={"target": "tiny_regression:build_pairs", "kwargs": {"mask": True}, "batch_size": 8},
                  task={"name": "regression", "metrics": ["r2"]})
    assert trainer.results["test"]["r2"] > 0.8  # a target of 1e6 seen anywhere would ruin both
    assert trainer.results["test"]["loss"] < 2


def test_a_model_that_returns_its_own_loss_from_a_dict_batch(kit_config: Any) -> None:
    trainer = run(kit_config, model={"target": "tiny_regression:build_own_loss"},
                  data={"target": "tiny_regression:build_dicts", "batch_size": 8},
                  task={"name": "model_loss", "options": {"prediction_key": "predictions", "target_key": "y"},
                        "metrics": ["r2"]})
    assert trainer.results["test"]["r2"] > 0.95
    assert trainer.results["val"]["loss"] < 1


def test_classification_metrics_take_kwargs_and_learn_num_classes(kit_config: Any) -> None:
    trainer = kit.Trainer(kit_config(task={"metrics": ["accuracy", {"f1": {"average": "macro"}}]}),
                          autoload=False)
    trainer.run()
    test = trainer.results["test"]
    assert set(test) == {"loss", "accuracy", "f1"} and 0 <= test["f1"] <= 1


@pytest.mark.parametrize(("task", "expected"), [
    ({"name": "regresion"}, "task.name: unknown task 'regresion'"),
    ({"name": "model_loss", "options": {"prediction": "p"}}, "task.options.prediction"),
    ({"name": "model_loss", "metrics": ["r2"]}, "task.options: the model_loss task gives metrics nothing"),
    ({"metrics": ["accuracy", {"f2": {}}]}, "task.metrics[1]: unknown metric 'f2'"),
    ({"name": "tiny_task:build_model"}, "task.name: tiny_task:build_model is not a kit.Task subclass"),
])
def test_a_bad_task_is_one_line_before_anything_is_written(write_config: Any, tmp_path: Path,
                                                           task: dict[str, Any], expected: str) -> None:
    result = kit_process("run", str(write_config(task=task)), cwd=tmp_path)
    one_error_line(result, expected)
    assert not (tmp_path / "runs").exists()


def test_metric_kwargs_torchmetrics_refuses_are_a_config_error(kit_config: Any) -> None:
    with pytest.raises(ConfigError, match=r"task.metrics\[0\]: Accuracy rejected these options"):
        kit.Trainer(kit_config(task={"metrics": [{"accuracy": {"top_k": "x"}}]}), autoload=False).run()


def test_metrics_reach_the_loggers_as_val_and_test_names(kit_config: Any) -> None:
    trainer = run(kit_config, model={"target": "tiny_regression:build_linear"},
                  data={"target": "tiny_regression:build_pairs", "batch_size": 8},
                  task={"name": "regression", "metrics": ["r2"]}, loggers=["jsonl"])
    assert trainer.run_dir is not None
    lines = (trainer.run_dir / "metrics.jsonl").read_text().splitlines()
    names = {json.loads(line)["name"] for line in lines}
    assert {"val/r2", "test/r2", "val/loss", "test/loss"} <= names


def test_a_subclass_evaluation_step_is_the_loss_it_trains_on() -> None:
    """A task's training loss is its evaluation_step's, so overriding that one method changes
    both (label smoothing here)."""
    import dataclasses

    import torch

    from kit.tasks import Classification

    class Smoothed(Classification):
        def evaluation_step(self, forward: Any, batch: Any) -> Any:
            out = super().evaluation_step(forward, batch)
            loss = torch.nn.functional.cross_entropy(out.preds, out.targets, label_smoothing=0.3)
            return dataclasses.replace(out, loss=loss)

    task = Smoothed()
    task.loss = torch.nn.functional.cross_entropy
    model = torch.nn.Linear(4, 3)
    batch = (torch.randn(8, 4), torch.randint(0, 3, (8,)))
    assert torch.equal(task.training_step(model, batch), task.evaluation_step(model, batch).loss)
    assert not torch.equal(task.training_step(model, batch),
                           Classification.evaluation_step(task, model, batch).loss)
