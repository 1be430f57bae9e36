"""docs/reference is generated from the code and stays current: checked here as in `nox -s docs`."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kit_docs_generate", DOCS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generate = load_generator()


def test_the_references_in_the_repository_are_current() -> None:
    assert generate.stale() == [], "docs/reference is stale: run `python docs/generate.py --write`"


def test_check_fails_on_stale_or_missing_references_and_write_fixes_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert generate.main_(["--check"], folder=tmp_path) == 1  # nothing written yet
    assert "stale: hooks.md, cli.md" in capsys.readouterr().err
    assert generate.main_(["--write"], folder=tmp_path) == 0
    assert generate.main_(["--check"], folder=tmp_path) == 0
    cli = tmp_path / "cli.md"
    cli.write_text(cli.read_text().replace("-h, --help", "--help"))  # the stale text
    assert generate.main_(["--check"], folder=tmp_path) == 1
    assert "stale: cli.md in" in capsys.readouterr().err


def help_sections() -> dict[str, str]:
    text = (DOCS / "reference" / "cli.md").read_text(encoding="utf-8")
    return dict(re.findall(r"^## `([^`]+)`\n\n```text\n(.*?)\n```$", text, re.S | re.M))


def test_every_command_documents_both_help_options() -> None:
    sections = help_sections()
    assert {"kit", "kit run", "kit ckpt convert"} <= set(sections)
    for path, text in sections.items():
        assert re.search(r"^  -h, --help +Show this message and exit\.$", text, re.M), path


@pytest.mark.parametrize("command", ["kit run --help", "kit config show -h", "kit ckpt --help"])
def test_the_reference_shows_exactly_what_the_cli_prints(command: str) -> None:
    # a wide terminal: click caps help at 80 columns, so any width from 80 up prints this
    env = {**os.environ, "COLUMNS": "120"}
    args = command.split()
    printed = subprocess.run([sys.executable, "-m", "kit", *args[1:]], capture_output=True,
                             text=True, env=env, check=True).stdout
    path = " ".join(a for a in args if not a.startswith("-"))
    assert printed == help_sections()[path] + "\n"
