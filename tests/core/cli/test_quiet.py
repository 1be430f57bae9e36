"""One voice: kit's notices go through one reporter (the ``kit`` logger), which ``--quiet``
and an embedding program can silence; warnings and errors still reach the user."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from clitools import kit_process

from kit.report import say, warn


def test_quiet_runs_say_nothing_but_warnings(write_config: Any, tmp_path: Path) -> None:
    path = write_config(loggers=["console", "jsonl"])
    loud = kit_process("run", str(path), cwd=tmp_path)
    assert loud.returncode == 0, loud.stderr
    assert "run finished in" in loud.stdout  # the console logger speaks
    quiet = kit_process("-q", "-p", "no:nothing", "run", str(path), cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout == ""
    (line,) = quiet.stderr.splitlines()  # a warning is still said
    assert line.startswith("kit: warning: -p no:nothing blocks nothing"), line
    runs = sorted((tmp_path / "runs" / "tiny").iterdir())
    assert len(runs) == 2 and all((r / "metrics.jsonl").is_file() for r in runs)  # it did train


def test_quiet_evaluate_still_prints_its_results(write_config: Any, tmp_path: Path) -> None:
    path = write_config()
    assert kit_process("-q", "run", str(path), cwd=tmp_path).returncode == 0
    (run_dir,) = (tmp_path / "runs" / "tiny").iterdir()
    result = kit_process("-q", "run", str(path), "--mode", "evaluate", "--run-dir", str(run_dir),
                         cwd=tmp_path)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.splitlines()[0].startswith("step-") and "accuracy" in result.stdout


def test_an_embedding_program_silences_or_redirects_the_notices(capsys: pytest.CaptureFixture[str]) -> None:
    say("a notice")
    warn("a warning")
    assert capsys.readouterr().err == "kit: a notice\nkit: warning: a warning\n"
    log = logging.getLogger("kit")
    level = log.level
    try:
        log.setLevel(logging.WARNING)
        say("hidden")
        warn("shown")
        assert capsys.readouterr().err == "kit: warning: shown\n"
    finally:
        log.setLevel(level)
