"""Every checkpoint format round-trips kit's real checkpoint, tricky shapes included."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

import kit
from kit.checkpoint import CheckpointStore, TorchFormat

pytest.importorskip("safetensors")

from kit_contrib.formats.lightning import LightningFormat
from kit_contrib.formats.safetensors import SafetensorsFormat

FORMATS = [TorchFormat, SafetensorsFormat, LightningFormat]


def same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return bool(a == b) and type(a) is type(b)


@pytest.fixture
def checkpoint(kit_config: Any) -> dict[str, Any]:
    """A real trainer's checkpoint: Adam state (int keys, tuples), RNG states, scheduler."""
    trainer = kit.Trainer(kit_config(optimizer={"name": "adam"},
                                     scheduler={"name": "StepLR", "kwargs": {"step_size": 1}}),
                          autoload=False)
    trainer.build()
    assert trainer.model is not None and trainer.optimizer is not None
    trainer.model(torch.randn(4, 8)).sum().backward()
    trainer.optimizer.step()
    state = trainer.state_dict()
    state["plugins"]["odd"] = {"nan": math.nan, "none": None, "tuple": (1, "a"), 3: "int key",
                               "__tensor__": "a key that looks like a tag", "empty": {}}
    return state


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_round_trip_is_exact(fmt: type[kit.CheckpointFormat], checkpoint: dict[str, Any],
                             tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, fmt())
    loaded = store.load(store.save(checkpoint, step=1))
    assert same(checkpoint, loaded)


def test_safetensors_holds_no_pickle_and_unshares_tied_tensors(tmp_path: Path) -> None:
    weight = torch.randn(3, 3)
    state = {"model": {"a": weight, "b": weight, "view": weight[:, 0]}}  # tied and strided
    store = CheckpointStore(tmp_path, SafetensorsFormat())
    folder = store.save(state, step=1)
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "state.json", "tensors.safetensors"]
    assert json.loads((folder / "state.json").read_text())["model"]["a"] == {"__tensor__": "t0"}
    loaded = store.load(folder)["model"]
    assert all(torch.equal(loaded[k], state["model"][k]) for k in state["model"])


def test_safetensors_refuses_objects_that_are_not_plain_data(tmp_path: Path) -> None:
    with pytest.raises(kit.CheckpointError, match=r"cannot store a object at checkpoint\.plugins\.x"):
        CheckpointStore(tmp_path, SafetensorsFormat()).save({"plugins": {"x": object()}}, step=1)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_lightning_loads_the_lightning_format_itself(checkpoint: dict[str, Any], tmp_path: Path) -> None:
    pytest.importorskip("lightning")
    from kit_contrib.integrations.lightning import KitLightningModule

    folder = CheckpointStore(tmp_path, LightningFormat()).save(checkpoint, step=5)
    module = KitLightningModule.load_from_checkpoint(folder / "model.ckpt", weights_only=True,
                                                     allowed_targets=["tiny_task:build_model"],
                                                     base_dir=Path(__file__).parents[2])
    assert module.hparams["kit_model"] == {"target": "tiny_task:build_model", "kwargs": {}}
    for key, value in checkpoint["model"].items():
        assert torch.equal(module.model.state_dict()[key], value)
    raw = torch.load(folder / "model.ckpt", weights_only=True)
    assert raw["global_step"] == checkpoint["progress"]["global_step"]
    assert raw["optimizer_states"][0]["param_groups"] == checkpoint["optimizer"]["param_groups"]
