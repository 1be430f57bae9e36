"""``kit --help`` and ``kit plugins list``: package metadata read once, shown as it is, checkable."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from typing import Any

import pytest
from clitools import kit, one_error_line

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
                                  ["plugins", "list", "--hooks"], ["run", "--help"], ["ckpt", "--help"]])
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


def test_plain_list_imports_no_plugin_no_pluggy_no_torch() -> None:
    code = ("import sys\nfrom kit.cli import main\ntry:\n    main(['plugins', 'list'])\nexcept SystemExit:\n"
            "    pass\nheavy = ('pluggy', 'torch', 'kit_contrib', 'kit_backends', 'pydantic')\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"


# -- --hooks: call order -------------------------------------------------------------------

ORDERING = {"first": "First", "last": "Last", "later": "Later", "old": "OldStyle", "optin": "OptIn",
            "outer": "Outer", "plain": "Plain", "wrap": "Wrap"}  # tests/ordering_plugins.py


def ordering_state() -> dict[str, Any]:
    """CliRunner arguments for a kit with the ordering plugins installed beside kit's own
    (opt-in) ones, and no other package's hook plugins."""
    from kit.cli import BUILTIN_PACKAGE

    mine = [EntryPointSpec("kit.plugins", name, "acme-kit", f"ordering_plugins:{cls}", "1.0")
            for name, cls in ORDERING.items()]
    kits = [s for s in Registry.from_environment().specs
            if s.group != "kit.plugins" or s.package == BUILTIN_PACKAGE]
    return {"obj": CliState(_registry=Registry([*kits, *mine])), "env": {"COLUMNS": "80"}}


def listed_order(flags: list[str]) -> list[str]:
    """The entry names ``kit FLAGS plugins list --hooks --json`` gives kit_iteration_end, in order."""
    from kit.hookspecs import HOOK_NAMES

    result = kit(*flags, "plugins", "list", "--hooks", "--json", **ordering_state())
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    hooks = [row for row in rows if "hook" in row]
    assert [row["hook"] for row in hooks] == list(HOOK_NAMES)  # every hook, implemented or not
    impls = next(row for row in hooks if row["hook"] == "kit_iteration_end")["implementations"]
    assert all(impl["plugin"].startswith("acme-kit[") for impl in impls)
    return [impl["plugin"][len("acme-kit["):-1] for impl in impls]


@pytest.mark.parametrize(("flags", "expected"), [
    ([], ["outer", "wrap", "old", "first", "plain", "later", "last"]),
    # asked for by -p, registered after the autoloaded ones: called before them
    (["-p", "optin"], ["outer", "wrap", "old", "first", "optin", "plain", "later", "last"]),
    (["-p", "no:wrap", "-p", "no:first"], ["outer", "old", "plain", "later", "last"]),
])
def test_hooks_lists_implementations_in_the_order_a_run_calls_them(
    flags: list[str], expected: list[str], write_config: Any
) -> None:
    import ordering_plugins

    listed = listed_order(flags)
    assert listed == expected  # wrappers first; then tryfirst, plain (last registered first), trylast

    ordering_plugins.CALLS.clear()
    ran = kit(*flags, "run", str(write_config()), **ordering_state())
    assert ran.exit_code == 0, ran.output
    called = [name for iteration, name in ordering_plugins.CALLS if iteration == 1]
    ordering_plugins.CALLS.clear()
    assert called == listed


def test_hooks_table_marks_each_implementation_and_says_what_is_not_loaded() -> None:
    result = kit("-p", "no:wrap", "plugins", "list", "--hooks", **ordering_state())
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(map(len, lines)) <= 80
    start = lines.index("kit_iteration_end")
    assert lines[start:start + 7] == [
        "kit_iteration_end",
        "  1. acme-kit[outer]  tryfirst wrapper",
        "  2. acme-kit[old]    hookwrapper",
        "  3. acme-kit[first]  tryfirst",
        "  4. acme-kit[plain]",
        "  5. acme-kit[later]",
        "  6. acme-kit[last]   trylast",
    ]
    start = lines.index("kit_skip_optimizer_step  (firstresult: the first non-None result wins)")
    assert lines[start + 1:start + 3] == ["  1. acme-kit[plain]", "  2. acme-kit[later]"]
    unused = " ".join(line for line in lines if line.startswith(("Not implemented", "  kit_")))
    assert "kit_train_begin," in unused and "kit_iteration_end" not in unused
    not_loaded = lines[lines.index("Installed, not loaded:") + 1:]
    assert "  acme-kit[optin]              opt-in (plugins: or -p optin)" in not_loaded
    assert "  acme-kit[wrap]               blocked (-p no:wrap)" in not_loaded
    assert "  kit-trainer[early_stopping]  opt-in (plugins: or -p early_stopping)" in not_loaded


@pytest.mark.parametrize(("args", "expected"), [
    (["plugins", "list", "--hooks", "--check"], "--hooks takes no --group or --check"),
    (["-p", "nope", "plugins", "list", "--hooks"], "-p nope: unknown plugin 'nope'"),
])
def test_hooks_bad_input_is_one_line(args: list[str], expected: str) -> None:
    one_error_line(kit(*args, **ordering_state()), expected)
