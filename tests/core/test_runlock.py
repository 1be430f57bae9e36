"""One writer per run directory, across real processes, crashes and full disks."""

from __future__ import annotations

import errno
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import kit
from kit import runlock
from kit.errors import RunLockedError
from kit.runlock import LOCK_NAME, RunLock, lock_held, lock_holder

HOLDER = """
import sys, time
from pathlib import Path
from kit.runlock import RunLock
with RunLock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(60)
"""

RACER = """
import os, random, sys, time
from pathlib import Path
from kit import runlock
from kit.errors import RunLockedError

run_dir, log, attempts = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
rng = random.Random(os.getpid())
runlock._pause = lambda step: time.sleep(rng.uniform(0, 0.008))  # stretch every step

def note(event):
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, f"{event} {os.getpid()} {time.monotonic_ns()}\\n".encode())
    os.close(fd)

print("ready", flush=True)
sys.stdin.readline()  # start together
for _ in range(attempts):
    try:
        with runlock.RunLock(run_dir):
            note("enter")
            time.sleep(rng.uniform(0, 0.01))
            note("exit")
    except RunLockedError:
        note("refused")
    time.sleep(rng.uniform(0, 0.02))
"""

PROBER = """
import sys, time
from pathlib import Path
from kit import runlock
runlock._pause = lambda step: time.sleep(0.1)  # hold the shared probe for 100 ms
print("ready", flush=True)
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    runlock.lock_held(Path(sys.argv[1]))
    time.sleep(0.2)
"""


def hold(run_dir: Path) -> subprocess.Popen[str]:
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    return child


def killed_holder(run_dir: Path) -> int:
    """Leave the lock of a holder killed with SIGKILL behind; return its pid."""
    child = hold(run_dir)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.stdout is not None
    child.stdout.close()
    return child.pid


def test_a_second_writer_is_refused_with_the_holder_named(tmp_path: Path) -> None:
    child = hold(tmp_path)
    try:
        assert lock_held(tmp_path) is True
        named = rf"in use by pid {child.pid} on {socket.gethostname()}"
        with pytest.raises(RunLockedError, match=named) as err:
            RunLock(tmp_path).acquire()
        assert err.value.hint is not None and "wait for that run to end" in err.value.hint
        assert lock_holder(tmp_path)["pid"] == child.pid  # type: ignore[index]  # left alone
    finally:
        child.kill()
        child.wait()


