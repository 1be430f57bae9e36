"""`kit ckpt` and `kit runs list` on corrupt checkpoints and garbled run files, as a user runs them:
a corrupt checkpoint is one line and exit code 2; a wrong-typed field in a run's files is shown
as unknown; a bad RUNS_DIR is one line."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from clitools import kit, kit_process, one_error_line

from kit.checkpoint import MANIFEST, CheckpointStore, Retention, TorchFormat
from kit.runlock import RunLock
from kit.seed import rng_state


def kit_state(step: int) -> dict[str, Any]:
    return {"model": {"w": torch.full((3,), float(step))}, "optimizer": {"state": {}, "param_groups": []},
            "progress": {"iteration": step, "global_step": step, "epoch": step}, "rng": rng_state()}


def edit_manifest(change: Callable[[dict[str, Any]], Any]) -> Callable[[Path], None]:
    def forge(folder: Path) -> None:
        manifest = json.loads((folder / MANIFEST).read_text())
        (folder / MANIFEST).write_text(json.dumps(change(manifest)))
    return forge


def with_content(content: Callable[[Path], None]) -> Callable[[Path], None]:
    """Replace checkpoint.pt and list it honestly: only what it holds is wrong."""
    def forge(folder: Path) -> None:
        content(folder / "checkpoint.pt")
        data = (folder / "checkpoint.pt").read_bytes()
        edit_manifest(lambda m: {**m, "files": {"checkpoint.pt": {
            "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}}})(folder)
    return forge


class _RunsCode:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("touch pwned",))


def _pickled_code(path: Path) -> None:
    with path.open("wb") as fh:
        pickle.dump({"model": _RunsCode()}, fh, protocol=2)


def _symlink_outside(folder: Path) -> None:
    outside = folder.parent.parent / "stolen.pt"
    shutil.copy(folder / "checkpoint.pt", outside)
    (folder / "checkpoint.pt").unlink()
    (folder / "checkpoint.pt").symlink_to(outside)


def _manifest_directory(folder: Path) -> None:
    (folder / MANIFEST).unlink()
    (folder / MANIFEST).mkdir()


def _deep_list(path: Path) -> None:
    """A kit checkpoint whose ``plugins`` holds a 100000-deep list (written as raw pickle ops:
    no pickler can write one), the shape that made ``inspect`` die with RecursionError."""
    marker = "DEEP_LIST_HERE"
    buffer = io.BytesIO()
    torch.save({**kit_state(1), "plugins": {"x": marker}}, buffer)
    old = b"X" + len(marker).to_bytes(4, "little") + marker.encode()
    with zipfile.ZipFile(buffer) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            zout.writestr(info.filename, data.replace(old, b"]" * 100_000 + b"a" * 99_999))


CORRUPT: dict[str, tuple[Callable[[Path], None], str]] = {
    "unlisted file": (lambda f: (f / "extra.bin").write_bytes(b"x"), "checkpoint {f} holds extra.bin"),
    "symlink outside": (_symlink_outside, "checkpoint {f}: checkpoint.pt is a symlink"),
    "../ path": (edit_manifest(lambda m: {**m, "files": {"../../x": m["files"]["checkpoint.pt"]}}),
                 "checkpoint {f} has a malformed manifest: it lists '../../x'"),
    "wrong sha256": (edit_manifest(lambda m: {**m, "files": {"checkpoint.pt": {
        **m["files"]["checkpoint.pt"], "sha256": "0" * 64}}}),
        "checkpoint {f}: checkpoint.pt does not match"),
    "files entry a number": (edit_manifest(lambda m: {**m, "files": {"checkpoint.pt": 5}}),
                             "checkpoint {f} has a malformed manifest: files['checkpoint.pt']"),
    "manifest a list": (edit_manifest(lambda m: [m]),
                        "checkpoint {f} has a malformed manifest: it is a JSON list"),
    "step a string": (edit_manifest(lambda m: {**m, "step": "x"}),
                      "checkpoint {f} has a malformed manifest: step must be"),
    "progress null": (edit_manifest(lambda m: {**m, "progress": None}),
                      "checkpoint {f} has a malformed manifest: progress must be"),
    "manifest.json a directory": (_manifest_directory, "checkpoint {f} has a malformed manifest"),
    "no manifest": (lambda f: (f / MANIFEST).unlink(), "checkpoint {f} has no manifest"),
    "unknown format": (edit_manifest(lambda m: {**m, "format": "onnx"}),
                       "checkpoint {f} names the checkpoint format 'onnx', which is not installed here"),
    "not a kit checkpoint": (with_content(lambda p: torch.save({"a": 1}, p)),
                             "checkpoint {f} is not a kit checkpoint: 'model' is not a dict of tensors"),
    "progress without iteration": (
        with_content(lambda p: torch.save({**kit_state(1), "progress": {"global_step": 1, "epoch": 0}}, p)),
        "checkpoint {f} is not a kit checkpoint: progress['iteration']"),
    "a list": (with_content(lambda p: torch.save([1, 2], p)), "checkpoint {f} holds a list"),
    "metric a 401-digit integer": (edit_manifest(lambda m: {**m, "metrics": {"val/loss": 10**400}}),
                                   "checkpoint {f} has a malformed manifest: metrics must be an object of"),
    "a 100000-deep list": (with_content(_deep_list),
                           "checkpoint {f} is not a kit checkpoint: its data is nested more than 64 levels"),
    "format name with a newline": (edit_manifest(lambda m: {**m, "format": "torch\nkit: forged\x1b[2J"}),
                                   "names the checkpoint format 'torch\\nkit: forged\\x1b[2J', which is not"),
    "misnamed": (edit_manifest(lambda m: {**m, "step": 99}),
                 "checkpoint {f} is misnamed: its manifest says step 99"),
    "pickled code": (with_content(_pickled_code),
                     "cannot load checkpoint {f}/checkpoint.pt: it holds pickled objects that are not "
                     "plain data (posix.system)"),
}


@pytest.mark.parametrize("case", CORRUPT)
@pytest.mark.parametrize("command", [["inspect"], ["convert", "--to", "safetensors"]],
                         ids=["inspect", "convert"])
def test_ckpt_on_a_corrupt_checkpoint_is_one_line(
    case: str, command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    folder = CheckpointStore(tmp_path / "ckpt", TorchFormat()).save(kit_state(1), step=1)
    assert kit("ckpt", "inspect", str(folder)).exit_code == 0
    forge, expected = CORRUPT[case]
    forge(folder)
    one_error_line(kit("ckpt", command[0], str(folder), *command[1:]), expected.format(f=folder))
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]  # nothing converted
    assert not (tmp_path / "pwned").exists()


def test_a_raw_protocol_4_pickle_is_one_line_without_torchs_warnings(tmp_path: Path) -> None:
    folder = CheckpointStore(tmp_path / "ckpt", TorchFormat()).save(kit_state(1), step=1)
    with_content(lambda p: p.write_bytes(pickle.dumps({"model": {}}, protocol=4)))(folder)
    one_error_line(kit_process("ckpt", "inspect", str(folder), cwd=tmp_path),
                   f"cannot load checkpoint {folder}/checkpoint.pt: it is corrupt, or holds pickled data")


def test_inspect_shows_text_from_the_files_on_one_line_each(tmp_path: Path) -> None:
    folder = CheckpointStore(tmp_path / "evil\nname", TorchFormat()).save(
        {**kit_state(1), "evil\nkey\x1b[2J": {"a": 1}}, step=1, metrics={"val\nloss": float("nan")},
        progress={"iteration": 1, "global_step": 1, "phase": "done\nkit: forged", "epoch": 10**30})
    edit_manifest(lambda m: {**m, "kit_version": "0.1\x1b[31m\nkit: forged",
                             "converted_from": "a\rb"})(folder)
    result = kit("ckpt", "inspect", str(folder))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert all(line.isprintable() for line in lines) and len(lines) == 4 + 1 + 1 + len(kit_state(1)) + 1
    assert lines[0] == f"checkpoint  {str(folder)!r}"
    assert lines[1] == "format      torch (kit '0.1\\x1b[31m\\nkit: forged'), verified against its manifest"
    assert lines[2] == "converted   from 'a\\rb'"
    assert lines[3] == "progress    iteration 1, global_step 1, epoch ?, phase 'done\\nkit: forged'"
    assert lines[4] == "metrics     'val\\nloss'=nan"
    assert lines[-1] == "'evil\\nkey\\x1b[2J' 1 key"


def _output_cases(tmp_path: Path, folder: Path) -> dict[str, tuple[Path, str]]:
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere" / "x")
    (tmp_path / "a-file").write_text("x")
    cases = {
        "through a file": (Path("/dev/null/x"), "--output: /dev/null/x cannot be a new folder: Not a dir"),
        "a name too long": (tmp_path / ("a" * 300), "cannot be a new folder: File name too long"),
        "a dangling symlink": (tmp_path / "dangling", f"{tmp_path / 'dangling'} already exists (pass"),
        "an existing file": (tmp_path / "a-file", f"{tmp_path / 'a-file'} already exists"),
        "the source itself": (folder, f"{folder} already exists"),
        "inside the source": (folder / "sub", f"{folder / 'sub'} is inside the checkpoint {folder} it"),
        "inside, through ..": (folder / ".." / folder.name / "x", "is inside the checkpoint"),
    }
    if os.path.isdir("/proc/1"):
        cases["in /proc"] = (Path("/proc/1/x"), "cannot write a checkpoint in /proc/1: ")
    return cases


OUTPUTS = ["through a file", "a name too long", "a dangling symlink", "an existing file", "the source itself",
           "inside the source", "inside, through ..", "in /proc"]


@pytest.mark.parametrize("case", OUTPUTS)
def test_convert_to_an_output_that_cannot_be_a_new_folder_is_one_line(case: str, tmp_path: Path) -> None:
    folder = CheckpointStore(tmp_path / "ckpt", TorchFormat()).save(kit_state(1), step=1)
    cases = _output_cases(tmp_path, folder)
    if case not in cases:
        pytest.skip("no /proc here")
    output, expected = cases[case]
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    one_error_line(kit("ckpt", "convert", str(folder), "--to", "torch", "--output", str(output)), expected)
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # nothing was written anywhere


def test_convert_on_a_full_disk_is_exit_1(tmp_path: Path) -> None:
    folder = CheckpointStore(tmp_path / "ckpt", TorchFormat()).save(
        {**kit_state(1), "model": {"w": torch.zeros(1 << 20)}}, step=1)  # 4 MiB: more than the disk holds
    disk = tmp_path / "disk"
    disk.mkdir()
    if not shutil.which("mount") or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        one_error_line(kit("ckpt", "convert", str(folder), "--to", "torch", "--output", str(disk / "out")),
                       "no space left on device", code=1)
        assert os.listdir(disk) == []  # the staging folder is gone too
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


# -- kit runs list -----------------------------------------------------------------------

BEST = {"name": "val/loss", "mode": "min", "value": 0.25, "step": 16}
SUMMARY = {"status": "finished", "iteration": 4, "iterations": 4, "best": BEST}


def make_run(runs: Path) -> Path:
    """A finished run whose files all agree: iteration 4 of 4, best val/loss 0.25 at step 16."""
    run = runs / "exp" / "20260101-000000"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("experiment: exp\ntraining: {iterations: 4}\n")
    (run / "summary.json").write_text(json.dumps(SUMMARY))
    store = CheckpointStore(run / "checkpoints", TorchFormat(), retention=Retention(monitor="val/loss"))
    store.save(kit_state(16), step=16, progress={"iteration": 4, "best": BEST}, metrics={"val/loss": 0.25})
    return run


def sparse(path: Path) -> None:
    """A 3 GB file that occupies no disk: reading it whole would exhaust memory."""
    with path.open("wb") as fh:
        fh.truncate(3 << 30)


def summary(value: Any) -> Callable[[Path], None]:
    return lambda run: (run / "summary.json").write_text(json.dumps(value))


def raw(name: str, data: bytes) -> Callable[[Path], None]:
    return lambda run: (run / name).write_bytes(data)


def no_summary_and(forge: Callable[[Path], None]) -> Callable[[Path], None]:
    """Without a summary, what is shown comes from the newest checkpoint's manifest."""
    def both(run: Path) -> None:
        (run / "summary.json").unlink()
        forge(run)
    return both


