"""A full disk anywhere is one clear line, exit code 1, and the last good checkpoint survives.

Two layers: a real, small tmpfs that fills up under a real ``kit run`` (where this machine
lets tests mount one), and injected ENOSPC at each place kit writes, which always runs.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clitools import kit, kit_process, one_error_line

import kit as kitlib

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs mounted under ``tmp_path``; skipped where mounting is not allowed."""
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    if not shutil.which("mount") or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root); the injected-ENOSPC tests cover the paths")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` until ``leave`` bytes are free; returns the filler file."""
    filler = disk / "filler"
    free = shutil.disk_usage(disk).free
    with filler.open("wb") as fh:
        fh.write(b"\0" * max(0, free - leave))
    return filler


@pytest.mark.slow
def test_a_real_full_disk_mid_run_is_one_line_and_the_run_continues(
    small_disk: Path, write_config: Any, tmp_path: Path
) -> None:
    # ~300 KiB per checkpoint (a 16k-unit layer with Adam's two moments): room for the first few only
    path = write_config(runs_dir=str(small_disk / "runs"), loggers=["jsonl"],
                        model={"target": "tiny_task:build_model", "kwargs": {"hidden": 2048}},
                        optimizer={"name": "adam"}, training={"iterations": 30},
                        checkpoint={"keep_last": 30})
    filler = fill(small_disk, leave=1_200_000)
    result = kit_process("run", str(path), cwd=tmp_path)
    line = one_error_line(result, "no space left on device while writing ", code=1, notices=True)
    assert "; the last good checkpoint is " in line and "free some space" in line
    (run_dir,) = (small_disk / "runs" / "tiny").iterdir()
    last = Path(line.split("; the last good checkpoint is ")[1].split(" (")[0])
    assert last.parent == run_dir / "checkpoints"
    summary = run_dir / "summary.json"
    if summary.exists():  # written when the failed checkpoint's space came back
        assert json.loads(summary.read_text())["status"] == "failed"

    filler.unlink()
    resumed = kit("run", str(path), "--mode", "continue", "--set", "checkpoint.keep_last=2")
    assert resumed.exit_code == 0, resumed.stderr
    assert f"from {last.name}" in resumed.stderr
    assert json.loads(summary.read_text())["status"] == "finished"


@pytest.mark.slow
def test_a_full_disk_before_the_run_starts_is_one_line(small_disk: Path, write_config: Any,
                                                       tmp_path: Path) -> None:
    path = write_config(runs_dir=str(small_disk / "runs"))
    fill(small_disk, leave=0)
    one_error_line(kit("run", str(path)), "no space left on device while writing ", code=1)


# -- injected: every place kit writes ----------------------------------------------------


def _fail_on(monkeypatch: pytest.MonkeyPatch, target: Any, name: str, when: Any = None) -> None:
    original = getattr(target, name)

    def failing(*args: Any, **kwargs: Any) -> Any:
        if when is None or when(*args, **kwargs):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(args[0]) if args else None)
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, failing)


def test_injected_enospc_in_a_checkpoint(monkeypatch: pytest.MonkeyPatch, write_config: Any,
                                         tmp_path: Path) -> None:
    from kit.checkpoint import TorchFormat

    saves = iter(range(100))
    original = TorchFormat.save

    def save(self: Any, checkpoint: dict[str, Any], folder: Path) -> None:
        if next(saves) == 1:
            raise RuntimeError("PytorchStreamWriter failed writing file") from ENOSPC
        original(self, checkpoint, folder)

    monkeypatch.setattr(TorchFormat, "save", save)
    line = one_error_line(kit("run", str(write_config(training={"iterations": 3}))),
                          "no space left on device while writing ", code=1, notices=True)
    (run_dir,) = (tmp_path / "runs" / "tiny").iterdir()
    assert f"the last good checkpoint is {run_dir / 'checkpoints' / 'step-00000004'}" in line
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"
    assert not any(p.name.startswith(".staging") for p in (run_dir / "checkpoints").iterdir())


def test_injected_enospc_in_the_summary(monkeypatch: pytest.MonkeyPatch, write_config: Any) -> None:
    from kit import trainer

    _fail_on(monkeypatch, trainer, "write_json", lambda path, data: path.name == "summary.json")
    line = one_error_line(kit("run", str(write_config())), "while writing summary.json", code=1,
                          notices=True)
    assert "the last good checkpoint is " in line


def test_injected_enospc_in_the_metrics(monkeypatch: pytest.MonkeyPatch, write_config: Any,
                                        tmp_path: Path) -> None:
    import kit_contrib.loggers.jsonl as jsonl

    def full(self: Any, record: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # what the file's flush raises

    monkeypatch.setattr(jsonl.JsonlLogger, "kit_metric_recorded", kitlib.hookimpl(full))
    line = one_error_line(kit("run", str(write_config(loggers=["jsonl"]))),
                          "no space left on device while writing ", code=1, notices=True)
    assert "kit-trainer[jsonl]'s output" in line and "no checkpoint was written yet" in line
    (run_dir,) = (tmp_path / "runs" / "tiny").iterdir()
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"


def test_injected_enospc_in_the_lock(monkeypatch: pytest.MonkeyPatch, write_config: Any,
                                     tmp_path: Path) -> None:
    path = write_config()
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: (_ for _ in ()).throw(ENOSPC)
                        if b'"pid"' in bytes(data) else real_write(fd, data))
    one_error_line(kit("run", str(path)), "no space left on device while writing ", code=1)
    monkeypatch.undo()
    (run_dir,) = (tmp_path / "runs" / "tiny").iterdir()
    assert not (run_dir / "run.lock").exists() or not (run_dir / "run.lock").read_bytes()
    assert kit("run", str(path), "--mode", "continue").exit_code == 0  # nothing blocks the next run


def test_injected_enospc_creating_the_run_directory(monkeypatch: pytest.MonkeyPatch,
                                                    write_config: Any) -> None:
    path = write_config()
    _fail_on(monkeypatch, Path, "mkdir")
    one_error_line(kit("run", str(path)), "no space left on device while writing ", code=1)
