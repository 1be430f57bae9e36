"""Running ``kit`` as a user does, and what a user-facing error must look like."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from kit.cli import main

TESTS = Path(__file__).resolve().parent


def kit(*args: str, **kwargs: Any) -> Any:
    """``kit ARGS`` in this process; an uncaught exception fails the test right there."""
    return CliRunner().invoke(main, list(args), catch_exceptions=False, **kwargs)


def kit_process(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``kit ARGS`` in a real process: real signals, exit codes and stderr."""
    full = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(TESTS), **(env or {})}
    return subprocess.run([sys.executable, "-m", "kit", *args], capture_output=True, text=True,
                          cwd=cwd, env=full, timeout=timeout)


def one_error_line(result: Any, expected: str, *, code: int = 2, notices: bool = False) -> str:
    """``result`` failed with ``code`` and one ``Error: …expected…`` line on stderr, nothing
    else (``notices``: ``kit: …`` lines printed while the run went may precede it)."""
    returncode = getattr(result, "exit_code", getattr(result, "returncode", None))
    stderr = result.stderr
    assert returncode == code, stderr
    errors = [line for line in stderr.splitlines() if not (notices and line.startswith("kit: "))]
    assert len(errors) == 1 and errors[0].startswith("Error: "), stderr
    assert expected in errors[0], stderr
    assert "Traceback" not in stderr
    return str(errors[0])
