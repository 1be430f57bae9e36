"""Running kit as users launch it, for the multi-process tests: torchrun, configs written to
files, and what the ``ddp_probe`` plugin saw on each rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

TESTS = Path(__file__).resolve().parent
EXAMPLES = TESTS.parent / "examples"


def torchrun(*args: str, cwd: Path, nproc: int = 2, launcher: tuple[str, ...] = ("--standalone",),
             timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """``torchrun --nproc-per-node N -m kit ARGS``, as a user types it."""
    env = {**os.environ, "PYTHONPATH": str(TESTS), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "torch.distributed.run", *launcher, f"--nproc-per-node={nproc}",
           "-m", "kit", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def config(tmp_path: Path, name: str, **overrides: Any) -> dict[str, Any]:
    from conftest import base_config

    cfg = base_config(tmp_path, **overrides)
    cfg["experiment"] = name
    return cfg


def write(tmp_path: Path, cfg: dict[str, Any], name: str = "config.yaml") -> Path:
    import yaml

    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def probe(out: Path, **options: Any) -> dict[str, Any]:
    return {"ddp_probe:Probe": {"out": str(out), **options}}


def events(out: Path, rank: int) -> list[list[Any]]:
    return [e for e in json.loads((out / f"rank{rank}.json").read_text())]


def loop_events(seq: list[list[Any]]) -> list[list[Any]]:
    return [e for e in seq if e[0] not in ("metric", "train_begin")]


def run_dirs(tmp_path: Path, experiment: str) -> list[Path]:
    return sorted(p for p in (tmp_path / "runs" / experiment).iterdir() if p.is_dir())


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    newest = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    return torch.load(newest / "checkpoint.pt", weights_only=True)["model"]  # type: ignore[no-any-return]


def kit_run(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """``python -m kit ARGS`` in a fresh process, as a user types ``kit ARGS``."""
    env = {**os.environ, "PYTHONPATH": str(TESTS), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "kit", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
