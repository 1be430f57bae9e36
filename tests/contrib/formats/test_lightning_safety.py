"""A Lightning checkpoint is data: loading one never imports a module the file names.

Forged ``model.ckpt`` files (plain data written with ``torch.save``) try every
hyperparameter an attacker could set; they are loaded in a separate process so that no
import or ``sys.path`` change made there can be hidden by this one. A real kit run in the
``lightning`` format then loads with a model or target the caller chooses.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import kit

pytest.importorskip("lightning")

from kit_contrib.integrations.lightning import KitLightningModule

TESTS = Path(__file__).resolve().parents[2]
REFUSED = r"CheckpointError: .*model\.ckpt names .*; kit does not import modules named by a checkpoint"
NOT_ALLOWED = r"model\.ckpt names model target '[^']+' \(not in allowed_targets\); kit does not import"

EVIL = '''
from pathlib import Path
Path(__file__).with_suffix(".imported").touch()
import torch
build = Module = lambda *args, **kwargs: torch.nn.Linear(8, 3)
def instantiate(cls, kwargs): return build()
'''

# Each case: (hyper_parameters, other top-level keys, caller's kwargs, expected error).
# "{m}" is the case's own evil module, "{dir}" the attacker's folder holding it.
CASES: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any], str]] = {
    "target_and_base_dir": ({"target": "{m}:build", "kwargs": {}, "base_dir": "{dir}"}, {}, {}, REFUSED),
    "kit_model": ({"kit_model": {"target": "{m}:build", "kwargs": {}}, "base_dir": "{dir}"}, {}, {}, REFUSED),
    "model_as_target": ({"model": "{m}:build", "base_dir": "{dir}", "kit_model": {"target": "{m}:build"}},
                        {}, {}, REFUSED),
    "file_allow_list": ({"kit_model": {"target": "{m}:build"}, "allowed_targets": ["{m}:build"],
                         "target": "{m}:build", "base_dir": "{dir}"}, {}, {}, REFUSED),
    "lightning_instantiator": ({"_instantiator": "lightning.pytorch.cli.instantiate_module",
                                "_class_path": "kit_contrib.integrations.lightning.KitLightningModule",
                                "kit_model": {"target": "{m}:build"}, "target": "{m}:build",
                                "base_dir": "{dir}"}, {}, {}, REFUSED),
    "evil_instantiator": ({"_instantiator": "{m}.instantiate", "_class_path": "{m}.Module",
                           "base_dir": "{dir}"}, {}, {}, REFUSED),
    "hparams_name": ({"target": "{m}:build", "base_dir": "{dir}"}, {"hparams_name": "kit_model"}, {},
                     REFUSED),
    "legacy_hparam_keys": ({}, {"hparams": {"target": "{m}:build", "base_dir": "{dir}"},
                                "module_arguments": {"model": "{m}:build",
                                                     "_instantiator": "{m}.instantiate"},
                                "hparams_type": "{m}.Module"}, {}, REFUSED),
    "caller_allows_another": ({"kit_model": {"target": "{m}:build"}, "base_dir": "{dir}"}, {},
                              {"allowed_targets": ["tiny_task:build_model"], "base_dir": str(TESTS)},
                              NOT_ALLOWED),
    "caller_allows_near_misses": ({"kit_model": {"target": "{m}:build"}}, {},
                                  {"allowed_targets": ["{m}", "{m}:build ", "{m}:Build", "{m}:build.x"]},
                                  NOT_ALLOWED),
}
# The same data handed straight to __init__, as any instantiator would.
CONSTRUCT: dict[str, tuple[dict[str, Any], str]] = {
    "init_kit_model": ({"kit_model": {"target": "{m}:build", "kwargs": {}}},
                       r"CheckpointError: KitLightningModule\(kit_model=...\) names model target"),
    "init_model_string": ({"model": "{m}:build", "kit_model": {"target": "{m}:build"}},
                          r"ConfigError: model: model must be a torch.nn.Module, not str"),
}

PROBE = '''
import json, sys
sys.modules["lightning"] = sys.modules["pytorch_lightning"] = None  # the writer must not need them
from kit_contrib.formats.lightning import LightningFormat
del sys.modules["lightning"], sys.modules["pytorch_lightning"]
import kit
from kit_contrib.integrations.lightning import KitLightningModule

results = {"writer_imported_without_lightning": True}
for case in json.loads(sys.argv[1]):
    before = list(sys.path)
    try:
        if case["path"] is None:
            KitLightningModule(**case["kwargs"])
        else:
            KitLightningModule.load_from_checkpoint(case["path"], **case["kwargs"])
        outcome = "loaded"
    except Exception as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    results[case["name"]] = {"outcome": outcome, "imported": case["module"] in sys.modules,
                             "sys_path_unchanged": sys.path == before}
print(json.dumps(results))
'''


def _fill(value: Any, module: str, folder: Path) -> Any:
    """``value`` with ``{m}`` and ``{dir}`` replaced, recursively."""
    if isinstance(value, str):
        return value.replace("{m}", module).replace("{dir}", str(folder))
    if isinstance(value, dict):
        return {k: _fill(v, module, folder) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, module, folder) for v in value]
    return value


def _forge(path: Path, hparams: dict[str, Any], extra: dict[str, Any]) -> None:
    """A Lightning-shaped checkpoint of plain data whose weights would fit the evil model."""
    path.parent.mkdir(parents=True)
    state = {"model.weight": torch.zeros(3, 8), "model.bias": torch.zeros(3)}
    torch.save({"epoch": 0, "global_step": 0, "pytorch-lightning_version": "2.6.0",
                "state_dict": state, "hyper_parameters": hparams, **extra}, path)


@pytest.fixture(scope="module")
def forged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """Every case loaded once, in one fresh interpreter: (attacker's folder, results by case)."""
    root = tmp_path_factory.mktemp("forged")
    attacker = root / "attacker"
    attacker.mkdir()
    cases = []
    for name, (hparams, extra, kwargs, _) in CASES.items():
        module = f"evil_{name}"
        (attacker / f"{module}.py").write_text(EVIL)
        path = root / name / "model.ckpt"
        _forge(path, _fill(hparams, module, attacker), _fill(extra, module, attacker))
        cases.append({"name": name, "module": module, "path": str(path),
                      "kwargs": _fill(kwargs, module, attacker)})
    for name, (kwargs, _) in CONSTRUCT.items():
        module = f"evil_{name}"
        (attacker / f"{module}.py").write_text(EVIL)
        cases.append({"name": name, "module": module, "path": None,
                      "kwargs": _fill(kwargs, module, attacker)})
    probe = root / "probe.py"
    probe.write_text(PROBE)
    done = subprocess.run([sys.executable, "-I", str(probe), json.dumps(cases)], cwd=root,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return attacker, json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", [*CASES, *CONSTRUCT])
def test_a_forged_checkpoint_imports_nothing(name: str, forged: tuple[Path, dict[str, Any]]) -> None:
    attacker, results = forged
    result = results[name]
    expected = CASES[name][3] if name in CASES else CONSTRUCT[name][1]
    assert not (attacker / f"evil_{name}.imported").exists(), result["outcome"]
    assert not result["imported"], result["outcome"]
    assert result["sys_path_unchanged"], result["outcome"]
    assert re.search(expected, result["outcome"]), result["outcome"]
    if name in CASES:
        assert "pass model=<torch.nn.Module>, target=" in result["outcome"]
        assert "allowed_targets=[" in result["outcome"]


def test_the_refusal_names_the_recorded_target(forged: tuple[Path, dict[str, Any]]) -> None:
    outcome = forged[1]["kit_model"]["outcome"]
    assert "names model target 'evil_kit_model:build'; kit does not import" in outcome
    assert "\n" not in outcome


def test_the_format_writer_imports_without_lightning(forged: tuple[Path, dict[str, Any]]) -> None:
    assert forged[1]["writer_imported_without_lightning"] is True


@pytest.fixture
def run_checkpoint(kit_config: Any) -> tuple[Path, dict[str, torch.Tensor]]:
    """A real kit run in the ``lightning`` format: its last ``model.ckpt`` and final weights."""
    trainer = kit.Trainer(kit_config(checkpoint={"format": "lightning"},
                                     model={"target": "tiny_task:build_model", "kwargs": {"hidden": 5}}),
                          autoload=False)
    trainer.run()
    assert trainer.model is not None and trainer.run_dir is not None
    path = max((trainer.run_dir / "checkpoints").glob("*/model.ckpt"))
    return path, {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def _same_weights(module: KitLightningModule, weights: dict[str, torch.Tensor]) -> None:
    state = module.model.state_dict()
    assert state.keys() == weights.keys()
    for key, value in weights.items():
        assert torch.equal(state[key], value), key


def test_a_caller_model_loads_the_saved_weights(run_checkpoint: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, weights = run_checkpoint
    import tiny_task

    module = KitLightningModule.load_from_checkpoint(path, model=tiny_task.build_model(hidden=5))
    _same_weights(module, weights)
    assert module.hparams["kit_model"] == {"target": "tiny_task:build_model", "kwargs": {"hidden": 5}}


def test_a_caller_target_is_built_with_the_recorded_kwargs(
    run_checkpoint: tuple[Path, dict[str, torch.Tensor]],
) -> None:
    path, weights = run_checkpoint
    module = KitLightningModule.load_from_checkpoint(path, target="tiny_task:build_model", base_dir=TESTS)
    _same_weights(module, weights)  # hidden=5 came from the file: the shapes fit
    assert module(torch.zeros(2, 8)).shape == (2, 3)


def test_an_allowed_recorded_target_loads(run_checkpoint: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, weights = run_checkpoint
    module = KitLightningModule.load_from_checkpoint(
        path, allowed_targets=["other:build", "tiny_task:build_model"], base_dir=TESTS)
    _same_weights(module, weights)


def test_no_choice_refuses_a_real_checkpoint_with_one_line(
    run_checkpoint: tuple[Path, dict[str, torch.Tensor]],
) -> None:
    path, _ = run_checkpoint
    with pytest.raises(kit.CheckpointError) as info:
        KitLightningModule.load_from_checkpoint(path)
    assert info.value.message == (f"{path} names model target 'tiny_task:build_model'; "
                                  "kit does not import modules named by a checkpoint")
    assert info.value.hint is not None and "allowed_targets=" in info.value.hint


def test_a_wrong_caller_model_fails_on_the_weights(
    run_checkpoint: tuple[Path, dict[str, torch.Tensor]],
) -> None:
    path, _ = run_checkpoint
    with pytest.raises(RuntimeError, match="size mismatch"):
        KitLightningModule.load_from_checkpoint(path, model=torch.nn.Sequential(
            torch.nn.Linear(8, 7), torch.nn.ReLU(), torch.nn.Dropout(0.0), torch.nn.Linear(7, 3)))


def test_from_target_builds_and_records_the_callers_target() -> None:
    module = KitLightningModule.from_target("tiny_task:build_model", {"hidden": 4}, base_dir=TESTS)
    assert module.model[0].out_features == 4
    assert module.hparams["kit_model"] == {"target": "tiny_task:build_model", "kwargs": {"hidden": 4}}
