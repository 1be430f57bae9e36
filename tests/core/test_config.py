from __future__ import annotations

from pathlib import Path

import pytest

from kit.config import KitConfig, apply_overrides, load_config, validate_config
from kit.errors import ConfigError

MINIMAL = {"model": {"target": "m:f"}, "data": {"target": "d:f"}}


def test_yaml_and_toml_read_the_same(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(
        "experiment: x\nmodel: {target: 'm:f'}\ndata: {target: 'd:f', batch_size: 4}\n")
    (tmp_path / "c.toml").write_text(
        'experiment = "x"\n[model]\ntarget = "m:f"\n[data]\ntarget = "d:f"\nbatch_size = 4\n')
    yaml_cfg, toml_cfg = load_config(tmp_path / "c.yaml"), load_config(tmp_path / "c.toml")
    assert yaml_cfg.resolved() == toml_cfg.resolved()
    assert yaml_cfg.base_dir == tmp_path.resolve()
    assert yaml_cfg.data.batch_size == 4


def test_defaults_are_filled_in() -> None:
    cfg = validate_config(MINIMAL)
    assert cfg.training.type == "epoch" and cfg.training.eval_frequency == 1
    assert [p.name for p in cfg.loggers] == ["console", "jsonl"]
    assert cfg.backend.name == "torch" and cfg.resolved()["backend"] == "torch"
    assert cfg.checkpoint.format == "torch"


def test_unknown_key_suggests_the_right_one() -> None:
    with pytest.raises(ConfigError) as info:
        validate_config({**MINIMAL, "training": {"iteration": 3}}, source="c.yaml")
    assert str(info.value) == "training.iteration: unknown key in c.yaml (did you mean 'iterations'?)"


def test_wrong_type_names_key_value_and_fix() -> None:
    with pytest.raises(ConfigError) as info:
        validate_config({**MINIMAL, "training": {"iterations": "ten"}}, source="c.yaml")
    message = str(info.value)
    assert message.startswith("training.iterations: Input should be a valid integer")
    assert "(got 'ten')" in message and "--set training.iterations=VALUE" in message
    assert "\n" not in message


def test_missing_required_key() -> None:
    with pytest.raises(ConfigError, match=r"^model: required key missing"):
        validate_config({"data": {"target": "d:f"}})


def test_target_must_have_a_colon() -> None:
    with pytest.raises(ConfigError, match=r"model.target: .*not of the form `package.module:callable`"):
        validate_config({**MINIMAL, "model": {"target": "just_a_module"}})


def test_overrides_are_typed_and_nested() -> None:
    data = apply_overrides(dict(MINIMAL), [
        "training.iterations=7", "training.clip_grad_norm=1.5", "training.compile=true",
        "loggers=[jsonl]", "optimizer.kwargs.betas=[0.8, 0.9]", "experiment=exp-2",
    ])
    cfg = validate_config(data)
    assert cfg.training.iterations == 7 and cfg.training.clip_grad_norm == 1.5
    assert cfg.training.compile is True
    assert [p.name for p in cfg.loggers] == ["jsonl"]
    assert cfg.optimizer.kwargs == {"betas": [0.8, 0.9]}
    assert cfg.experiment == "exp-2"


def test_bad_overrides() -> None:
    with pytest.raises(ConfigError, match="is not KEY=VALUE"):
        apply_overrides({}, ["training.iterations"])
    with pytest.raises(ConfigError, match="experiment is not a mapping"):
        apply_overrides({"experiment": "x"}, ["experiment.name=y"])


def test_logger_and_plugin_shorthands() -> None:
    cfg = validate_config({**MINIMAL, "loggers": [
        "jsonl", {"console": {"progress": False}}, {"name": "csv", "options": {"a": 1}}]})
    assert [(p.name, p.options) for p in cfg.loggers] == [
        ("jsonl", {}), ("console", {"progress": False}), ("csv", {"a": 1})]
    with pytest.raises(ConfigError, match="jsonl listed twice"):
        validate_config({**MINIMAL, "loggers": ["jsonl", "jsonl"]})


def test_precision_accepts_lightning_spellings() -> None:
    for given, want in [("bf16-mixed", "bf16"), (16, "16"), ("32-true", "32"), ("bf16", "bf16")]:
        cfg = validate_config({**MINIMAL, "training": {"precision": given}})
        assert cfg.training.precision == want


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(tmp_path / "list.yaml")


def test_schema_covers_every_section() -> None:
    schema = KitConfig.model_json_schema()
    assert {"model", "data", "task", "optimizer", "scheduler", "training", "backend",
            "checkpoint", "loggers", "plugins", "experiment", "runs_dir"} <= set(schema["properties"])
    training = schema["$defs"]["TrainingConfig"]["properties"]
    assert {"type", "iterations", "eval_frequency", "save_frequency", "inference_batch_size",
            "grad_accum", "clip_grad_norm", "precision", "compile", "seed", "deterministic",
            "device"} <= set(training)
