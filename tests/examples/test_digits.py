"""The quickstart example, trained for real: the README promises >= 95% test accuracy."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from kit.cli import main

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "digits" / "config.yaml"


def test_digits_reaches_95_percent(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    started = time.monotonic()
    result = CliRunner().invoke(main, ["run", str(EXAMPLE), "--set", f"runs_dir={tmp_path}"],
                                catch_exceptions=False)
    elapsed = time.monotonic() - started
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "digits").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert summary["results"]["test"]["accuracy"] >= 0.95
    assert elapsed < 60
