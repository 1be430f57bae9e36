"""Bad input is one line on stderr, exit code 2, and nothing written: every class the attack found."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from clitools import kit, kit_process, one_error_line


def written(tmp_path: Path) -> list[str]:
    """Everything under ``tmp_path`` except the config files a test wrote itself."""
    return sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")
                  if p.suffix not in (".yaml", ".yml", ".toml", ".py"))


# -- the config file itself ----------------------------------------------------------

def _alias_bomb(levels: int = 9) -> str:
    lines = ["model:", "  target: 'tiny_task:build_model'", "  kwargs:",
             "    l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"    l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\ndata: {target: 'tiny_task:build_data'}\n"


@pytest.mark.parametrize(("content", "expected"), [
    (b"experiment: \xff\xfe\nmodel: {}\n", "is not UTF-8 text (byte 0xff at offset 12)"),
    (_alias_bomb().encode(), "expands to more than 100,000 values"),
    (b"model: {target: 'a:b', kwargs: {x: &a [*a]}}\ndata: {target: 'a:b'}\n",
     "line 1: found unconstructable recursive node"),
    (b"- just\n- a list\n", "must hold a mapping at the top, not list"),
    (("x: " + "[" * 5000 + "]" * 5000 + "\n").encode(), "cannot parse"),
], ids=["not-utf8", "alias-bomb", "recursive-alias", "not-a-mapping", "too-deep"])
@pytest.mark.parametrize("command", ["run", "config show"])
def test_an_unreadable_config_is_one_line(tmp_path: Path, content: bytes, expected: str,
                                          command: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    started = time.monotonic()
    one_error_line(kit(*command.split(), str(path)), expected)
    assert time.monotonic() - started < 10  # the bomb is refused, not expanded
    assert written(tmp_path) == []


@pytest.mark.parametrize("command", ["run", "config show"])
def test_a_directory_given_as_the_config_is_one_line(tmp_path: Path, command: str) -> None:
    one_error_line(kit(*command.split(), str(tmp_path)), f"'{tmp_path}' is a directory, not a config file")


# -- values torch or the file system cannot take ------------------------------------

@pytest.mark.parametrize(("override", "expected"), [
    ("experiment=..", "experiment: '..' is not a folder name"),
    ("experiment=.", "experiment: '.' is not a folder name"),
    ("experiment=.hidden", "experiment: '.hidden' is not a folder name"),
    ("experiment=a/b", "experiment: 'a/b' is not a folder name"),
    ("experiment=" + "x" * 300, f"experiment: '{'x' * 40}…' is not a folder name"),
    ("training.seed=18446744073709551616", "training.seed: Input should be less than or equal to"),
    ("training.seed=-1", "training.seed: Input should be greater than or equal to 0"),
    ("data.batch_size=9223372036854775808", "data.batch_size: Input should be less than or equal to"),
    ("training.inference_batch_size=99999999999", "training.inference_batch_size: Input should be less"),
    ("data.num_workers=100000", "data.num_workers: Input should be less than or equal to 1024"),
    ('runs_dir="a\\0b"', "runs_dir: a path cannot contain a NUL byte"),
])
def test_values_out_of_range_are_one_line_and_write_nothing(
    write_config: Any, tmp_path: Path, override: str, expected: str
) -> None:
    one_error_line(kit("run", str(write_config()), "--set", override), expected)
    assert written(tmp_path) == []


@pytest.mark.parametrize(("override", "expected"), [
    ("model.kwargs.x=&a [*a]", "--set '&a [*a]' refers to itself"),
    ("model.kwargs.x=!!binary /w==", "holds a bytes, which a config cannot hold"),
    ('model.kwargs.x="\\ud800"', "holds a string that is not valid text"),
    ("model.kwargs.x=!!set {a, b}", "holds a set, which a config cannot hold"),
    ("training.device=meta", "training.device: device 'meta' is not one kit trains on"),
    ("training.grad_accum=100000000000000000000000000", "training.grad_accum: Input should be less than"),
    ("optimizer.kwargs={momentum: -5}", "optimizer.kwargs: torch's SGD rejected these options: "
                                        "Invalid momentum value: -5"),
    ("task.loss=relu", "task.loss: unknown loss 'relu'"),
    ("loggers=[{jsonl: {filename: " + "x" * 300 + "}}]", "has a name longer than 255 bytes"),
])
def test_more_values_out_of_range_are_one_line(write_config: Any, tmp_path: Path, override: str,
                                               expected: str) -> None:
    one_error_line(kit("run", str(write_config()), "--set", override), expected)
    assert written(tmp_path) == []


def test_a_key_given_twice_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("training: {iterations: 3}\nmodel: {target: 'a:b'}\ndata: {target: 'a:b'}\n"
                    "training: {seed: 1}\n")
    one_error_line(kit("config", "show", str(path)), "line 4: duplicate key 'training'")
    merged = tmp_path / "merged.yaml"  # a YAML merge key is not a duplicate: `<<` may be overridden
    merged.write_text("base: &b {target: 'tiny_task:build_model'}\nmodel: {<<: *b, kwargs: {hidden: 4}}\n"
                      "data: {target: 'tiny_task:build_data'}\n".replace("base:", "x-base:"))
    result = kit("config", "show", str(merged))
    assert result.exit_code == 2 and "x-base: unknown key" in result.stderr  # parsed, then validated


def test_a_runs_dir_that_is_a_file_is_one_line(write_config: Any, tmp_path: Path) -> None:
    (tmp_path / "runs").write_text("not a folder")
    one_error_line(kit("run", str(write_config())), "runs_dir: cannot create a run directory in")


def test_a_read_only_runs_dir_is_one_line(write_config: Any, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    runs.chmod(0o500)
    try:
        read_only = f"mount --bind {runs} {runs} 2>/dev/null && mount -o remount,bind,ro {runs}"
        if os.access(runs, os.W_OK) and os.system(read_only):  # root ignores the mode: mount it read-only
            pytest.skip("cannot make a read-only folder here")
        one_error_line(kit("run", str(write_config())), "runs_dir: cannot create a run directory in")
    finally:
        os.system(f"umount {runs} 2>/dev/null")
        runs.chmod(0o700)
    assert list(runs.iterdir()) == []


# -- import targets -----------------------------------------------------------------

@pytest.mark.parametrize(("source", "expected"), [
    ("x = 1 / 0\n", "model.target: importing 'user_model' raised ZeroDivisionError: division by zero at "),
    ("def f(:\n", "model.target: importing 'user_model' raised SyntaxError: invalid syntax at "),
    ("import not_installed_anywhere\n",
     "model.target: importing 'user_model' failed at "),
])
def test_a_target_module_that_fails_to_import_is_one_line(
    write_config: Any, tmp_path: Path, source: str, expected: str
) -> None:
    (tmp_path / "user_model.py").write_text(source)
    result = kit_process("run", str(write_config(model={"target": "user_model:build"})), cwd=tmp_path)
    line = one_error_line(result, expected)
    assert f"{tmp_path / 'user_model.py'}:1" in line
    assert written(tmp_path) == []


# -- logger options that lead outside the run ---------------------------------------

@pytest.mark.parametrize(("logger", "expected"), [
    ({"jsonl": {"filename": "../../escaped.jsonl"}}, "loggers[0].options.filename: "
                                                      "'../../escaped.jsonl' leaves the run directory"),
    ({"jsonl": {"filename": "/tmp/escaped.jsonl"}}, "loggers[0].options.filename: "
                                                     "'/tmp/escaped.jsonl' is absolute"),
    ({"jsonl": {"filename": "config.yaml"}}, "'config.yaml' is kit's own file"),
    ({"csv": {"filename": "logs/../../x.csv"}}, "loggers[0].options.filename: "
                                                 "'logs/../../x.csv' leaves the run directory"),
    ({"csv": {"filename": "checkpoints/x.csv"}}, "is kit's own file"),
    ({"tensorboard": {"log_dir": "../tb"}}, "loggers[0].options.log_dir: '../tb' leaves"),
    ({"tensorboard": {"log_dir": ".."}}, "loggers[0].options.log_dir: '..' leaves"),
])
def test_logger_paths_stay_inside_the_run(write_config: Any, tmp_path: Path, logger: dict[str, Any],
                                          expected: str) -> None:
    pytest.importorskip("tensorboard")
    path = write_config()
    data = yaml.safe_load(path.read_text())
    data["loggers"] = [logger]
    path.write_text(yaml.safe_dump(data))
    one_error_line(kit("run", str(path)), expected)
    assert written(tmp_path) == []
    assert not Path("/tmp/escaped.jsonl").exists()


def test_a_logger_path_inside_the_run_works(write_config: Any, tmp_path: Path) -> None:
    path = write_config(loggers=[{"jsonl": {"filename": "logs/./m.jsonl"}},
                                 {"csv": {"filename": "logs/m.csv"}}])
    assert kit("run", str(path)).exit_code == 0
    (run_dir,) = (tmp_path / "runs" / "tiny").iterdir()
    assert (run_dir / "logs" / "m.jsonl").stat().st_size and (run_dir / "logs" / "m.csv").stat().st_size
