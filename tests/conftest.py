from __future__ import annotations

import contextlib
import os
import signal
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

# -- tests leave no trace: the working tree after the session is the tree before it ----------

_TOOLING = {".git", ".venv", ".nox", ".mypy_cache", ".ruff_cache", ".pytest_cache", "__pycache__",
            "node_modules", ".gl"}
_TREE = pytest.StashKey[dict[str, tuple[int, int]]]()


def _tree() -> dict[str, tuple[int, int]]:
    """Every file and folder under the repository (tooling caches aside): path -> (size, mtime)."""
    found: dict[str, tuple[int, int]] = {}
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in _TOOLING and not d.endswith(".egg-info")]
        for name in (*dirs, *files):
            path = os.path.join(folder, name)
            with contextlib.suppress(OSError):
                info = os.lstat(path)
                found[os.path.relpath(path, ROOT)] = (info.st_size, info.st_mtime_ns)
    return found


def pytest_sessionstart(session: pytest.Session) -> None:
    if not hasattr(session.config, "workerinput"):  # the controller, under xdist too
        session.config.stash[_TREE] = _tree()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    before = session.config.stash.get(_TREE, None)
    if before is None:
        return
    after = _tree()
    changed = sorted(p for p in after.keys() | before.keys()
                     if before.get(p) != after.get(p) and not os.path.isdir(ROOT / p))
    changed += sorted(p for p in after.keys() - before.keys() if os.path.isdir(ROOT / p))
    if changed:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = "tests left traces in the working tree (write under tmp_path instead):\n  " + \
            "\n  ".join(changed[:20])
        if reporter is not None:
            reporter.write_line(message, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# -- tests leave no signal handler behind: kit keeps a handler the parent set to SIG_IGN, so
# one left ignored by a library (Lightning ignores SIGINT after a KeyboardInterrupt in its
# Trainer) would silently break every later signal test in that worker ----------------------

_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1") if hasattr(signal, name))


def pytest_configure(config: pytest.Config) -> None:
    """Tests send themselves SIGINT: start from Python's own handler, as an interactive shell
    would, even when a non-interactive shell started pytest in the background with SIGINT
    ignored (kit rightly keeps a signal ignored that its parent ignored)."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _signal_handlers_restored(request: pytest.FixtureRequest) -> Any:
    before = {s: signal.getsignal(s) for s in _SIGNALS}
    yield
    for s, handler in before.items():
        if signal.getsignal(s) != handler:
            signal.signal(s, handler)
            warnings.warn(f"{request.node.nodeid} left {signal.Signals(s).name}'s handler changed; restored",
                          stacklevel=1)


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
