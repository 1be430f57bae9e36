"""One writer per run directory, across real processes, crashes and full disks."""

from __future__ import annotations

import errno
import itertools
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from clitools import kit as kit_cli
from clitools import one_error_line

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


def strange(run_dir: Path, *prefix: str) -> list[str]:
    """What STRANGE prints in a real process (run under ``prefix``, a command such as setpriv)."""
    done = subprocess.run([*prefix, sys.executable, "-c", STRANGE, str(run_dir)], capture_output=True,
                          text=True, timeout=30)  # a hang fails here instead of stalling the suite
    assert done.returncode == 0, done.stderr
    return done.stdout.split("\n")


@pytest.mark.parametrize(("kind", "held"), [("fifo", "False"), ("folder", "OSError")])
def test_a_fifo_or_folder_named_run_lock_fails_and_never_hangs(tmp_path: Path, kind: str, held: str) -> None:
    if kind == "fifo":
        os.mkfifo(tmp_path / LOCK_NAME)
    else:
        (tmp_path / LOCK_NAME).mkdir()
    lines = strange(tmp_path)
    assert lines[:2] == ["{}", held]
    assert lines[2].startswith(f"cannot use {tmp_path / LOCK_NAME} as a lock: ")  # one clear refusal
    assert lines[2].endswith("(it is not a plain file: remove it if no run is using it)")


VICTIM = json.dumps({"pid": 1, "host": "elsewhere", "started": "x"}).encode()
"""Someone's file: were it read, the lock would name pid 1 on host elsewhere."""


def plant_target(tmp_path: Path, target: str) -> Path:
    """What a planted ``run.lock`` link points to."""
    if target == "dev-zero":
        return Path("/dev/zero")
    victim = tmp_path / "victim"
    if target == "fifo":
        os.mkfifo(victim)
    elif target == "file":
        victim.write_bytes(VICTIM)
    return victim


@pytest.mark.parametrize("target", ["file", "dangling", "fifo", "dev-zero"])
def test_a_planted_symbolic_link_is_refused_and_never_followed(tmp_path: Path, target: str) -> None:
    run_dir, victim = tmp_path / "run", plant_target(tmp_path, target)
    run_dir.mkdir()
    (run_dir / LOCK_NAME).symlink_to(victim)
    lines = strange(run_dir)  # under a timeout: a reader led into the FIFO or /dev/zero must not hang
    lock = run_dir / LOCK_NAME
    assert lines == ["{}", "OSError",  # neither reader follows it
                     f"cannot use {lock} as a lock: it is a symbolic link "
                     "(remove the link; kit never writes through one)", ""]
    assert lock.is_symlink() and os.readlink(lock) == str(victim)
    if target == "file":
        assert victim.read_bytes() == VICTIM  # byte for byte
    elif target == "dangling":
        assert not victim.exists() and not victim.is_symlink()  # not created either
    elif target == "fifo":
        assert stat.S_ISFIFO(victim.lstat().st_mode)
    lock.unlink()  # what the hint says
    with RunLock(run_dir):
        assert lock_holder(run_dir)["pid"] == os.getpid()  # type: ignore[index]


@pytest.mark.parametrize("content", [VICTIM, b"precious\n"], ids=["json-record", "text"])
def test_a_planted_hard_link_is_refused_before_anything_is_written(tmp_path: Path, content: bytes) -> None:
    run_dir, victim = tmp_path / "run", tmp_path / "victim"
    run_dir.mkdir()
    victim.write_bytes(content)
    lock = run_dir / LOCK_NAME
    os.link(victim, lock)
    assert strange(run_dir) == ["{}", "OSError",  # never read: the record in it is not reported
                                f"cannot use {lock} as a lock: it is a hard link (2 names for one file) "
                                "(remove it, which leaves the linked file alone; kit never writes to a "
                                "linked file)", ""]
    assert victim.read_bytes() == content and victim.stat().st_nlink == 2
    lock.unlink()  # what the hint says
    with RunLock(run_dir):
        pass
    assert victim.read_bytes() == content


NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
          "--inh-caps=-all,+dac_read_search", "--ambient-caps=+dac_read_search"]
"""Run as nobody, able to read any folder (pytest's tmp_path is root's own) but write to none."""


@pytest.mark.parametrize("before", ["no-lock", "a-lock-of-root"])
def test_a_run_directory_kit_cannot_write_to_gets_the_permissions_hint(tmp_path: Path, before: str) -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run a process that cannot write here")
    usable = subprocess.run([*NOBODY, sys.executable, "-c", "import kit.runlock"],
                            capture_output=True, text=True)
    if usable.returncode != 0:
        pytest.skip(f"cannot run kit as nobody: {usable.stderr.strip()[-200:]}")
    if before == "a-lock-of-root":
        (tmp_path / LOCK_NAME).touch()  # root's 0644 file, readable by nobody
    lock = tmp_path / LOCK_NAME
    expected = "{}" if before == "a-lock-of-root" else "None"
    assert strange(tmp_path, *NOBODY) == [
        expected, "False" if before == "a-lock-of-root" else "None",
        f"cannot use {lock} as a lock: Permission denied (check that you can write to the run directory)", ""]
    assert sorted(p.name for p in tmp_path.iterdir()) == ([LOCK_NAME] if before == "a-lock-of-root" else [])


def test_a_foreign_host_with_a_newline_is_refused_on_one_line(tmp_path: Path) -> None:
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 7, "host": "evil\nError: forged\u2028x"}))
    with pytest.raises(RunLockedError) as err:
        RunLock(tmp_path).acquire()
    assert err.value.message == (f"{tmp_path / LOCK_NAME} was written by pid 7 on host "
                                 "evil\\nError: forged\\u2028x, which this machine cannot check")
    assert str(err.value).isprintable()


def test_what_a_busy_lock_says_is_shown_on_one_short_line(tmp_path: Path) -> None:
    child = hold(tmp_path)
    try:
        forged = {"pid": "1\n" + "9" * 500, "host": "h\x1b[2Jost", "started": ["x\ny"] * 100}
        with open(tmp_path / LOCK_NAME, "r+b") as lock:  # the held file itself, rewritten in place
            lock.truncate()
            lock.write(json.dumps(forged).encode())
        with pytest.raises(RunLockedError, match="is in use by") as err:
            RunLock(tmp_path).acquire()
    finally:
        child.kill()
        child.wait()
    said = str(err.value)
    assert said.isprintable() and len(said) < len(str(tmp_path)) + 300
    assert r"pid 1\n9999" in said and r"on h\x1b[2Jost since [" in said and said.count("...") == 2


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


@pytest.mark.parametrize("link", ["symbolic", "hard"])
def test_kit_run_continue_never_writes_through_a_planted_link(
        write_config: Any, tmp_path: Path, link: str) -> None:
    path = str(write_config())
    assert kit_cli("run", path).exit_code == 0
    (run_dir,) = (tmp_path / "runs" / "tiny").iterdir()
    victim, lock = tmp_path / "victim", run_dir / LOCK_NAME
    victim.write_bytes(b"precious\n")
    if link == "symbolic":
        lock.symlink_to(victim)
    else:
        os.link(victim, lock)
    done = kit_cli("run", path, "--mode", "continue", "--run-dir", str(run_dir))
    one_error_line(done, str(lock))
    assert "link" in done.stderr
    assert victim.read_bytes() == b"precious\n"

