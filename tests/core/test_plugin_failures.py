"""Whatever a plugin raises, and wherever, the run's status and exit code agree, and the
message names the plugin and the hook above the plugin's own frames."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from clitools import kit, kit_process, one_error_line

from kit.cli import CliState, main
from kit.plugins import EntryPointSpec, Registry

PLUGIN = """
import kit

def _inner(value):
    return 1 / value

class Fails:
    def __init__(self):
        self.seen = []

    @kit.hookimpl
    def kit_{hook}(self, trainer):
        _inner(0)

class Witness:
    '''Records that the run's end was announced to every plugin.'''

    @kit.hookimpl
    def kit_exception(self, trainer, error):
        (trainer.run_dir / "exception-fired").write_text(type(error).__name__)

    @kit.hookimpl
    def kit_train_end(self, trainer):
        (trainer.run_dir / "train-end-fired").write_text(trainer.status)
"""


def _check_failure(stderr: str, hook: str, run_dir: Path) -> None:
    lines = stderr.strip().splitlines()
    assert lines[-1] == (f"Error: plugin plugin_mod:Fails failed in kit_{hook}: "
                         "ZeroDivisionError: division by zero")
    assert lines[0] == f"Traceback from plugin_mod:Fails's kit_{hook} (kit's frames: `kit --debug …`):"
    frames = "\n".join(lines[1:-1])
    assert f"in kit_{hook}" in frames and "in _inner" in frames and "1 / value" in frames
    assert "kit/trainer.py" not in frames and "pluggy" not in frames  # kit's internals: --debug only
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"
    assert (run_dir / "train-end-fired").exists()
    if hook != "train_end":  # the end hook itself failed: there was nothing to announce
        assert (run_dir / "exception-fired").read_text() == "ZeroDivisionError"


@pytest.mark.parametrize("hook", ["train_begin", "iteration_begin", "step_end", "val_end", "test_end",
                                  "train_end"])
def test_a_raising_plugin_fails_the_run_by_name(write_config: Any, tmp_path: Path, hook: str) -> None:
    (tmp_path / "plugin_mod.py").write_text(PLUGIN.replace("{hook}", hook))
    result = kit("run", str(write_config(plugins=["plugin_mod:Fails", "plugin_mod:Witness"])))
    assert result.exit_code == 1, result.stderr
    (run_dir,) = (tmp_path / "runs" / "tiny").iterdir()
    _check_failure(result.stderr, hook, run_dir)


@pytest.mark.slow
def test_a_raising_plugin_in_a_real_process(write_config: Any, tmp_path: Path) -> None:
    (tmp_path / "plugin_mod.py").write_text(PLUGIN.replace("{hook}", "train_begin"))
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()  # the module sits beside the config, not in the working directory
    path = write_config(plugins=["plugin_mod:Fails", "plugin_mod:Witness"])
    result = kit_process("run", str(path), cwd=elsewhere)
    assert result.returncode == 1, result.stderr
    (run_dir,) = (tmp_path / "runs" / "tiny").iterdir()
    _check_failure(result.stderr, "train_begin", run_dir)
    from kit.errors import PluginError

    with pytest.raises(PluginError) as debug:  # --debug: the whole traceback, kit's frames too
        kit("--debug", "run", str(path))
    assert isinstance(debug.value.__cause__, ZeroDivisionError)


def test_an_installed_plugin_is_named_as_package_entry(write_config: Any, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "acme_plugin.py").write_text(PLUGIN.replace("{hook}", "step_begin"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("KIT_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    spec = EntryPointSpec(group="kit.plugins", name="fails", package="acme", value="acme_plugin:Fails")
    registry = Registry([*Registry.from_environment().specs, spec])
    from click.testing import CliRunner

    result = CliRunner().invoke(main, ["run", str(write_config())], obj=CliState(_registry=registry),
                                catch_exceptions=False)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: plugin acme[fails] failed in kit_step_begin: ZeroDivisionError: division by zero")


def test_a_plugin_that_raises_a_kit_error_reports_bad_input(write_config: Any, tmp_path: Path) -> None:
    (tmp_path / "strict_mod.py").write_text(
        "import kit\nclass Strict:\n    @kit.hookimpl\n    def kit_train_begin(self):\n"
        "        raise kit.ConfigError('needs a val split', key='plugins[0]')\n")
    one_error_line(kit("run", str(write_config(plugins=["strict_mod:Strict"]))),
                   "plugins[0]: needs a val split")


# -- -p no:NAME says what it does ---------------------------------------------------------

def test_blocking_names_what_it_leaves_out(write_config: Any) -> None:
    path = str(write_config(loggers=["console", "jsonl"]))
    result = kit("-p", "no:jsonl", "-p", "no:console", "-p", "no:nothing-by-this-name", "run", path)
    assert result.exit_code == 0, result.stderr
    err = result.stderr
    assert "kit: loggers[1] (jsonl) is blocked by -p no:jsonl: it will not run" in err
    assert "kit: loggers[0] (console) is blocked by -p no:console: it will not run" in err
    assert "kit: warning: -p no:nothing-by-this-name blocks nothing: no installed plugin or logger is " \
           "named 'nothing-by-this-name' (installed: " in err


# -- modes: --run-dir with new, auto for requeued jobs -------------------------------------

def test_run_dir_with_mode_new_is_refused(write_config: Any, tmp_path: Path) -> None:
    one_error_line(kit("run", str(write_config()), "--run-dir", str(tmp_path)),
                   "--run-dir: mode new always starts a new run directory")
    assert not (tmp_path / "runs").exists()


def test_auto_starts_continues_and_starts_again(write_config: Any, tmp_path: Path) -> None:
    path = str(write_config(training={"iterations": 3}))
    runs = tmp_path / "runs" / "tiny"
    first = kit("run", path, "--mode", "auto", "--set", "training.iterations=1")
    assert first.exit_code == 0 and "starting a new run of tiny (none to continue)" in first.stderr
    (run,) = runs.iterdir()
    more = kit("run", path, "--mode", "auto")  # asked for 3: the run finished at 1, so it goes on
    assert more.exit_code == 0 and f"continuing {run} from" in more.stderr
    assert json.loads((run / "summary.json").read_text())["iteration"] == 3
    again = kit("run", path, "--mode", "auto")
    assert again.exit_code == 0 and f"({run.name} finished)" in again.stderr
    assert len(list(runs.iterdir())) == 2


def test_auto_is_the_same_line_for_every_requeue(write_config: Any, tmp_path: Path) -> None:
    """A job killed before its first checkpoint, then requeued with the same line, twice."""
    kill = tmp_path / "kill_mod.py"
    kill.write_text("import os, signal\nimport kit\nclass Kill:\n    @kit.hookimpl\n"
                    "    def kit_step_end(self, trainer):\n        if trainer.global_step == 2:\n"
                    "            os.kill(os.getpid(), signal.SIGKILL)\n")
    path = str(write_config(plugins=["kill_mod:Kill"]))
    assert kit_process("run", path, "--mode", "auto", cwd=tmp_path).returncode == -9
    assert kit_process("run", path, "--mode", "auto", cwd=tmp_path).returncode == -9  # no checkpoint yet
    done = kit("run", path, "--mode", "auto", "--set", "plugins=[]")
    assert done.exit_code == 0, done.stderr
    assert "has no checkpoint yet: starting it from the beginning" in done.stderr
    (run,) = (tmp_path / "runs" / "tiny").iterdir()
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"


# -- a missing optional package: one line before anything is written ------------------------

def test_a_missing_optional_package_is_one_line_before_anything_is_written(
    write_config: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("safetensors")
    path = str(write_config(checkpoint={"format": "safetensors"}))
    assert kit("run", path).exit_code == 0  # with the package: a safetensors checkpoint to read
    (run,) = (tmp_path / "runs" / "tiny").iterdir()
    before = sorted(p.name for p in run.rglob("*"))

    for name in [m for m in sys.modules if m.split(".")[0] == "safetensors"] + [
            "kit_contrib.formats.safetensors"]:
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setitem(sys.modules, "safetensors", None)  # import safetensors -> ModuleNotFoundError
    expected = "plugin kit-trainer[safetensors] failed to load: ModuleNotFoundError"
    line = one_error_line(kit("run", path, "--set", "experiment=other"), expected)
    assert "(install `kit-trainer[safetensors]`)" in line
    assert not (tmp_path / "runs" / "other").exists()
    for args in (["ckpt", "inspect", str(run)], ["ckpt", "convert", str(run), "--to", "torch"],
                 ["run", path, "--mode", "evaluate", "--set", "checkpoint.format=torch"],
                 ["run", path, "--mode", "continue"]):
        one_error_line(kit(*args), expected)
    assert sorted(p.name for p in run.rglob("*")) == before
