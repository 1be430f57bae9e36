"""What a crashed writer can leave behind, and what a forged checkpoint that verifies against its
honest manifest can still carry: each is cleared, or is one warning and a fall-back to the
previous checkpoint, never a save that fails forever, a crash, a hang or a huge allocation."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from blocking import in_thread
from clitools import kit as cli
from clitools import one_error_line

import kit.checkpoint
from kit.checkpoint import MANIFEST, CheckpointStore, Retention, TorchFormat, check_kit_checkpoint
from kit.errors import CheckpointError
from kit.manifest import read_manifest
from kit.rundir import read_json, read_regular
from kit.seed import rng_state

TESTS = Path(__file__).resolve().parents[1]


def kit_state(step: int, **changes: Any) -> dict[str, Any]:
    """A checkpoint with every section kit's trainer writes, in the types it writes them."""
    state = {
        "kit": {"version": "0", "format": 2},
        "model": {"w": torch.full((3,), float(step))},
        "optimizer": {"state": {0: {"momentum_buffer": torch.zeros(3)}},
                      "param_groups": [{"lr": 0.1, "betas": (0.9, 0.99), "params": [0]}]},
        "scheduler": None,
        "backend": {"name": "torch", "state": {}},
        "progress": {"iteration": step, "global_step": step, "epoch": step, "epoch_batches": 0,
                     "phase": "done", "best": {"name": "val/loss", "mode": "min", "value": 0.5,
                                               "step": step}, "world_size": 1},
        "loop": {"window": None, "iter_sum": torch.tensor(0.0), "iter_count": 0},
        "rng": rng_state(),
        "config": {"training": {"iterations": 3}},
        "results": {"val": {"loss": 0.5, "accuracy": 1}},
        "plugins": {},
    }
    return {**state, **changes}


def store(folder: Path, **retention: Any) -> CheckpointStore:
    return CheckpointStore(folder, TorchFormat(), retention=Retention(**retention))


def reseal(folder: Path) -> None:
    """Rewrite the manifest honestly for the files the folder now holds: only the content is forged."""
    manifest = json.loads((folder / MANIFEST).read_text())
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.name != MANIFEST}
    manifest["files"] = {name: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                         for name, data in files.items()}
    (folder / MANIFEST).write_text(json.dumps(manifest))


def edit_manifest(folder: Path, change: Callable[[dict[str, Any]], None]) -> None:
    manifest = json.loads((folder / MANIFEST).read_text())
    change(manifest)
    (folder / MANIFEST).write_text(json.dumps(manifest))


def kit_warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("kit: warning:")]


# -- staging leftovers: a crashed writer never blocks the next save ----------------------------

WRITER = """
import os, sys, time
from pathlib import Path
from kit.checkpoint import CheckpointStore, TorchFormat

class Stuck(TorchFormat):
    def save(self, checkpoint, folder):
        (folder / self.filename).write_bytes(b"half a checkpoint")
        print("writing", os.getpid(), flush=True)
        time.sleep(60)

fmt = Stuck() if sys.argv[2] == "stuck" else TorchFormat()
CheckpointStore(Path(sys.argv[1]), fmt).save({"v": 2}, step=2)
print("saved", os.getpid(), flush=True)
"""


def as_pid_1(folder: Path, how: str) -> subprocess.Popen[str]:
    """The writer as PID 1 of a new PID namespace, as in every container (needs root)."""
    command = ["unshare", "--pid", "--kill-child", sys.executable, "-c", WRITER, str(folder), how]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


