"""``kit --help`` and ``kit plugins list``: package metadata read once, shown as it is, checkable."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from typing import Any

import pytest
from clitools import kit

from kit.cli import CliState
from kit.plugins import EntryPointSpec, Registry, discovery


@pytest.fixture
def metadata_reads(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Count scans of sys.path for installed distributions, and the metadata files read."""
    counts: Counter[str] = Counter()
    scan, read = discovery._distributions, discovery._read

    def counted_scan() -> Any:
        counts["scan"] += 1
        return scan()

    def counted_read(folder: str, filename: str) -> str:
        counts[filename] += 1
        return read(folder, filename)

    monkeypatch.setattr(discovery, "_distributions", counted_scan)
    monkeypatch.setattr(discovery, "_read", counted_read)
    return counts


@pytest.mark.parametrize("args", [["--help"], ["plugins", "list"], ["plugins", "list", "--json"],
                                  ["run", "--help"], ["ckpt", "--help"]])
def test_one_invocation_reads_package_metadata_once(
    args: list[str], metadata_reads: Counter[str]
) -> None:
    distributions = len(discovery._distributions())
    with_extras = {spec.package for spec in Registry.from_environment().specs if spec.extras}
    metadata_reads.clear()

    result = kit(*args)

    assert result.exit_code == 0, result.output
    assert metadata_reads["scan"] == 1  # the slow part was walking (and parsing) it up to 9 times
    assert metadata_reads["entry_points.txt"] == distributions  # each one once
    # core metadata only for packages whose kit entry points declare extras (kit's own, here)
    assert metadata_reads["METADATA"] == len(with_extras)


def test_help_imports_no_metadata_parser_no_pluggy_no_torch() -> None:
    code = ("import sys\nfrom kit.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = ('email', 'pluggy', 'torch', 'pydantic', 'rich', 'yaml')\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or 'importlib.metadata' in m))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"


def spec(name: str, value: str, **fields: Any) -> EntryPointSpec:
    return EntryPointSpec(**{"group": "kit.loggers", "name": name, "package": "acme-kit",
                             "value": value, "version": "1.0", **fields})


def listing(*loggers: EntryPointSpec) -> dict[str, Any]:
    """CliRunner arguments for a kit whose only loggers are ``loggers`` (commands are kit's)."""
    registry = Registry([*Registry.from_environment(["kit.commands"]).specs, *loggers])
    return {"obj": CliState(_registry=registry), "env": {"COLUMNS": "250"}}


def test_the_table_shows_metadata_as_text_not_markup() -> None:
    needs_extra = spec("fancy", "fake_plugins:NoOptions [safetensors]", package="kit-trainer",
                       extras=("safetensors",), requires=("kit-dependency-that-does-not-exist",))
    bracketed = spec("plain", "fake_plugins:NoOptions", package="acme[bold]-kit")
    expected = "unavailable: missing kit-dependency-that-does-not-exist: install `kit-trainer[safetensors]`"
    state = listing(needs_extra, bracketed)

    listed = kit("plugins", "list", "--group", "kit.loggers", "--json", **state).output
    assert [json.loads(row)["status"] for row in listed.splitlines()] == [expected, "ok"]
    table = kit("plugins", "list", "--group", "kit.loggers", **state)
    assert table.exit_code == 0  # without --check the list is information, not a verdict
    assert expected in table.output  # rich ate `[safetensors]` as a markup tag
    assert "acme[bold]-kit  1.0" in table.output
    checked = kit("plugins", "list", "--group", "kit.loggers", "--check", **state)
    assert checked.exit_code == 0  # an optional plugin whose extra is not installed is not broken


BROKEN = spec("broken", "broken_plugin_mod:Plugin")  # its module exists; importing it raises
GHOST = spec("ghost", "kit_module_that_does_not_exist:Plugin")
GOOD = spec("good", "fake_plugins:NoOptions")


@pytest.mark.parametrize("as_json", [False, True])
def test_check_exits_1_when_a_plugin_fails_after_listing_them_all(as_json: bool) -> None:
    state = listing(BROKEN, GHOST, GOOD)
    flags = ["--group", "kit.loggers", *(["--json"] if as_json else [])]

    listed = kit("plugins", "list", *flags, **state)
    assert listed.exit_code == 0, listed.output  # metadata shows the ghost's error; still 0
    assert "module 'kit_module_that_does_not_exist' not found" in listed.output

    checked = kit("plugins", "list", "--check", *flags, **state)
    assert checked.exit_code == 1
    assert checked.stderr == "Error: --check found 2 broken plugins: acme-kit[broken], acme-kit[ghost]\n"
    lines = checked.stdout.splitlines()
    if as_json:
        status = {row["name"]: row["status"] for row in map(json.loads, lines)}
    else:
        status = {line.split()[1]: line.rstrip().split(maxsplit=4)[4] for line in lines[1:]}
    assert status["good"] == "ok"
    assert status["broken"].startswith("error: ModuleNotFoundError")
    assert status["ghost"] == "error: module 'kit_module_that_does_not_exist' not found"


def test_check_exits_0_when_every_plugin_loads() -> None:
    checked = kit("plugins", "list", "--group", "kit.loggers", "--check", **listing(GOOD))
    assert checked.exit_code == 0, checked.output
    assert checked.stderr == ""