def manifest(change: Callable[[dict[str, Any]], Any]) -> Callable[[Path], None]:
    return lambda run: edit_manifest(change)(run / "checkpoints" / "step-00000016")


def directory(name: str) -> Callable[[Path], None]:
    def forge(run: Path) -> None:
        (run / name).unlink(missing_ok=True)
        (run / name).mkdir()
    return forge


FALLBACK = {"status": "crashed", "iteration": 4, "iterations": 4, "best": BEST}
"""No usable summary: killed hard, progress and best from the checkpoint."""
NO_BEST = {**SUMMARY, "best": None}
UNKNOWN = {**FALLBACK, "iteration": None, "best": None}
"""Neither a usable summary nor a usable manifest."""
GARBLED: dict[str, tuple[Callable[[Path], None], dict[str, Any]]] = {
    "best a string": (summary({**SUMMARY, "best": "x"}), NO_BEST),
    "best name a number": (summary({**SUMMARY, "best": {"name": 1}}), NO_BEST),
    "best value a string": (summary({**SUMMARY, "best": {**BEST, "value": "low"}}), NO_BEST),
    "best step a list": (summary({**SUMMARY, "best": {**BEST, "step": []}}), NO_BEST),
    "iteration a string": (summary({**SUMMARY, "iteration": "a"}), SUMMARY),  # from the checkpoint
    "iterations a string": (summary({**SUMMARY, "iterations": "b"}), SUMMARY),  # from config.yaml
    "iteration a bool": (summary({**SUMMARY, "iteration": True}), SUMMARY),
    "status a number": (summary({**SUMMARY, "status": 5}), {**SUMMARY, "status": "crashed"}),
    "status an escape sequence": (summary({**SUMMARY, "status": "\x1b[2J"}),
                                  {**SUMMARY, "status": "crashed"}),
    "status a word kit never writes": (summary({**SUMMARY, "status": "exploded"}),
                                       {**SUMMARY, "status": "crashed"}),
    "summary a list": (summary([SUMMARY]), FALLBACK),
    "summary not json": (raw("summary.json", b'{"status": '), FALLBACK),
    "summary not utf-8": (raw("summary.json", b'{"status": "\xff"}'), FALLBACK),
    "summary nested too deep": (raw("summary.json", b"[" * 100_000), FALLBACK),
    "summary.json a directory": (directory("summary.json"), FALLBACK),
    "manifest progress a number": (no_summary_and(manifest(lambda m: {**m, "progress": 3})), UNKNOWN),
    "manifest progress fields wrong": (
        no_summary_and(manifest(lambda m: {**m, "progress": {"iteration": "a", "best": {"name": 1}}})),
        UNKNOWN),
    "manifest a list": (no_summary_and(manifest(lambda m: [m])), UNKNOWN),
    "manifest.json a directory": (no_summary_and(lambda run: _manifest_directory(
        run / "checkpoints" / "step-00000016")), UNKNOWN),
    "config a list": (no_summary_and(raw("config.yaml", b"- 1\n- 2\n")), {**FALLBACK, "iterations": None}),
    "config a string": (no_summary_and(raw("config.yaml", b"just text\n")), {**FALLBACK, "iterations": None}),
    "config not utf-8": (no_summary_and(raw("config.yaml", b"training: {iterations: 4}\n\xff\xfe")),
                         {**FALLBACK, "iterations": None}),
    "config not yaml": (no_summary_and(raw("config.yaml", b"training: {iterations: [\n")),
                        {**FALLBACK, "iterations": None}),
    "config training a number": (no_summary_and(raw("config.yaml", b"training: 3\n")),
                                 {**FALLBACK, "iterations": None}),
    "config iterations a string": (no_summary_and(raw("config.yaml", b"training: {iterations: x}\n")),
                                   {**FALLBACK, "iterations": None}),
    "run.lock garbled": (raw("run.lock", b"\xff\x00garbage"), {**SUMMARY, "status": "crashed"}),
    "run.lock a directory": (directory("run.lock"), SUMMARY),
    "summary a FIFO": (lambda run: ((run / "summary.json").unlink(), os.mkfifo(run / "summary.json")),
                       FALLBACK),
    "summary 3 GB sparse": (lambda run: sparse(run / "summary.json"), FALLBACK),
    "summary a symlink": (lambda run: ((run / "summary.json").rename(run / "s.json"),
                                       (run / "summary.json").symlink_to("s.json")), FALLBACK),
    "config 3 GB sparse": (no_summary_and(lambda run: sparse(run / "config.yaml")),
                           {**FALLBACK, "iterations": None}),
    "best value a 401-digit integer": (summary({**SUMMARY, "best": {**BEST, "value": 10**400}}), NO_BEST),
    "best value NaN": (raw("summary.json", json.dumps({**SUMMARY, "best": {**BEST, "value": "X"}})
                           .replace('"X"', "NaN").encode()), NO_BEST),
    "best step 2**64": (summary({**SUMMARY, "best": {**BEST, "step": 2**64}}), NO_BEST),
    "iteration beyond iterations": (summary({**SUMMARY, "iteration": 9}),
                                    {**SUMMARY, "iteration": 9, "iterations": None}),
    "summary of an earlier attempt": (lambda run: (
        summary({**SUMMARY, "iteration": 2, "iterations": 2, "global_step": 8, "best": None})(run),
        (run / "run.lock").write_text("{}")), FALLBACK),  # continued to iteration 4, then killed
}


