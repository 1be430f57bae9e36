from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from kit.checkpoint import MANIFEST, TRUST_DOCS, CheckpointStore, Retention, TorchFormat, read_manifest
from kit.errors import CheckpointError
from kit.rundir import create_run_dir


def store(folder: Path, **retention: Any) -> CheckpointStore:
    return CheckpointStore(folder, TorchFormat(), retention=Retention(**retention))


def test_a_commit_is_a_folder_with_a_manifest_of_sizes_and_hashes(tmp_path: Path) -> None:
    s = store(tmp_path)
    path = s.save({"w": torch.ones(3)}, step=7, progress={"iteration": 1}, metrics={"val/loss": 0.5})
    assert path.name == "step-00000007"
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["format"] == "torch" and manifest["progress"] == {"iteration": 1}
    entry = manifest["files"]["checkpoint.pt"]
    assert entry["size"] == (path / "checkpoint.pt").stat().st_size and len(entry["sha256"]) == 64
    assert s.verify(path) == manifest
    assert torch.equal(s.load(path)["w"], torch.ones(3))
    # a second save at the same step (an iteration's end after a step-based save) never overwrites
    assert s.save({"w": torch.zeros(3)}, step=7).name == "step-00000007-1"
    assert [p.name for p in s.list()] == ["step-00000007", "step-00000007-1"]


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.save({"v": torch.tensor(1)}, step=1)

    class DiskFull(TorchFormat):
        def save(self, checkpoint: dict[str, Any], folder: Path) -> None:
            (folder / self.filename).write_bytes(b"partial")
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        CheckpointStore(tmp_path, DiskFull()).save({"v": torch.tensor(2)}, step=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000001"]  # staging cleaned up
    folder, data = s.latest(check=None)  # type: ignore[misc]
    assert folder.name == "step-00000001" and data["v"].item() == 1


KILLED_WRITER = """
import sys, time
from pathlib import Path
from kit.checkpoint import CheckpointStore, TorchFormat

class Slow(TorchFormat):
    def save(self, checkpoint, folder):
        with (folder / self.filename).open("wb") as fh:
            fh.write(b"half a checkpoint")
            fh.flush()
            print("writing", flush=True)
            time.sleep(60)

CheckpointStore(Path(sys.argv[1]), Slow()).save({"v": 2}, step=2)
"""


def test_sigkill_during_a_write_leaves_the_previous_checkpoint_loadable(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.save({"v": torch.tensor(1)}, step=1)
    child = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path)],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "writing"
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert any(p.name.startswith(".staging-") for p in tmp_path.iterdir())
    folder, data = s.latest(check=None)  # type: ignore[misc]
    assert folder.name == "step-00000001" and data["v"].item() == 1
    s.save({"v": torch.tensor(3)}, step=3)  # the dead writer's leftovers are swept
    assert not any(p.name.startswith(".staging-") for p in tmp_path.iterdir())


@pytest.mark.parametrize("damage", ["truncate", "bitflip", "no-manifest"])
def test_a_damaged_newest_checkpoint_is_reported_and_skipped(
    tmp_path: Path, damage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    s = store(tmp_path, keep_last=3)
    s.save({"v": torch.arange(1000)}, step=1)
    newest = s.save({"v": torch.arange(1000) * 2}, step=2)
    data_file = newest / "checkpoint.pt"
    raw = bytearray(data_file.read_bytes())
    if damage == "truncate":
        data_file.write_bytes(raw[: len(raw) // 2])
    elif damage == "bitflip":
        raw[len(raw) // 2] ^= 0x01
        data_file.write_bytes(raw)
    else:
        (newest / MANIFEST).unlink()
    folder, data = s.latest(check=None)  # type: ignore[misc]
    assert folder.name == "step-00000001" and torch.equal(data["v"], torch.arange(1000))
    expected = {"truncate": "truncated", "bitflip": "sha256", "no-manifest": "no manifest"}[damage]
    assert expected in capsys.readouterr().err
    with pytest.raises(CheckpointError, match=expected):
        s.load(newest)


def test_retention_keeps_the_newest_and_the_best(tmp_path: Path) -> None:
    s = store(tmp_path, keep_last=2, keep_best=1, monitor="val/loss", mode="min")
    for step, loss in [(1, 0.9), (2, 0.2), (3, 0.5), (4, 0.7), (5, 0.6)]:
        s.save({"step": step}, step=step, metrics={"val/loss": loss})
    assert [p.name for p in s.list()] == ["step-00000002", "step-00000004", "step-00000005"]
    best = s.best()
    assert best is not None and best.name == "step-00000002"
    assert read_manifest(best)["monitor"] == {"name": "val/loss", "mode": "min"}


class _RunsCode:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("touch pwned",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    class Evil(TorchFormat):  # a checkpoint that verifies (its manifest is honest) but is malicious
        def save(self, checkpoint: dict[str, Any], folder: Path) -> None:
            with (folder / self.filename).open("wb") as fh:
                pickle.dump({"model": _RunsCode()}, fh, protocol=2)

    path = CheckpointStore(tmp_path / "ckpt", Evil()).save({}, step=1)
    with pytest.raises(CheckpointError) as info:
        store(tmp_path / "ckpt").load(path)
    assert not (tmp_path / "pwned").exists()
    message = str(info.value)
    assert "holds pickled objects that are not plain data (posix.system), which may be unsafe" in message
    assert f"if you TRUST its source, convert it to plain data as {TRUST_DOCS} shows" in message
    assert "weights_only" not in message and "\n" not in message  # never torch's advice to turn it off


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        store(tmp_path).load(tmp_path / "step-00000001")


def test_run_directories_are_never_shared(tmp_path: Path) -> None:
    made = {create_run_dir(tmp_path, "exp") for _ in range(3)}
    assert len(made) == 3 and all(p.parent == tmp_path / "exp" for p in made)
