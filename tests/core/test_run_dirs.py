"""What kit treats as a run, and what it refuses to write through: links, project folders,
evaluations of outside checkpoints, runs whose every checkpoint is corrupt."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from clitools import kit, one_error_line


@pytest.fixture
def trained(write_config: Any, tmp_path: Path) -> tuple[str, Path]:
    path = str(write_config(loggers=["jsonl"]))
    assert kit("run", path).exit_code == 0
    (run_dir,) = (tmp_path / "runs" / "tiny").iterdir()
    return path, run_dir


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("plant", ["checkpoints-link", "changes-link", "checkpoints-file", "summary-link"])
def test_a_link_planted_in_a_run_is_refused(trained: tuple[str, Path], tmp_path: Path, plant: str) -> None:
    path, run_dir = trained
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    if plant == "checkpoints-link":
        shutil.move(str(run_dir / "checkpoints"), str(outside / "moved"))
        (run_dir / "checkpoints").symlink_to(outside)
        expected = f"{run_dir / 'checkpoints'} is a link; kit writes only to the run's own files"
    elif plant == "changes-link":
        (run_dir / "config_changes.jsonl").symlink_to(outside / "precious")
        expected = f"{run_dir / 'config_changes.jsonl'} is a link"
    elif plant == "summary-link":
        (run_dir / "summary.json").unlink()
        (run_dir / "summary.json").symlink_to(outside / "precious")
        expected = f"{run_dir / 'summary.json'} is a link"
    else:
        shutil.rmtree(run_dir / "checkpoints")
        (run_dir / "checkpoints").write_text("not a folder")
        expected = f"{run_dir / 'checkpoints'} is not a folder"
    before = snapshot(outside)
    one_error_line(kit("run", path, "--mode", "continue", "--set", "training.iterations=3"),
                   f"--run-dir: {expected}")
    assert snapshot(outside) == before


def test_a_link_inside_the_run_is_fine(trained: tuple[str, Path]) -> None:
    path, run_dir = trained
    (run_dir / "notes").mkdir()
    (run_dir / "latest-notes").symlink_to(run_dir / "notes")
    assert kit("run", path, "--mode", "continue", "--set", "training.iterations=3").exit_code == 0


def test_a_project_folder_is_not_a_run(write_config: Any, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    config = write_config(name="project/config.yaml")
    text = config.read_text()
    for mode in ("continue", "auto", "evaluate"):
        one_error_line(kit("run", str(config), "--mode", mode, "--run-dir", str(project)),
                       f"--run-dir: {project} does not look like a kit run")
    assert sorted(p.name for p in project.iterdir()) == ["config.yaml"] and config.read_text() == text


def test_evaluating_an_outside_checkpoint_is_not_a_run_to_continue(
    trained: tuple[str, Path], tmp_path: Path
) -> None:
    path, run_dir = trained
    elsewhere = tmp_path / "shared" / "step-00000008"
    shutil.copytree(run_dir / "checkpoints" / "step-00000008", elsewhere)
    result = kit("run", path, "--mode", "evaluate", "--checkpoint", str(elsewhere))
    assert result.exit_code == 0, result.stderr
    (evaluation,) = (tmp_path / "runs" / "tiny" / "evaluations").iterdir()
    assert (evaluation / "evaluate-step-00000008.json").is_file()

    broken = tmp_path / "shared" / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{}")
    one_error_line(kit("run", path, "--mode", "evaluate", "--checkpoint", str(broken)),
                   "has a malformed manifest")
    assert len(list((tmp_path / "runs" / "tiny" / "evaluations").iterdir())) == 1  # nothing left

    more = kit("run", path, "--mode", "continue", "--set", "training.iterations=3")
    assert more.exit_code == 0 and f"continuing {run_dir} from" in more.stderr
    runs = [p.name for p in (tmp_path / "runs" / "tiny").iterdir() if p.name != "evaluations"]
    assert runs == [run_dir.name]


def test_a_run_whose_every_checkpoint_is_corrupt_is_left_alone(trained: tuple[str, Path]) -> None:
    path, run_dir = trained
    for data in (run_dir / "checkpoints").glob("*/checkpoint.pt"):
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 2] ^= 1  # same size: only the hash tells
        data.write_bytes(raw)
    before = snapshot(run_dir)
    result = kit("run", path, "--mode", "continue", "--set", "training.iterations=3")
    one_error_line(result, f"run {run_dir} has checkpoints, but none can be resumed from", notices=True)
    assert result.stderr.count("kit: warning: skipping") == 2  # each named
    assert snapshot(run_dir) == before  # history kept: nothing truncated, pruned or restarted


def test_a_checkpoint_that_does_not_fit_falls_back_to_one_that_does(trained: tuple[str, Path]) -> None:
    import torch

    path, run_dir = trained
    newest = run_dir / "checkpoints" / "step-00000008"
    data = torch.load(newest / "checkpoint.pt", weights_only=True)
    data["model"] = {k: v[..., :1] for k, v in data["model"].items()}  # wrong shapes, still plain data
    torch.save(data, newest / "checkpoint.pt")
    manifest = json.loads((newest / "manifest.json").read_text())
    raw = (newest / "checkpoint.pt").read_bytes()
    manifest["files"]["checkpoint.pt"] = {"size": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
    (newest / "manifest.json").write_text(json.dumps(manifest))
    result = kit("run", path, "--mode", "continue", "--set", "training.iterations=3")
    assert result.exit_code == 0, result.stderr
    assert "skipping step-00000008: the checkpoint does not fit this model or run" in result.stderr
    assert f"continuing {run_dir} from step-00000004" in result.stderr

