"""The kit command line, run as a user runs it: errors are one line and exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from clitools import kit_process

from kit.cli import main


def kit(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_version_and_help() -> None:
    assert kit("--version").output.strip().startswith("kit 0.")
    out = kit("--help").output
    for command in ("run", "plugins", "hooks", "config"):
        assert f"  {command} " in out


def test_help_and_plugins_list_import_neither_torch_nor_plugins() -> None:
    code = """
import sys
from click.testing import CliRunner
from kit.cli import main
for args in (["--help"], ["plugins", "list"], ["run", "--help"], ["hooks"], ["runs", "list"],
             ["ckpt", "--help"]):
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
loaded = sorted(m for m in sys.modules
                if m.split(".")[0] in ("torch", "kit_backends", "kit_contrib", "kit_example_plugin"))
print(loaded)
sys.exit(1 if loaded else 0)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hooks_lists_every_hook_with_its_summary() -> None:
    from kit.hookspecs import HOOK_NAMES

    lines = kit("hooks").output.splitlines()
    assert [line.split()[0] for line in lines] == list(HOOK_NAMES)
    assert all(len(line.split(maxsplit=1)) == 2 for line in lines)
    assert "kit_step_end(trainer, iteration, batch_idx, loss)" in kit("hooks", "--args").output


def test_plugins_list_shows_builtins_with_package_and_version() -> None:
    rows = [json.loads(line) for line in kit("plugins", "list", "--json").output.splitlines()]
    builtin = {(r["group"], r["name"]): r for r in rows if r["package"] == "kit-trainer"}
    assert builtin[("kit.states", "new")]["status"] == "ok"
    assert builtin[("kit.loggers", "console")]["version"]
    table = kit("plugins", "list", "--group", "kit.loggers").output
    assert "console" in table and "kit.states" not in table
    blocked = kit("-p", "no:jsonl", "plugins", "list", "--json", "--check").output
    assert any(json.loads(line)["name"] == "jsonl" and json.loads(line)["status"].startswith("blocked")
               for line in blocked.splitlines())


def test_config_show_resolves_defaults_and_overrides(write_config: Any) -> None:
    path = write_config()
    result = kit("config", "show", str(path), "--set", "training.iterations=9", "--json")
    shown = json.loads(result.output)
    assert shown["training"]["iterations"] == 9
    assert shown["training"]["grad_accum"] == 1  # a default, filled in
    assert "properties" in json.loads(kit("config", "schema").output)


def test_run_trains_and_writes_a_run_directory(write_config: Any, tmp_path: Path) -> None:
    path = write_config(loggers=["console", "jsonl"])
    result = kit("run", str(path), "--set", "training.iterations=1")
    assert result.exit_code == 0, result.output
    assert "epoch 1/1" in result.output and "run finished" in result.output
    (run_dir,) = (tmp_path / "runs" / "tiny").iterdir()
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"


@pytest.mark.parametrize(("setup", "args", "expected"), [
    ("none", ["run", "missing.yaml"], "config file 'missing.yaml' not found"),
    ("text:experiment: x\nmodel: [oops\n", ["run", "CONFIG"], "cannot parse CONFIG, line 3:"),
    ("cfg", ["run", "CONFIG", "--set", "training.iteratons=2"],
     "training.iteratons: unknown key in config.yaml (did you mean 'iterations'?)"),
    ("cfg", ["run", "CONFIG", "--set", "training.iterations=many"],
     "training.iterations: Input should be a valid integer"),
    ("cfg", ["run", "CONFIG", "--mode", "contiue"], "--mode: unknown mode 'contiue'"),
    ("cfg", ["run", "CONFIG", "--backend", "jax"], "backend: unknown backend 'jax'"),
    ("cfg", ["run", "CONFIG", "--set", "loggers=[tensorbored]"],
     "loggers[0]: unknown logger 'tensorbored'"),
    ("cfg", ["run", "CONFIG", "--set", "model.target=nope.mod:f"],
     "model.target: cannot import 'nope.mod'"),
    ("cfg", ["run", "CONFIG", "--set", "loggers=[{console: {colour: red}}]"],
     "loggers[0].options.colour: Extra inputs are not permitted"),
])
def test_bad_input_is_one_clear_line_and_exit_2(
    write_config: Any, tmp_path: Path, setup: str, args: list[str], expected: str
) -> None:
    path = tmp_path / "config.yaml"
    if setup == "cfg":
        path = write_config()
    elif setup.startswith("text:"):
        path.write_text(setup[5:])
    args = [str(path) if a == "CONFIG" else a for a in args]
    expected = expected.replace("CONFIG", str(path))
    result = kit(*args)  # in-process: an uncaught exception would fail the test here
    assert result.exit_code == 2, result.stderr
    assert result.stderr.startswith(f"Error: {expected}"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    if "unknown mode" in expected:
        assert "did you mean 'continue'" in result.stderr and "evaluate" in result.stderr


def test_bad_input_from_a_real_process(write_config: Any, tmp_path: Path) -> None:
    result = kit_process("run", str(write_config()), "--set", "optimizer.lr=-1", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        "Error: optimizer.lr: Input should be greater than 0 (got -1) "
        "(fix it in config.yaml or with --set optimizer.lr=VALUE)\n")


@pytest.mark.parametrize(("flag", "env", "traceback"), [
    ("--debug", {}, True), (None, {"KIT_DEBUG": "1"}, True), (None, {"KIT_DEBUG": "0"}, False),
    (None, {"KIT_DEBUG": ""}, False)])
def test_debug_shows_the_traceback(write_config: Any, tmp_path: Path, flag: str | None,
                                   env: dict[str, str], traceback: bool) -> None:
    path = write_config()
    args = [flag] if flag else []
    result = kit_process(*args, "run", str(path), "--set", "training.iterations=x", cwd=tmp_path, env=env)
    assert ("Traceback" in result.stderr) == traceback, result.stderr
    assert result.returncode == (1 if traceback else 2)  # the raised error, or the one-line one


def test_a_failure_in_user_code_keeps_its_traceback(write_config: Any, tmp_path: Path) -> None:
    path = write_config(model={"target": "tiny_task:broken_model"})
    result = kit_process("run", str(path), cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "boom in user code" in result.stderr


def test_a_broken_plugin_breaks_only_the_runs_that_load_it(
    write_config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kit.cli import CliState
    from kit.plugins import EntryPointSpec, Registry

    monkeypatch.delenv("KIT_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    broken = EntryPointSpec(group="kit.plugins", name="broken", package="acme",
                            value="broken_plugin_mod:Plugin")
    registry = Registry([*Registry.from_environment().specs, broken])

    def invoke(*args: str) -> Any:
        return CliRunner().invoke(main, list(args), obj=CliState(_registry=registry),
                                  catch_exceptions=False)

    listed = invoke("plugins", "list", "--json", "--check")
    assert listed.exit_code == 1 and listed.stderr == "Error: --check found 1 broken plugin: acme[broken]\n"
    row = next(json.loads(line) for line in listed.output.splitlines() if '"broken"' in line)
    assert row["status"].startswith("error: ModuleNotFoundError")
    assert invoke("hooks").exit_code == 0
    path = str(write_config())
    failed = invoke("run", path)
    assert failed.exit_code == 2
    assert failed.stderr.startswith("Error: plugin acme[broken] failed to load: ModuleNotFoundError")
    assert "leave it out with `kit -p no:broken …`" in failed.stderr
    assert invoke("-p", "no:broken", "run", path).exit_code == 0
