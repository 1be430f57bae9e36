from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))


def base_config(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """A fast config on tests/tiny_task.py, runs written under tmp_path."""
    config: dict[str, Any] = {
        "experiment": "tiny",
        "runs_dir": str(tmp_path / "runs"),
        "model": {"target": "tiny_task:build_model"},
        "data": {"target": "tiny_task:build_data", "batch_size": 8},
        "optimizer": {"name": "sgd", "lr": 0.1},
        "training": {"iterations": 2, "device": "cpu", "log_every_n_steps": 2},
        "loggers": [],
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., dict[str, Any]]:
    return lambda **overrides: base_config(tmp_path, **overrides)


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """Write a config file next to tests/tiny_task.py's copy and return its path."""

    def write(data: dict[str, Any] | None = None, name: str = "config.yaml", **overrides: Any) -> Path:
        path = tmp_path / name
        content = data if data is not None else base_config(tmp_path, **overrides)
        path.write_text(yaml.safe_dump(content, sort_keys=False))
        return path

    return write


@pytest.fixture
def kit_config(make_config: Callable[..., dict[str, Any]]) -> Callable[..., Any]:
    """A validated KitConfig built from base_config + overrides."""
    from kit.config import validate_config

    def build(**overrides: Any) -> Any:
        config = validate_config(make_config(**overrides))
        config.base_dir = HERE
        return config

    return build