@pytest.mark.parametrize("case", GARBLED)
def test_runs_list_shows_a_wrong_typed_field_as_unknown(case: str, tmp_path: Path) -> None:
    run = make_run(tmp_path / "runs")
    listed = kit("runs", "list", str(tmp_path / "runs"), "--json")
    assert listed.exit_code == 0 and json.loads(listed.output) == {"run": str(run), **SUMMARY}
    forge, expected = GARBLED[case]
    forge(run)
    listed = kit("runs", "list", str(tmp_path / "runs"), "--json")
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.output) == {"run": str(run), **expected}
    table = kit("runs", "list", str(tmp_path / "runs"))
    assert table.exit_code == 0, table.output
    (row,) = table.output.splitlines()[1:]
    progress = f"{expected['iteration'] if expected['iteration'] is not None else '?'}/" \
               f"{expected['iterations'] or '?'}"
    best = "val/loss=0.25 @ step 16" if expected["best"] else "-"
    assert row.split(maxsplit=1)[1].split() == [expected["status"], progress, *best.split()]


def test_runs_list_on_a_file_or_a_missing_folder_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "runs.txt").write_text("not a folder")
    one_error_line(kit("runs", "list", str(tmp_path / "runs.txt")),
                   f"{tmp_path / 'runs.txt'} is a file, not a runs folder (pass the folder that holds")
    one_error_line(kit("runs", "list", str(tmp_path / "nowhere"), "--json"),
                   f"runs folder {tmp_path / 'nowhere'} not found")
    monkeypatch.chdir(tmp_path)
    default = kit("runs", "list")  # no runs yet under the default folder is no error
    assert default.exit_code == 0 and default.output == "no runs under runs\n"
    (tmp_path / "runs").write_text("a file where the runs folder should be")
    one_error_line(kit("runs", "list"), "runs is a file, not a runs folder")


