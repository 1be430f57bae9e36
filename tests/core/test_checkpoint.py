from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

from kit.checkpoint import CheckpointStore, TorchFormat
from kit.errors import CheckpointError
from kit.rundir import atomic_write, create_run_dir


def test_failed_write_leaves_the_previous_file_intact(tmp_path: Path) -> None:
    target = tmp_path / "state.pt"
    fmt = TorchFormat()
    atomic_write(target, lambda tmp: fmt.save({"v": torch.tensor(1)}, tmp))

    def dies_midway(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, dies_midway)
    assert fmt.load(target)["v"].item() == 1
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]  # temp file cleaned up


def test_retention_keeps_the_newest(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "ckpt", TorchFormat(), keep_last=2)
    for it in (1, 2, 10, 11):
        store.save({"it": it}, it)
    assert [p.name for p in store.list()] == ["iter-000010.pt", "iter-000011.pt"]
    assert store.load(store.list()[-1])["it"] == 11
    with pytest.raises(CheckpointError, match="not found"):
        store.load(tmp_path / "ckpt" / "iter-000001.pt")


class _RunsCode:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("touch pwned",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    with path.open("wb") as fh:
        pickle.dump({"model": _RunsCode()}, fh)
    with pytest.raises(CheckpointError, match="cannot load checkpoint"):
        TorchFormat().load(path)
    assert not (tmp_path / "pwned").exists()


def test_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "iter-000001.pt"
    path.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match=r"iter-000001\.pt"):
        TorchFormat().load(path)


def test_run_directories_are_never_shared(tmp_path: Path) -> None:
    made = {create_run_dir(tmp_path, "exp") for _ in range(3)}
    assert len(made) == 3 and all(p.parent == tmp_path / "exp" for p in made)
