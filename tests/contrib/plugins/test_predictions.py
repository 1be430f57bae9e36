"""The predictions plugin: every evaluation's outputs on disk, readable without pickle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from clitools import kit_process, one_error_line

import kit


def read(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def test_each_evaluation_is_saved_and_matches_the_recorded_metrics(kit_config: Any) -> None:
    config = kit_config(training={"iterations": 2}, plugins=["predictions"], loggers=["jsonl"])
    trainer = kit.Trainer(config, autoload=False)
    trainer.run()
    assert trainer.run_dir is not None
    folder = trainer.run_dir / "predictions"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["test-step00000008.npz", "val-step00000004.npz", "val-step00000008.npz"]
    test = read(folder / "test-step00000008.npz")
    assert list(test["indices"]) == list(range(32))  # every sample once, in order
    assert test["outputs"].shape == (32, 3) and test["targets"].shape == (32,)
    assert (test["predictions"] == test["outputs"].argmax(-1)).all()
    accuracy = float((test["predictions"] == test["targets"]).mean())
    assert accuracy == pytest.approx(trainer.results["test"]["accuracy"])
    lines = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    val4 = next(r["value"] for r in lines if r["name"] == "val/accuracy" and r["step"] == 4)
    val = read(folder / "val-step00000004.npz")
    assert float((val["predictions"] == val["targets"]).mean()) == pytest.approx(val4)


def test_regression_saves_values_and_only_the_chosen_splits(kit_config: Any) -> None:
    config = kit_config(model={"target": "tiny_regression:build_linear"},
                        data={"target": "tiny_regression:build_pairs", "batch_size": 8},
                        task={"name": "regression"}, training={"iterations": 1},
                        plugins=[{"predictions": {"splits": ["test"]}}])
    trainer = kit.Trainer(config, autoload=False)
    trainer.run()
    assert trainer.run_dir is not None
    (path,) = (trainer.run_dir / "predictions").iterdir()
    assert path.name.startswith("test-")
    saved = read(path)
    assert saved["outputs"].shape == (32,) and (saved["predictions"] == saved["outputs"]).all()


@pytest.mark.parametrize(("options", "expected"), [
    ({"splits": ["train"]}, "plugins[0].options.splits.0"),
    ({"folder": "../out"}, "plugins[0].options.folder"),
    ({"every": 2}, "plugins[0].options.every"),
])
def test_bad_options_are_one_line(write_config: Any, tmp_path: Path, options: dict[str, Any],
                                  expected: str) -> None:
    result = kit_process("run", str(write_config(plugins=[{"predictions": options}])), cwd=tmp_path)
    one_error_line(result, expected)