def test_runs_list_shows_a_running_continued_run_with_its_own_iterations(tmp_path: Path) -> None:
    run = make_run(tmp_path / "runs")  # its newest checkpoint: iteration 4
    summary({**SUMMARY, "iteration": 3, "iterations": 3})(run)  # the first attempt, which ended at 3
    (run / "config.yaml").write_text("experiment: exp\ntraining: {iterations: 300}\n")  # continue's
    with RunLock(run):
        listed = kit("runs", "list", str(tmp_path / "runs"), "--json")
        table = kit("runs", "list", str(tmp_path / "runs"))
    assert json.loads(listed.output) == {"run": str(run), "status": "running", "iteration": 4,
                                         "iterations": 300, "best": BEST}
    assert table.output.splitlines()[1].split()[1:3] == ["running", "4/300"]


def test_runs_list_shows_names_from_disk_on_one_line_each(tmp_path: Path) -> None:
    run = make_run(tmp_path / "runs")
    evil = run.with_name("20260101-000001\nkit: forged\x1b[2J")
    shutil.copytree(run, evil)
    summary({**SUMMARY, "best": {**BEST, "name": "val/loss\nkit: forged"}})(evil)
    table = kit("runs", "list", str(tmp_path / "runs"))
    assert table.exit_code == 0
    lines = table.output.splitlines()
    assert len(lines) == 3 and all(line.isprintable() for line in lines), lines
    assert lines[2].startswith("'exp/20260101-000001\\nkit: forged\\x1b[2J'  finished  4/4")
    assert lines[2].endswith("'val/loss\\nkit: forged'=0.25 @ step 16")


