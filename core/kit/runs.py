"""Finding runs and reading their state from files alone (no torch import).

A run directory is ``<runs_dir>/<experiment>/<run-id>/`` holding ``config.yaml``; its
status comes from its lock (``running`` while a live process holds it, ``crashed``
when the holder died) or from the ``summary.json`` written when it ended. Every file
is read as untrusted: a field of the wrong type is shown as unknown.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kit.checkpoint import committed_checkpoints
from kit.errors import CheckpointError, ConfigError
from kit.manifest import read_manifest
from kit.rundir import read_json
from kit.runlock import lock_held

__all__ = ["RunInfo", "find_run", "latest_run", "list_runs", "run_info"]

_ID = re.compile(r"^(.*?)(?:-(\d+))?$")


def _order(path: Path) -> tuple[str, int]:
    match = _ID.match(path.name)
    assert match is not None
    return match.group(1), int(match.group(2) or 0)


def list_runs(runs_dir: Path, experiment: str | None = None) -> list[Path]:
    """Run directories, oldest first (ids are start times, ``-N`` for a same-second clash)."""
    experiments = [runs_dir / experiment] if experiment else sorted(
        p for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else []
    found = []
    for folder in experiments:
        if folder.is_dir():
            found += sorted((p for p in folder.iterdir() if (p / "config.yaml").is_file()), key=_order)
    return found


def latest_run(runs_dir: Path, experiment: str) -> Path | None:
    runs = list_runs(runs_dir, experiment)
    return runs[-1] if runs else None


def find_run(runs_dir: Path, experiment: str, requested: Path | None, *, mode: str) -> Path:
    """``requested`` (``--run-dir``) or the experiment's latest run; a clear error if none."""
    if requested is not None:
        if not (requested / "config.yaml").is_file():
            raise ConfigError(f"{requested} is not a kit run directory (it has no config.yaml)",
                              key="--run-dir", hint="pass a folder under <runs_dir>/<experiment>/")
        return requested
    run = latest_run(runs_dir, experiment)
    if run is None:
        raise ConfigError(
            f"no run of experiment {experiment!r} under {runs_dir} to {mode}",
            key="--mode", hint="start one with --mode new, or pass --run-dir",
        )
    return run


@dataclass(frozen=True)
class RunInfo:
    path: Path
    status: str
    """``running``, ``finished``, ``interrupted``, ``failed`` or ``crashed``."""
    iteration: int | None
    iterations: int | None
    best: dict[str, Any] | None


def _whole(value: Any) -> int | None:
    """``value`` if it is a whole number >= 0, else ``None`` (unknown): files are not trusted."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _best(value: Any) -> dict[str, Any] | None:
    """A best-metric record ``{"name", "value", "step", …}`` if it has that shape, else ``None``."""
    if not isinstance(value, dict):
        return None
    number = value.get("value")
    if not (isinstance(value.get("name"), str) and _whole(value.get("step")) is not None
            and isinstance(number, int | float) and not isinstance(number, bool)):
        return None
    return value


def _read_dict(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; ``{}`` when it is missing, unreadable or not an object."""
    try:
        data = read_json(path)
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _newest_progress(run_dir: Path) -> dict[str, Any]:
    """The ``progress`` of the newest checkpoint whose manifest is well-formed (``{}`` if none)."""
    for folder in reversed(committed_checkpoints(run_dir / "checkpoints")):
        try:
            return read_manifest(folder)["progress"]
        except CheckpointError:
            continue
    return {}


def _configured_iterations(run_dir: Path) -> int | None:
    try:
        saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError, RecursionError):  # ValueError: not UTF-8
        return None
    training = saved.get("training") if isinstance(saved, dict) else None
    return _whole(training.get("iterations")) if isinstance(training, dict) else None


def _status(run_dir: Path, summary: dict[str, Any]) -> str:
    """``running`` while a process holds the run's lock, ``crashed`` when its holder died
    without releasing it (or nothing says how it ended), else what ``summary.json`` says."""
    try:
        held = lock_held(run_dir)
    except OSError:  # a run.lock nobody can take (a folder, say): it says nothing
        held = None
    if held is not None:
        return "running" if held else "crashed"
    status = summary.get("status")
    return status if isinstance(status, str) and status.isidentifier() else "crashed"


def run_info(run_dir: Path) -> RunInfo:
    """A run's status, progress and best metric from its files alone; a field of the wrong
    type in any of them counts as unknown, never as an error."""
    summary = _read_dict(run_dir / "summary.json")
    status = _status(run_dir, summary)
    progress = _newest_progress(run_dir)
    iteration = _whole(summary.get("iteration")) if status != "running" else None
    if iteration is None:
        iteration = _whole(progress.get("iteration"))
    iterations = _whole(summary.get("iterations"))
    if iterations is None:
        iterations = _configured_iterations(run_dir)
    best = progress.get("best") if status == "running" or "best" not in summary else summary["best"]
    return RunInfo(run_dir, status, iteration, iterations, _best(best))
