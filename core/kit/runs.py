"""Finding runs and reading their state from files alone (no torch import).

A run directory is ``<runs_dir>/<experiment>/<run-id>/`` holding ``config.yaml``; its
status comes from its lock (``running`` while a live process holds it, ``crashed``
when the holder died) or from the ``summary.json`` written when it ended.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kit.checkpoint import MANIFEST, committed_checkpoints
from kit.errors import ConfigError
from kit.rundir import read_json
from kit.runlock import lock_holder, pid_alive

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


def _newest_manifest(run_dir: Path) -> dict[str, Any] | None:
    for folder in reversed(committed_checkpoints(run_dir / "checkpoints")):
        try:
            data = read_json(folder / MANIFEST)
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            return data
    return None


def run_info(run_dir: Path) -> RunInfo:
    summary: dict[str, Any] = {}
    try:
        loaded = read_json(run_dir / "summary.json")
        summary = loaded if isinstance(loaded, dict) else {}
    except (OSError, ValueError):
        pass
    holder = lock_holder(run_dir)
    if holder is not None:
        pid = holder.get("pid")
        status = "running" if not isinstance(pid, int) or pid_alive(pid) else "crashed"
    else:
        status = str(summary.get("status") or "crashed")  # no lock, no summary: killed hard
    manifest = _newest_manifest(run_dir) or {}
    progress = manifest.get("progress") or {}
    iteration = summary.get("iteration") if status != "running" else None
    if iteration is None:
        iteration = progress.get("iteration")
    iterations = summary.get("iterations")
    if iterations is None:
        try:
            saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
            iterations = saved.get("training", {}).get("iterations")
        except (OSError, yaml.YAMLError, AttributeError):
            iterations = None
    best = progress.get("best") if status == "running" or "best" not in summary else summary["best"]
    return RunInfo(run_dir, status, iteration, iterations, best)
