"""Paths derived from options stay inside the run directory, symlinks included."""

from __future__ import annotations

from pathlib import Path

import pytest

import kit
from kit.paths import check_run_relative


@pytest.mark.parametrize("value", ["", "..", ".", "../x", "a/../../x", "/etc/passwd", "C:\\x",
                                   "\\\\host\\share", "a\x00b", "config.yaml", "checkpoints", "checkpoints/x",
                                   "./run.lock", "summary.json"])
def test_refused(value: str) -> None:
    with pytest.raises(ValueError):
        check_run_relative(value)


@pytest.mark.parametrize(("value", "normal"), [("m.jsonl", "m.jsonl"), ("logs/./m.csv", "logs/m.csv"),
                                                ("a/../b", "b"), ("tb", "tb")])
def test_accepted(value: str, normal: str) -> None:
    assert check_run_relative(value) == normal


def test_a_symlink_in_the_run_cannot_lead_a_write_outside(tmp_path: Path) -> None:
    run_dir, outside = tmp_path / "run", tmp_path / "outside"
    run_dir.mkdir()
    outside.mkdir()
    (run_dir / "logs").symlink_to(outside)
    with pytest.raises(kit.ConfigError, match=r"loggers.jsonl.filename: 'logs/m.jsonl' leads outside"):
        kit.run_path(run_dir, "logs/m.jsonl", key="loggers.jsonl.filename")
    (run_dir / "inner").mkdir()
    (run_dir / "link").symlink_to(run_dir / "inner")
    assert kit.run_path(run_dir, "link/m.jsonl", key="k") == run_dir / "link" / "m.jsonl"
    assert kit.run_path(run_dir, "new/deeper/m.csv", key="k").parent.is_dir()
