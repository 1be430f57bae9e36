"""``kit --help`` and ``kit plugins list``: package metadata read once, shown as it is, checkable."""

from __future__ import annotations

import importlib.metadata as md
import json
from collections import Counter
from typing import Any

import pytest
from clitools import kit

from kit.cli import CliState
from kit.plugins import EntryPointSpec, Registry


@pytest.fixture
def metadata_reads(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Count walks of the installed distributions, files read from them and name lookups."""
    counts: Counter[str] = Counter()
    walk, read_text, lookup = md.distributions, md.PathDistribution.read_text, md.distribution

    def counted_walk(**kwargs: Any) -> Any:
        counts["walk"] += 1
        return walk(**kwargs)

    def counted_read(self: md.PathDistribution, filename: str) -> str | None:
        counts[filename] += 1
        return read_text(self, filename)

    def counted_lookup(name: str) -> md.Distribution:
        counts["lookup"] += 1
        return lookup(name)

    monkeypatch.setattr(md, "distributions", counted_walk)
    monkeypatch.setattr(md.PathDistribution, "read_text", counted_read)
    monkeypatch.setattr(md, "distribution", counted_lookup)
    return counts


@pytest.mark.parametrize("args", [["--help"], ["plugins", "list"], ["plugins", "list", "--json"],
                                  ["run", "--help"], ["ckpt", "--help"]])
def test_one_invocation_reads_package_metadata_once(
    args: list[str], metadata_reads: Counter[str]
) -> None:
    installed = Registry.from_environment()
    packages = {spec.package for spec in installed.specs}
    extras_needs = sum(len(spec.requires) for spec in installed.specs)
    distributions = len(list(md.distributions()))
    metadata_reads.clear()

    result = kit(*args)

    assert result.exit_code == 0, result.output
    assert metadata_reads["walk"] == 1  # the slow part was walking (and parsing) it up to 9 times
    assert metadata_reads["entry_points.txt"] <= distributions  # each one at most once
    # only packages that provide kit plugins (fewer when another library's finder serves them)
    assert metadata_reads["METADATA"] <= len(packages)
    # --help never checks a plugin; the list looks each extra's requirement up by name once
    assert metadata_reads["lookup"] == (extras_needs if args[0] == "plugins" else 0)


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
    expected = "error: missing kit-dependency-that-does-not-exist: install `kit-trainer[safetensors]`"
    state = listing(needs_extra, bracketed)

    listed = kit("plugins", "list", "--group", "kit.loggers", "--json", **state).output
    assert [json.loads(row)["status"] for row in listed.splitlines()] == [expected, "ok"]
    table = kit("plugins", "list", "--group", "kit.loggers", **state)
    assert table.exit_code == 0  # without --check the list is information, not a verdict
    assert expected in table.output  # rich ate `[safetensors]` as a markup tag
    assert "acme[bold]-kit  1.0" in table.output


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