def test_a_writer_killed_mid_save_never_blocks_a_later_one_with_the_same_pid(tmp_path: Path) -> None:
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "--pid", "--fork", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs unshare --pid (root) to give two processes the same pid")
    killed = as_pid_1(tmp_path, "stuck")
    assert killed.stdout is not None and killed.stdout.readline().split() == ["writing", "1"]
    killed.send_signal(signal.SIGKILL)  # unshare dies, and takes its PID 1 with it (--kill-child)
    killed.wait(timeout=30)
    (leftover,) = [p.name for p in tmp_path.iterdir()]
    assert leftover.startswith(".staging-step-00000002-") and leftover.endswith("-1")

    again = as_pid_1(tmp_path, "save")  # PID 1 again, saving the same step
    out, _ = again.communicate(timeout=120)
    assert again.returncode == 0 and out.split() == ["saved", "1"]
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000002"]  # committed, the leftover swept
    assert store(tmp_path).load(tmp_path / "step-00000002") == {"v": 2}


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_save_clears_leftover_staging_of_dead_writers_and_its_own_pid_only(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not kit's")
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    cleared = [f".staging-step-00000001-{os.getpid()}",  # this pid's own, from before the random token
               f".staging-step-00000001-0a1b2c3d-{dead_pid()}",
               ".staging-step-00000001-0a1b2c3d-99999999999",  # not a pid at all
               ".staging-step-00000001-0a1b2c3d-0"]
    for name in cleared:
        (folder / name).mkdir()
        (folder / name / "checkpoint.pt").write_bytes(b"half")
    (folder / f".staging-link-{os.getpid()}").symlink_to(outside)  # removed, never followed
    alive = [f".staging-step-00000001-0a1b2c3d-{os.getppid()}"]  # a live writer that is not us
    (folder / alive[0]).mkdir()

    store(folder).save(kit_state(1), step=1)
    assert sorted(p.name for p in folder.iterdir()) == sorted([*alive, "step-00000001"])
    assert (outside / "keep.txt").read_text() == "not kit's"


@pytest.mark.parametrize("make", [
    lambda path: (path.mkdir(), (path / "checkpoint.pt").write_bytes(b"half")),
    lambda path: path.write_bytes(b"a file"),
    lambda path: path.symlink_to(path.parent),
], ids=["folder", "file", "symlink"])
def test_a_leftover_of_the_exact_staging_name_is_removed_first(
    make: Callable[[Path], object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kit.checkpoint.secrets, "token_hex", lambda n: "deadbeef")
    make(tmp_path / f".staging-step-00000001-deadbeef-{os.getpid()}")
    saved = store(tmp_path).save(kit_state(1), step=1)
    assert [p.name for p in tmp_path.iterdir()] == [saved.name]
    assert store(tmp_path).latest()[0] == saved  # type: ignore[index]


# -- a folder's name is not trusted: its manifest must agree --------------------------------


def test_a_misnamed_copy_is_never_newest_never_best_and_is_pruned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s = store(tmp_path, keep_last=2, keep_best=1, monitor="val/loss")
    for step, loss in ((4, 0.5), (8, 0.4), (12, 0.3)):
        s.save(kit_state(step), step=step, progress={"global_step": step}, metrics={"val/loss": loss})
    copy = tmp_path / "step-00000099"
    shutil.copytree(tmp_path / "step-00000008", copy)
    edit_manifest(copy, lambda m: m["metrics"].update({"val/loss": 0.01}))  # and claims to be the best
    capsys.readouterr()

    assert s.latest()[0].name == "step-00000012"  # type: ignore[index]
    (line,) = kit_warnings(capsys.readouterr().err)
    assert line == f"kit: warning: skipping checkpoint {copy} is misnamed: its manifest says step 8 " \
                   "(a renamed copy or a forgery; kit orders checkpoints by their step)"
    assert s.best() == tmp_path / "step-00000012"
    s.save(kit_state(16), step=16, progress={"global_step": 16}, metrics={"val/loss": 0.35})
    assert [p.name for p in s.folders()] == ["step-00000012", "step-00000016"]  # the copy (step 8) is gone


def test_a_manifest_whose_global_step_disagrees_is_corrupt(tmp_path: Path) -> None:
    s = store(tmp_path, keep_last=3)
    s.save(kit_state(1), step=1, progress={"global_step": 1})
    bad = s.save(kit_state(2), step=2, progress={"global_step": 2})
    edit_manifest(bad, lambda m: m["progress"].update({"global_step": 7}))
    with pytest.raises(CheckpointError, match="is misnamed: its manifest says global_step 7"):
        s.verify(bad)
    assert s.latest()[0].name == "step-00000001"  # type: ignore[index]


@pytest.mark.parametrize("name", ["step-٩٩٩", "step-00000099\n", "step-" + "9" * 250, "step-00000099-",
                                  "step-00000099-1-2", "step-+99", "step- 99"])
def test_only_ascii_step_names_are_checkpoints(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s = store(tmp_path)
    real = s.save(kit_state(3), step=3)
    shutil.copytree(real, tmp_path / name)
    capsys.readouterr()
    assert s.folders() == [real] and s.list() == [real]
    assert s.latest()[0] == real and s.best() is None  # type: ignore[index]
    s.save(kit_state(4), step=4)  # never pruned either: not kit's naming, not kit's to delete
    assert (tmp_path / name).is_dir() and not kit_warnings(capsys.readouterr().err)


# -- what a verified checkpoint may hold ---------------------------------------------------


def deep_list(state: dict[str, Any], depth: int) -> bytes:
    """``state`` saved by torch, with ``plugins["x"]`` a ``depth``-deep list (a pickler cannot write one)."""
    marker = "DEEP_LIST_HERE"
    buffer = io.BytesIO()
    torch.save({**state, "plugins": {"x": marker}}, buffer)
    old = b"X" + len(marker).to_bytes(4, "little") + marker.encode()
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("data.pkl"):
                assert old in data
                data = data.replace(old, b"]" * depth + b"a" * (depth - 1))
            zout.writestr(info.filename, data)
    return out.getvalue()


def shared(levels: int) -> list[Any]:
    """A list that holds the same list twice, ``levels`` deep: 2**levels values to a naive walker."""
    node: list[Any] = []
    for _ in range(levels):
        node = [node, node]
    return node


def holds_itself() -> list[Any]:
    node: list[Any] = []
    node.append(node)
    return node


PY = rng_state()["python"]
RESUME: dict[str, tuple[Callable[[dict[str, Any]], dict[str, Any]], str]] = {
    "rng_ranks python state 2**64": (
        lambda c: {"rng_ranks": [{**c["rng"], "python": [3, [2**64] * 625, None]}]},
        "rng_ranks[0]['python'] is not a state of Python's random module"),
    "rng_ranks a dict": (lambda c: {"rng_ranks": {0: c["rng"]}}, "'rng_ranks' is not a list"),
    "loop a list": (lambda c: {"loop": [1]}, "'loop' is not a dict"),
    "loop window a list": (lambda c: {"loop": {**c["loop"], "window": [0.5]}},
                           "loop['window'] is not None or a 1-d floating-point tensor"),
    "loop window 0-d": (lambda c: {"loop": {**c["loop"], "window": torch.tensor(0.5)}},
                        "loop['window'] is not None or a 1-d floating-point tensor"),
    "loop iter_sum a float": (lambda c: {"loop": {**c["loop"], "iter_sum": 0.5}},
                              "loop['iter_sum'] is not a 0-d floating-point tensor"),
    "loop iter_sum of 3 values": (lambda c: {"loop": {**c["loop"], "iter_sum": torch.zeros(3)}},
                                  "loop['iter_sum'] is not a 0-d floating-point tensor"),
    "loop iter_count 1.5": (lambda c: {"loop": {**c["loop"], "iter_count": 1.5}},
                            "loop['iter_count'] is not a whole number from 0 to 2**63-1"),
    "loop skipped -1": (lambda c: {"loop": {**c["loop"], "skipped": -1}},
                        "loop['skipped'] is not a whole number from 0 to 2**63-1"),
    "world_size 0": (lambda c: {"progress": {**c["progress"], "world_size": 0}},
                     "progress['world_size'] is not a whole number from 1 to 2**63-1"),
    "world_size a string": (lambda c: {"progress": {**c["progress"], "world_size": "two"}},
                            "progress['world_size'] is not a whole number from 1 to 2**63-1"),
}
"""Forgeries that passed the check once and then crashed the resume (or slipped through it):
each ``(changes to a real checkpoint, the check's reason)``."""


def many_ranks(state: dict[str, Any]) -> dict[str, Any]:
    """75,000 entries sharing one RNG state (a small file), the last one bad: each list is
    checked once, not once per entry."""
    good = rng_state()
    return {**state, "rng_ranks": [{**good} for _ in range(75_000)] + [
        {**good, "python": [3, [2**64] * 625, None]}]}


NOT_KIT: dict[str, tuple[Any, str]] = {
    **{name: (kit_state(2, **change(kit_state(2))), expected) for name, (change, expected) in RESUME.items()},
    "rng_ranks entry a number": (kit_state(2, rng_ranks=[rng_state(), 1]), "rng_ranks[1] is not a dict"),
    "rng_ranks entry cuda a list of floats": (kit_state(2, rng_ranks=[{**rng_state(), "cuda": [1.0]}]),
                                             "rng_ranks[0]['cuda'] is not a list of uint8 tensors"),
    "75,000 rng_ranks sharing one state": (many_ranks(kit_state(2)),
                                           "rng_ranks[75000]['python'] is not a state"),
    "world_size 2**64": (kit_state(2, progress={**kit_state(2)["progress"], "world_size": 2**64}),
                         "progress['world_size'] is not a whole number from 1 to 2**63-1"),
    "epoch 2**64": (kit_state(2, progress={**kit_state(2)["progress"], "epoch": 2**64}),
                    "progress['epoch'] is not a whole number from 0 to 2**63-1"),
    "global_step -1": (kit_state(2, progress={**kit_state(2)["progress"], "global_step": -1}),
                       "progress['global_step'] is not a whole number"),
    "epoch_batches a float": (kit_state(2, progress={**kit_state(2)["progress"], "epoch_batches": 1.0}),
                              "progress['epoch_batches'] is not a whole number"),
    "another progress integer 2**70": (kit_state(2, progress={**kit_state(2)["progress"], "extra": 2**70}),
                                       "progress['extra'] is not a whole number"),
    "phase unknown": (kit_state(2, progress={**kit_state(2)["progress"], "phase": "warmup"}),
                      "progress['phase'] is not 'train', 'end' or 'done'"),
    "best mode unknown": (kit_state(2, progress={**kit_state(2)["progress"], "best": {
        "name": "val/loss", "mode": "up", "value": 1.0, "step": 2}}), "progress['best'] is not None or"),
    "best value a string": (kit_state(2, progress={**kit_state(2)["progress"], "best": {
        "name": "val/loss", "mode": "min", "value": "low", "step": 2}}), "progress['best'] is not None or"),
    "best value 10**400": (kit_state(2, progress={**kit_state(2)["progress"], "best": {
        "name": "val/loss", "mode": "min", "value": 10**400, "step": 2}}), "progress['best'] is not None or"),
    "best a list": (kit_state(2, progress={**kit_state(2)["progress"], "best": [1]}), "progress['best']"),
    "results a list": (kit_state(2, results=[1]), "'results' is not a dict of splits"),
    "results value a string": (kit_state(2, results={"val": {"loss": "x"}}), "'results' is not a dict"),
    "results value 10**400": (kit_state(2, results={"val": {"loss": 10**400}}), "'results' is not a dict"),
    "results split a number": (kit_state(2, results={"val": 1.0}), "'results' is not a dict of splits"),
    "plugins a list": (kit_state(2, plugins=[1]), "'plugins' is not a dict"),
    "backend a list": (kit_state(2, backend=[1]), "'backend' is not a dict"),
    "scheduler a string": (kit_state(2, scheduler="x"), "'scheduler' is not a dict"),
    "optimizer without state": (kit_state(2, optimizer={"param_groups": []}), "'optimizer' is not a dict of"),
    "param_groups not dicts": (kit_state(2, optimizer={"state": {}, "param_groups": [1]}),
                               "'optimizer' is not a dict of 'state' and 'param_groups'"),
    "rng python state 2**64": (kit_state(2, rng={**rng_state(), "python": [3, [2**64] * 625, None]}),
                               "rng['python'] is not a state of Python's random module"),
    "rng python state short": (kit_state(2, rng={**rng_state(), "python": [3, PY[1][:10], None]}),
                               "rng['python'] is not a state"),
    "rng python gauss a string": (kit_state(2, rng={**rng_state(), "python": [3, PY[1], "x"]}),
                                  "rng['python'] is not a state"),
    "rng torch floats": (kit_state(2, rng={**rng_state(), "torch": torch.zeros(5056)}),
                         "rng['torch'] is not a uint8 tensor"),
    "rng torch missing": (kit_state(2, rng={"python": PY}), "rng['torch'] is not a uint8 tensor"),
    "rng cuda not tensors": (kit_state(2, rng={**rng_state(), "cuda": [1]}), "rng['cuda'] is not a list"),
    "rng numpy pos 2**40": (kit_state(2, rng={**rng_state(), "numpy": [
        "MT19937", torch.zeros(624, dtype=torch.int64), 2**40, 0, 0.0]}), "rng['numpy'] is not a numpy"),
    "rng numpy keys floats": (kit_state(2, rng={**rng_state(), "numpy": [
        "MT19937", torch.zeros(624), 0, 0, 0.0]}), "rng['numpy'] is not a numpy random state"),
    "a list that holds itself": (kit_state(2, plugins={"x": holds_itself()}),
                                 "its data holds a container that contains itself"),
    "one list shared 60 levels deep": (kit_state(2, plugins={"x": shared(60)}),
                                       "its data expands to more than 50,000,000 values"),
    "nested 65 levels in all": (kit_state(2, plugins={"x": json.loads("[" * 63 + "]" * 63)}),
                                "its data is nested more than 64 levels deep"),
    "a 100000-deep list": (deep_list, "its data is nested more than 64 levels deep"),
}


@pytest.mark.parametrize("case", NOT_KIT)
def test_a_verified_checkpoint_that_kit_could_not_resume_from_falls_back(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s = store(tmp_path, keep_last=3)
    s.save(kit_state(1), step=1)
    bad = s.save(kit_state(2), step=2)
    content, expected = NOT_KIT[case]
    if callable(content):
        (bad / "checkpoint.pt").write_bytes(content(kit_state(2), 100_000))
    else:
        torch.save(content, bad / "checkpoint.pt")
    reseal(bad)
    capsys.readouterr()
    started = time.perf_counter()
    assert s.latest()[0].name == "step-00000001"  # type: ignore[index]
    assert time.perf_counter() - started < 10
    (line,) = kit_warnings(capsys.readouterr().err)
    assert line.startswith(f"kit: warning: skipping checkpoint {bad} is not a kit checkpoint: {expected}")
    s.save(kit_state(3), step=3)  # and nothing of it reaches a later save


ACCEPTED: dict[str, dict[str, Any]] = {
    "kit's own shape": kit_state(2),
    "NaN results (the mean of no batches)": kit_state(2, results={"val": {"loss": math.nan}}),
    "a NaN best (measured first on a NaN loss)": kit_state(2, progress={**kit_state(2)["progress"], "best": {
        "name": "val/loss", "mode": "min", "value": math.nan, "step": 2}}),
    "no numpy, no cuda": kit_state(2, rng={"python": PY, "torch": rng_state()["torch"]}),
    "a scheduler and a plugin's state": kit_state(2, scheduler={"last_epoch": 3},
                                                  plugins={"ema": {"decay": 0.9}}),
    "two processes, losses not yet logged": kit_state(
        2, progress={**kit_state(2)["progress"], "world_size": 2}, rng_ranks=[rng_state(), rng_state()],
        loop={"window": torch.tensor([0.5, 0.25]), "iter_sum": torch.tensor(1.0, dtype=torch.float64),
              "iter_count": 4}),
    "no loop, no world_size (an older kit)": {
        **{k: v for k, v in kit_state(2).items() if k != "loop"},
        "progress": {k: v for k, v in kit_state(2)["progress"].items() if k != "world_size"}},
    "nested 64 levels in all": kit_state(2, plugins={"x": json.loads("[" * 62 + "]" * 62)}),
}


@pytest.mark.parametrize("case", ACCEPTED)
def test_what_kit_itself_writes_passes(case: str, tmp_path: Path) -> None:
    folder = store(tmp_path).save(ACCEPTED[case], step=2)
    data = store(tmp_path).load(folder, check=check_kit_checkpoint)
    assert data["progress"]["iteration"] == 2


def test_the_check_is_fast_on_a_large_model(tmp_path: Path) -> None:
    model = {f"layer{i}.weight": torch.zeros(1000) for i in range(5000)}
    state = kit_state(1, model=model, optimizer={
        "state": {i: {"exp_avg": torch.zeros(1000), "exp_avg_sq": torch.zeros(1000),
                      "step": torch.tensor(1.0)} for i in range(5000)},
        "param_groups": [{"lr": 0.1, "params": list(range(5000))}]})
    started = time.perf_counter()
    check_kit_checkpoint(state, tmp_path)
    assert time.perf_counter() - started < 1.0


# -- the same forgeries in a real resume -------------------------------------------------------


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", RESUME)
def test_continue_skips_a_forged_checkpoint_and_refuses_a_run_of_only_forged_ones(
    case: str, tmp_path: Path, write_config: Any
) -> None:
    config = str(write_config())
    assert cli("run", config).exit_code == 0
    (run,) = (tmp_path / "runs" / "tiny").iterdir()
    older, newest = sorted((run / "checkpoints").iterdir())
    good = (older / "checkpoint.pt").read_bytes()
    change, expected = RESUME[case]
    for folder in (older, newest):
        checkpoint = torch.load(folder / "checkpoint.pt", weights_only=True)
        torch.save({**checkpoint, **change(checkpoint)}, folder / "checkpoint.pt")
        reseal(folder)
    skipped = [f"kit: warning: skipping checkpoint {folder} is not a kit checkpoint: {expected}"
               for folder in (newest, older)]

    before = snapshot(run)
    refused = cli("run", config, "--mode", "continue", "--set", "training.iterations=3")
    one_error_line(refused, f"run {run} has checkpoints, but none can be resumed from", notices=True)
    assert kit_warnings(refused.stderr) == skipped
    assert snapshot(run) == before  # nothing truncated, pruned or restarted

    (older / "checkpoint.pt").write_bytes(good)
    reseal(older)
    resumed = cli("run", config, "--mode", "continue", "--set", "training.iterations=3")
    assert resumed.exit_code == 0, resumed.stderr
    assert kit_warnings(resumed.stderr) == skipped[:1]
    assert f"kit: continuing {run} from {older.name} (iteration 1" in resumed.stderr


# -- valid(): every usable checkpoint in turn ------------------------------------------------


def test_valid_yields_every_usable_checkpoint_newest_first_one_warning_per_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s = store(tmp_path, keep_last=5)
    for step in (1, 2, 3, 4):
        s.save(kit_state(step), step=step)
    torch.save({"a": 1}, tmp_path / "step-00000004" / "checkpoint.pt")
    reseal(tmp_path / "step-00000004")  # verifies, not kit's
    (tmp_path / "step-00000003" / "checkpoint.pt").write_bytes(b"x" * (tmp_path / "step-00000003" /
                                                                         "checkpoint.pt").stat().st_size)
    capsys.readouterr()
    found: Iterator[tuple[Path, dict[str, Any]]] = s.valid()
    folder, data = next(found)
    assert folder.name == "step-00000002" and data["progress"]["iteration"] == 2
    assert len(kit_warnings(capsys.readouterr().err)) == 2  # step 4, step 3: one line each
    folder, data = next(found)  # the caller found step 2 unusable: the next one
    assert folder.name == "step-00000001" and not capsys.readouterr().err
    assert next(found, None) is None
    assert [p.name for p in s.list()] == ["step-00000001", "step-00000002", "step-00000003", "step-00000004"]
    assert s.latest()[0].name == "step-00000002"  # type: ignore[index]
    assert list(store(tmp_path / "none").valid()) == [] and store(tmp_path / "none").list() == []


# -- torch files that would expand, and torch's own noise ------------------------------------


def deflated(source: Path, target: Path) -> None:
    """``source`` (a torch zip) rewritten with every member deflated, streamed in chunks."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            with zin.open(info) as src, zout.open(info.filename, "w", force_zip64=True) as dst:
                shutil.copyfileobj(src, dst, 8 << 20)


BOMB_LOAD = """
import resource, sys
from pathlib import Path
from kit.checkpoint import CheckpointStore, TorchFormat
from kit.errors import CheckpointError
import torch
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    CheckpointStore(Path(sys.argv[1]).parent, TorchFormat()).load(Path(sys.argv[1]))
except CheckpointError as exc:
    print(exc)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024, "MiB")
"""


def test_a_decompression_bomb_is_refused_before_torch_allocates_it(tmp_path: Path) -> None:
    s = store(tmp_path / "checkpoints")
    folder = s.save({"model": {"w": torch.zeros(1)}}, step=1)
    big = tmp_path / "big.pt"
    torch.save({"model": {"w": torch.zeros(256 << 20, dtype=torch.uint8)}}, big)
    deflated(big, folder / "checkpoint.pt")
    big.unlink()
    reseal(folder)
    assert (folder / "checkpoint.pt").stat().st_size < 2 << 20
    out = subprocess.run([sys.executable, "-c", BOMB_LOAD, str(folder)], capture_output=True, text=True,
                         timeout=120)
    refusal, grown = out.stdout.splitlines()
    assert refusal == f"cannot load checkpoint {folder}/checkpoint.pt: its member big/data.pkl is " \
                      "compressed, which torch.save never writes (a decompression bomb?) " \
                      "(it is corrupt or forged)"
    assert int(grown.split()[0]) < 64, out.stdout  # torch.load would allocate 256 MiB


def test_members_claiming_more_bytes_than_the_file_holds_are_refused(tmp_path: Path) -> None:
    s = store(tmp_path)
    folder = s.save({"model": {"w": torch.zeros(4)}}, step=1)
    raw = bytearray((folder / "checkpoint.pt").read_bytes())
    at = raw.find(b"PK\x01\x02")  # the first central directory entry
    raw[at + 24:at + 28] = (1 << 31).to_bytes(4, "little")  # its uncompressed size: 2 GiB
    (folder / "checkpoint.pt").write_bytes(bytes(raw))
    reseal(folder)
    with pytest.raises(CheckpointError, match=r"its members claim 2,147,\d{3},\d{3} bytes, more than"):
        s.load(folder)


def test_torchs_warnings_stay_out_of_a_refusal(tmp_path: Path) -> None:
    s = store(tmp_path)
    folder = s.save({"model": {"w": torch.zeros(4)}}, step=1)
    (folder / "checkpoint.pt").write_bytes(pickle.dumps({"model": {}}, protocol=4))
    reseal(folder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CheckpointError, match="holds pickled data that is not plain") as info:
            s.load(folder)
    assert caught == [] and "\n" not in str(info.value)


# -- kit's own files, read without hanging or filling memory -----------------------------------


def sparse(path: Path, size: int = 3 << 30) -> None:
    """A file that claims ``size`` bytes and occupies none."""
    with path.open("wb") as fh:
        fh.truncate(size)


@pytest.mark.parametrize("make, expected", [
    (lambda path: os.mkfifo(path), "not a regular file"),
    (sparse, "larger than 16 MiB"),
    (lambda path: path.symlink_to(path.with_name("real.json")), "Too many levels of symbolic links"),
    (lambda path: path.mkdir(), "Is a directory"),
], ids=["fifo", "3 GB sparse", "symlink", "folder"])
def test_read_json_reads_only_a_regular_file_of_a_sane_size(
    make: Callable[[Path], object], expected: str, tmp_path: Path
) -> None:
    (tmp_path / "real.json").write_text("{}")
    path = tmp_path / "summary.json"
    make(path)
    with pytest.raises(OSError, match=expected):
        in_thread(lambda: read_json(path))
    assert read_json(tmp_path / "real.json") == {} and read_regular(tmp_path / "real.json") == b"{}"


def test_a_manifest_is_read_the_same_way(tmp_path: Path) -> None:
    folder = store(tmp_path).save(kit_state(1), step=1)
    sparse(folder / MANIFEST)
    with pytest.raises(CheckpointError, match=f"checkpoint {folder} has an unreadable manifest: larger"):
        in_thread(lambda: read_manifest(folder))
    (folder / MANIFEST).unlink()
    os.mkfifo(folder / MANIFEST)
    with pytest.raises(CheckpointError, match=r"manifest\.json is not a regular file"):
        in_thread(lambda: read_manifest(folder))


# -- folders kit may not read or write (root drops its override of file permissions) ----------


def unprivileged() -> list[str]:
    """A command prefix that runs without bypassing file permissions; skips where none can."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    prefix = [setpriv or "setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all"]
    if setpriv is None or subprocess.run([*prefix, "true"], capture_output=True).returncode != 0:
        pytest.skip("needs setpriv to run without root's override of file permissions")
    return prefix


SAVE_OR_LIST = """
import sys
from pathlib import Path
import torch
from kit.checkpoint import CheckpointStore, TorchFormat
from kit.errors import CheckpointError
s = CheckpointStore(Path(sys.argv[1]), TorchFormat())
try:
    print(len(s.list()) if sys.argv[2] == "list" else s.save({"w": torch.ones(1)}, step=9))
except CheckpointError as exc:
    print(exc)
"""


@pytest.mark.parametrize("mode, action, expected", [
    (0o000, "list", "cannot read the checkpoints in {f}: Permission denied (make the folder readable"),
    (0o555, "save", "cannot write a checkpoint in {f}: Permission denied (make it a writable folder"),
], ids=["unreadable", "read-only"])
def test_a_checkpoints_folder_kit_may_not_use_is_one_clear_error(
    mode: int, action: str, expected: str, tmp_path: Path
) -> None:
    prefix = unprivileged()
    folder = tmp_path / "checkpoints"
    store(folder).save(kit_state(1), step=1)
    folder.chmod(mode)
    try:
        out = subprocess.run([*prefix, sys.executable, "-c", SAVE_OR_LIST, str(folder), action],
                             capture_output=True, text=True, timeout=120)
    finally:
        folder.chmod(0o755)
    assert out.returncode == 0 and out.stdout.startswith(expected.format(f=folder)), out.stderr
    assert [p.name for p in folder.iterdir()] == ["step-00000001"]


def test_continue_on_an_unreadable_checkpoints_folder_is_one_line(tmp_path: Path, write_config: Any) -> None:
    prefix = unprivileged()
    config = write_config()
    env = {**os.environ, "PYTHONPATH": str(TESTS), "COLUMNS": "200"}
    assert subprocess.run([sys.executable, "-m", "kit", "run", str(config)], capture_output=True, env=env,
                          cwd=tmp_path, timeout=120).returncode == 0
    (run,) = (tmp_path / "runs" / "tiny").iterdir()
    (run / "checkpoints").chmod(0)
    try:
        out = subprocess.run([*prefix, sys.executable, "-m", "kit", "run", str(config), "--mode", "continue"],
                             capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    finally:
        (run / "checkpoints").chmod(0o755)
    errors = [line for line in out.stderr.splitlines() if not line.startswith("kit: ")]
    assert out.returncode == 2 and errors == [
        f"Error: cannot read the checkpoints in {run}/checkpoints: Permission denied "
        "(make the folder readable by this user)"], out.stderr
