"""One writer per run directory, across real processes."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import kit
from kit.errors import RunLockedError
from kit.runlock import LOCK_NAME, RunLock, lock_holder

HOLDER = """
import sys, time
from pathlib import Path
from kit.runlock import RunLock
with RunLock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(60)
"""


def hold(run_dir: Path) -> subprocess.Popen[str]:
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    return child


def test_a_second_writer_is_refused_with_the_holder_named(tmp_path: Path) -> None:
    child = hold(tmp_path)
    try:
        with pytest.raises(RunLockedError, match=rf"in use by pid {child.pid} on {socket.gethostname()}"):
            RunLock(tmp_path).acquire()
    finally:
        child.kill()
        child.wait()


def test_a_stale_lock_is_reclaimed_with_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    child = hold(tmp_path)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert lock_holder(tmp_path) == {**lock_holder(tmp_path), "pid": child.pid}  # left behind
    with RunLock(tmp_path):
        assert lock_holder(tmp_path)["pid"] != child.pid  # type: ignore[index]
    assert "reclaimed a stale lock" in capsys.readouterr().err
    assert not (tmp_path / LOCK_NAME).exists()  # released on exit


def test_a_lock_from_another_host_is_never_reclaimed(tmp_path: Path) -> None:
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "x"}))
    with pytest.raises(RunLockedError, match="pid 1 on elsewhere"):
        RunLock(tmp_path).acquire()


def test_continue_on_a_run_another_process_is_writing_is_refused(kit_config: Any) -> None:
    trainer = kit.Trainer(kit_config(), autoload=False)
    trainer.run()
    assert trainer.run_dir is not None and not (trainer.run_dir / LOCK_NAME).exists()
    child = hold(trainer.run_dir)
    try:
        with pytest.raises(RunLockedError, match=f"pid {child.pid}"):
            kit.Trainer(kit_config(training={"iterations": 3}), mode="continue", autoload=False).run()
    finally:
        child.kill()
        child.wait()
    resumed = kit.Trainer(kit_config(training={"iterations": 3}), mode="continue", autoload=False)
    resumed.run()  # the killed holder's lock is stale now
    assert resumed.iteration == 3