def test_runs_list_skips_what_it_cannot_read_with_one_warning_each(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        prefix = [shutil.which("setpriv") or "setpriv", "--bounding-set=-dac_override,-dac_read_search",
                  "--inh-caps=-all"]
        if subprocess.run([*prefix, "true"], capture_output=True).returncode:
            pytest.skip("needs setpriv to run without root's override of file permissions")
    else:
        prefix = []
    runs = tmp_path / "runs"
    run = make_run(runs)
    shutil.copytree(run, runs / "hidden" / run.name)  # a second experiment, which this user may not read
    (runs / "hidden").chmod(0)
    (run / "checkpoints").chmod(0)
    try:
        out = subprocess.run([*prefix, sys.executable, "-m", "kit", "runs", "list", str(runs), "--json"],
                             capture_output=True, text=True, timeout=120)
    finally:
        (runs / "hidden").chmod(0o755)
        (run / "checkpoints").chmod(0o755)
    assert out.returncode == 0 and "Traceback" not in out.stderr
    assert out.stderr.splitlines() == [
        f"kit: warning: skipping {runs / 'hidden'}: cannot read it: Permission denied",
        f"kit: warning: cannot read the checkpoints in {run / 'checkpoints'}: Permission denied; "
        "showing what its summary.json says"]
    assert json.loads(out.stdout) == {"run": str(run), **SUMMARY}  # from its summary
