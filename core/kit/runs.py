"""Finding runs and reading their state from files alone (no torch import).

A run directory is ``<runs_dir>/<experiment>/<run-id>/`` holding ``config.yaml``; its
status comes from its lock (``running`` while a live process holds it, ``crashed``
when the holder died) or from the ``summary.json`` written when it ended. Every file
is read as untrusted: a field of the wrong type is shown as unknown.
"""

from __future__ import annotations

import math
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, get_args

import yaml

from kit.errors import CheckpointError, ConfigError
from kit.manifest import reason, show_name, sound_manifests
from kit.report import warn
from kit.rundir import read_json, read_regular
from kit.runlock import lock_held
from kit.runstate import ListedStatus

__all__ = ["RunInfo", "find_run", "latest_run", "list_runs", "run_info"]

_ID = re.compile(r"(.*?)(?:-([0-9]{1,9}))?", re.DOTALL)
_STATUSES: Final[tuple[ListedStatus, ...]] = get_args(ListedStatus)


def _order(path: Path) -> tuple[str, int]:
    match = _ID.fullmatch(path.name)
    assert match is not None
    return match.group(1), int(match.group(2) or 0)


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    """The entries of ``folder``; one warning line, and none, when it cannot be read."""
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        warn(f"skipping {show_name(folder)}: cannot read it: {reason(exc)}")
        return []


def _is_run(entry: os.DirEntry[str]) -> bool:
    """A folder holding a ``config.yaml``; one that cannot be looked into is skipped with one warning."""
    try:
        return entry.is_dir() and stat.S_ISREG(os.stat(os.path.join(entry.path, "config.yaml")).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        warn(f"skipping {show_name(entry.path)}: cannot read it: {reason(exc)}")
        return False


def list_runs(runs_dir: Path, experiment: str | None = None) -> list[Path]:
    """Run directories, oldest first (ids are start times, ``-N`` for a same-second clash).

    A folder that cannot be read (permissions) is left out with one warning line naming it.
    """
    experiments = [runs_dir / experiment] if experiment else sorted(
        Path(e.path) for e in _entries(runs_dir) if e.is_dir())
    found = []
    for folder in experiments:
        found += sorted((Path(e.path) for e in _entries(folder) if _is_run(e)), key=_order)
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
            f"no run of experiment {experiment!r} under {show_name(runs_dir)} to {mode}",
            key="--mode", hint="start one with --mode new, or pass --run-dir",
        )
    return run


@dataclass(frozen=True)
class RunInfo:
    path: Path
    status: ListedStatus
    """``running``, ``finished``, ``interrupted``, ``failed`` or ``crashed``."""
    iteration: int | None
    iterations: int | None
    best: dict[str, Any] | None


def _whole(value: Any) -> int | None:
    """``value`` if it is a whole number from 0 to 2**63-1, else ``None`` (unknown): files are not trusted."""
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63 else None


def _best(value: Any) -> dict[str, Any] | None:
    """``{"name", "value", "step"}`` (and ``"mode"``) if ``value`` has that shape and a finite
    number that formats (not a 401-digit integer, not NaN), else ``None``."""
    if not isinstance(value, dict):
        return None
    name, number, step = value.get("name"), value.get("value"), _whole(value.get("step"))
    if not isinstance(name, str) or step is None or not isinstance(number, int | float) \
            or isinstance(number, bool):
        return None
    try:
        number = float(number)
    except OverflowError:
        return None
    if not math.isfinite(number):
        return None
    mode = value.get("mode")
    return {"name": name, "value": number, "step": step, **({"mode": mode} if mode in ("min", "max") else {})}


def _read_dict(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; ``{}`` when it is missing, unreadable, not a regular file of a
    sane size (a FIFO, a 3 GB file: see :func:`kit.rundir.read_regular`) or not an object."""
    try:
        data = read_json(path)
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _newest_checkpoint(run_dir: Path) -> tuple[int | None, dict[str, Any]]:
    """The step and ``progress`` of the newest sound checkpoint (``None, {}`` if none); a
    ``checkpoints/`` that cannot be read is skipped with one warning line."""
    try:
        manifests = sound_manifests(run_dir / "checkpoints")
    except CheckpointError as exc:
        warn(f"{exc.message}; showing what its summary.json says")
        return None, {}
    if not manifests:
        return None, {}
    manifest = manifests[next(reversed(manifests))]
    return manifest["step"], manifest["progress"]


def _configured_iterations(run_dir: Path) -> int | None:
    try:
        saved = yaml.safe_load(read_regular(run_dir / "config.yaml").decode("utf-8"))
    except (OSError, ValueError, yaml.YAMLError, RecursionError):  # ValueError: not UTF-8
        return None
    training = saved.get("training") if isinstance(saved, dict) else None
    return _whole(training.get("iterations")) if isinstance(training, dict) else None


def _status(run_dir: Path, summary: dict[str, Any]) -> ListedStatus:
    """``running`` while a process holds the run's lock, ``crashed`` when its holder died
    without releasing it (or nothing says how it ended: no summary, or a status in it that
    is not one of kit's), else what ``summary.json`` says."""
    try:
        held = lock_held(run_dir)
    except OSError:  # a run.lock nobody can take (a folder, say): it says nothing
        held = None
    if held is not None:
        return "running" if held else "crashed"
    status = summary.get("status")
    return status if isinstance(status, str) and status in _STATUSES else "crashed"


def _outdated(summary: dict[str, Any], step: int | None, progress: dict[str, Any]) -> bool:
    """Whether ``summary.json`` is an earlier attempt's: the run was continued past it since."""
    ended, done = _whole(summary.get("global_step")), _whole(summary.get("iteration"))
    iteration = _whole(progress.get("iteration"))
    return (ended is not None and step is not None and ended < step) or \
        (done is not None and iteration is not None and done < iteration)


def run_info(run_dir: Path) -> RunInfo:
    """A run's status, progress and best metric from its files alone; a field of the wrong
    type in any of them counts as unknown, never as an error.

    ``summary.json`` describes the attempt that wrote it. While a run is running, or when it
    was continued past its summary and then died, the current attempt is described by the
    newest checkpoint and by ``config.yaml`` (which ``continue`` rewrites with the new
    ``training.iterations``). An iteration beyond the iterations shown makes them unknown.
    """
    summary = _read_dict(run_dir / "summary.json")
    status = _status(run_dir, summary)
    step, progress = _newest_checkpoint(run_dir)
    if status != "running" and not _outdated(summary, step, progress):
        iteration = _whole(summary.get("iteration"))
        iteration = _whole(progress.get("iteration")) if iteration is None else iteration
        iterations = _whole(summary.get("iterations"))
        iterations = _configured_iterations(run_dir) if iterations is None else iterations
        best = summary["best"] if "best" in summary else progress.get("best")
    else:
        iteration = _whole(progress.get("iteration"))
        iterations = _configured_iterations(run_dir)
        iterations = _whole(summary.get("iterations")) if iterations is None else iterations
        best = progress.get("best")
    if iteration is not None and iterations is not None and iteration > iterations:
        iterations = None  # the files disagree: say unknown rather than 242/3
    return RunInfo(run_dir, status, iteration, iterations, _best(best))