def test_a_sigkilled_holder_releases_and_the_next_run_takes_over_with_a_warning(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pid = killed_holder(tmp_path)
    assert lock_holder(tmp_path)["pid"] == pid  # type: ignore[index]  # the file is left behind
    assert lock_held(tmp_path) is False  # but the kernel dropped the lock with the process
    with RunLock(tmp_path):
        assert lock_holder(tmp_path)["pid"] == os.getpid()  # type: ignore[index]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"kit: warning: reclaimed a stale lock on {tmp_path} (pid {pid}" in err
    assert not (tmp_path / LOCK_NAME).exists()  # released on exit
    assert lock_held(tmp_path) is None


@pytest.mark.parametrize("content", [b"", b'{"pid": 12', b"\xff\xfe garbage", b"[1, 2]", b'"text"'],
                         ids=["empty", "truncated", "not-utf8", "a-list", "a-string"])
def test_an_unheld_lock_that_names_no_process_is_taken_over_silently(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes) -> None:
    (tmp_path / LOCK_NAME).write_bytes(content)
    assert lock_holder(tmp_path) == {}
    assert lock_held(tmp_path) is False
    with RunLock(tmp_path):
        assert lock_holder(tmp_path)["host"] == socket.gethostname()  # type: ignore[index]
    assert capsys.readouterr().err == ""
    assert lock_held(tmp_path) is None


def test_a_lock_from_another_host_is_refused_with_what_to_do(tmp_path: Path) -> None:
    record = {"pid": 1, "host": "elsewhere", "started": "x"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(record))
    assert lock_held(tmp_path) is True  # this machine cannot check it
    refused = "written by pid 1 on host elsewhere, which this machine cannot check"
    with pytest.raises(RunLockedError, match=refused) as err:
        RunLock(tmp_path).acquire()
    assert err.value.hint == f"if that run has ended, delete {tmp_path / LOCK_NAME}"
    assert lock_holder(tmp_path) == record  # never overwritten nor removed
    (tmp_path / LOCK_NAME).unlink()  # what the hint says
    with RunLock(tmp_path):
        pass


def test_lock_held_creates_nothing(tmp_path: Path) -> None:
    assert lock_held(tmp_path) is None
    assert lock_holder(tmp_path) is None
    assert list(tmp_path.iterdir()) == []


STRANGE = """
import sys
from pathlib import Path
from kit.errors import RunLockedError
from kit.runlock import RunLock, lock_held, lock_holder
run = Path(sys.argv[1])
print(lock_holder(run))
for attempt in (lambda: lock_held(run), RunLock(run).acquire):
    try:
        print(attempt())
    except OSError:
        print("OSError")
    except RunLockedError as exc:
        print(exc)
"""


@pytest.mark.parametrize(("kind", "held"), [("fifo", "False"), ("folder", "OSError")])
def test_a_fifo_or_folder_named_run_lock_fails_and_never_hangs(tmp_path: Path, kind: str, held: str) -> None:
    if kind == "fifo":
        os.mkfifo(tmp_path / LOCK_NAME)
    else:
        (tmp_path / LOCK_NAME).mkdir()
    done = subprocess.run([sys.executable, "-c", STRANGE, str(tmp_path)], capture_output=True, text=True,
                          timeout=30)  # a hang fails here instead of stalling the suite
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split("\n")
    assert lines[:2] == ["{}", held]
    assert lines[2].startswith(f"cannot use {tmp_path / LOCK_NAME} as a lock: ")  # one clear refusal
    assert lines[2].endswith("(it is not a plain file: remove it if no run is using it)")


def enospc(*_: Any) -> int:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def short_write_then_enospc() -> Callable[[int, bytes], int]:
    """An ``os.write`` that writes half of the first chunk, then finds the disk full."""
    real_write, calls = os.write, []

    def write(fd: int, data: bytes) -> int:
        calls.append(fd)
        return real_write(fd, data[: len(data) // 2]) if len(calls) == 1 else enospc()

    return write


FAULTS: dict[str, tuple[str, Callable[[], Callable[..., int]]]] = {
    "write-fails": ("write", lambda: enospc),
    "short-write-then-fails": ("write", short_write_then_enospc),
    "fsync-fails": ("fsync", lambda: enospc),
}


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("before", ["none", "stale"])
def test_a_failed_write_while_locking_leaves_nothing_that_blocks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str, before: str) -> None:
    if before == "stale":
        killed_holder(tmp_path)
    name, make = FAULTS[fault]
    with monkeypatch.context() as patch:
        patch.setattr(os, name, make())
        with pytest.raises(OSError) as err:
            RunLock(tmp_path).acquire()
    assert err.value.errno == errno.ENOSPC  # the original error, for the CLI to word
    assert lock_held(tmp_path) is None  # no file left: nothing for `kit runs list` to misreport
    with RunLock(tmp_path):
        assert lock_held(tmp_path) is True


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 64 KiB tmpfs under tmp_path; skipped where mounting is not permitted."""
    mount = tmp_path / "fs"
    mount.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "kit-test", str(mount)],
                              capture_output=True, text=True)
    except OSError as error:
        pytest.skip(f"cannot run mount: {error}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_while_locking_leaves_nothing_that_blocks(small_fs: Path) -> None:
    filler = small_fs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        with pytest.raises(OSError) as full:
            while True:
                os.write(fd, b"x" * 4096)
    finally:
        os.close(fd)
    assert full.value.errno == errno.ENOSPC
    with pytest.raises(OSError) as err:
        RunLock(small_fs).acquire()
    assert err.value.errno == errno.ENOSPC
    assert sorted(p.name for p in small_fs.iterdir()) == ["filler"]
    filler.unlink()  # space again: the next run is not blocked
    with RunLock(small_fs):
        assert lock_held(small_fs) is True


def race(run_dir: Path, log: Path, *, racers: int = 8, attempts: int = 2) -> list[str]:
    """Start ``racers`` processes at once, each trying ``attempts`` times; return their stderr."""
    pipe = subprocess.PIPE
    children = [subprocess.Popen([sys.executable, "-c", RACER, str(run_dir), str(log), str(attempts)],
                                 stdin=pipe, stdout=pipe, stderr=pipe, text=True) for _ in range(racers)]
    for child in children:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.close()
    errors = []
    for child in children:
        assert child.stderr is not None
        errors.append(child.stderr.read())  # a few lines at most: the pipe never fills
        assert child.wait(timeout=60) == 0, errors[-1]
        child.stderr.close()
    return errors


def check_log(log: Path, *, racers: int, attempts: int) -> int:
    """Assert holds never overlap and every attempt ended held or refused; return the holds."""
    holder: str | None = None
    outcomes: dict[str, int] = {}
    intervals: list[tuple[int, int]] = []
    entered = 0
    for line in log.read_text().splitlines():
        event, pid, stamp = line.split()
        if event == "enter":
            assert holder is None, f"pid {pid} entered while pid {holder} held the lock"
            holder, entered = pid, int(stamp)
        elif event == "exit":
            assert holder == pid
            holder = None
            intervals.append((entered, int(stamp)))
        if event != "enter":
            outcomes[pid] = outcomes.get(pid, 0) + 1
    assert holder is None
    assert len(outcomes) == racers and set(outcomes.values()) == {attempts}
    assert all(end <= start for (_, end), (start, _) in itertools.pairwise(intervals))
    return len(intervals)


@pytest.mark.parametrize("before", ["clean", "sigkilled-holder", "empty-file"])
def test_racing_processes_never_hold_the_lock_together(tmp_path: Path, before: str) -> None:
    run_dir, log = tmp_path / "run", tmp_path / "log"
    run_dir.mkdir()
    stale = killed_holder(run_dir) if before == "sigkilled-holder" else None
    if before == "empty-file":
        (run_dir / LOCK_NAME).touch()
    errors = race(run_dir, log)
    assert check_log(log, racers=8, attempts=2) >= 1
    warned = [f"kit: warning: reclaimed a stale lock on {run_dir} (pid {stale} on "
              f"{socket.gethostname()} no longer holds it; it crashed or was killed)"]
    assert "".join(errors).splitlines() == (warned if stale else [])  # one warning, from the first holder
    assert lock_held(run_dir) is None  # the last holder cleaned up


def test_a_shared_probe_by_runs_list_never_fails_a_starting_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tries: list[str] = []

    def slow_open(step: str) -> None:  # leave the new file unlocked long enough to be probed
        if step == "flock":
            tries.append(step)
            time.sleep(0.05)

    monkeypatch.setattr(runlock, "_pause", slow_open)
    prober = subprocess.Popen([sys.executable, "-c", PROBER, str(tmp_path), "1.5"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert prober.stdout is not None and prober.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 1.2
        runs = 0
        while time.monotonic() < deadline:
            with RunLock(tmp_path):  # never refused
                runs += 1
                time.sleep(0.01)
    finally:
        prober.kill()
        prober.wait()
        assert prober.stdout is not None
        prober.stdout.close()
    assert len(tries) > runs > 0  # the probe did get in the way, and was waited out


def test_without_fcntl_an_exclusive_file_is_used_and_never_reclaimed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runlock, "fcntl", None)
    with RunLock(tmp_path):
        assert lock_held(tmp_path) is True
        with pytest.raises(RunLockedError, match=f"in use by pid {os.getpid()}") as err:
            RunLock(tmp_path).acquire()
        assert err.value.hint == f"if no run is using it, delete {tmp_path / LOCK_NAME}"
    assert lock_held(tmp_path) is None
    with monkeypatch.context() as patch:
        patch.setattr(os, "write", enospc)
        with pytest.raises(OSError, match="No space left"):
            RunLock(tmp_path).acquire()
    assert lock_held(tmp_path) is None  # a failed write leaves nothing here either


@pytest.mark.slow
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

