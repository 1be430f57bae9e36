"""The console logger in a real terminal: ``kit run`` inside tmux at 80x24, read back with
``capture-pane``. What a user sees after the run, scrollback included, is what is asserted."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")]

TESTS = Path(__file__).resolve().parents[2]
BAR = "━"  # rich's bar glyph; the results table draws its heavy rules with it too
TABLE = "┏┃┡│└"
# What could make rich treat the pane as something else than the 80x24 terminal it is.
UNSET = ("COLUMNS", "LINES", "TTY_INTERACTIVE", "TTY_COMPATIBLE", "FORCE_COLOR", "NO_COLOR")


class Terminal:
    """A private tmux server with one 80x24 session; every byte the program writes is kept."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.socket = str(tmp_path / "tmux")  # a private server, its socket under tmp_path
        self.exit_file = tmp_path / "exit-code"
        self.raw = tmp_path / "raw-output"

    def tmux(self, *args: str) -> str:
        done = subprocess.run(["tmux", "-S", self.socket, *args], capture_output=True, text=True,
                              timeout=30, check=True)
        return done.stdout

    def start(self, *kit_args: str) -> None:
        """``python -m kit ARGS`` in the terminal, started once its output is being recorded."""
        go = self.tmp / "go"
        run = " ".join(shlex.quote(a) for a in (sys.executable, "-m", "kit", *kit_args))
        unset = " ".join(f"-u {name}" for name in UNSET)
        script = (f"trap : INT; while [ ! -e {shlex.quote(str(go))} ]; do sleep 0.05; done; "
                  f"cd {shlex.quote(str(self.tmp))}; "
                  f"env {unset} PYTHONPATH={shlex.quote(str(TESTS))} OMP_NUM_THREADS=1 {run}; "
                  f"echo $? > {shlex.quote(str(self.exit_file))}; sleep 600")
        self.tmux("new-session", "-d", "-s", "kit", "-x", "80", "-y", "24", "sh", "-c", script)
        self.tmux("pipe-pane", "-o", "-t", "kit", f"cat > {shlex.quote(str(self.raw))}")
        go.touch()

    def screen(self) -> str:
        """The whole scrollback and the visible screen, lines the terminal wrapped joined."""
        return self.tmux("capture-pane", "-p", "-J", "-S", "-", "-E", "-", "-t", "kit")

    def wait_for(self, ready: Callable[[], bool], what: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}; the terminal shows:\n{self.screen()}")
            time.sleep(0.1)

    def exit_code(self) -> int:
        self.wait_for(lambda: self.exit_file.exists() and self.exit_file.read_text().strip() != "",
                      "kit to exit")
        return int(self.exit_file.read_text())

    def close(self) -> None:
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True, timeout=30)


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Terminal]:
    term = Terminal(tmp_path)
    try:
        yield term
    finally:
        term.close()


def leftovers(screen: str) -> list[str]:
    """Lines that are, or are part of, a progress bar."""
    return [line for line in screen.splitlines()
            if (BAR in line and not any(c in line for c in TABLE)) or "it/s" in line
            or re.match(r"\s*(ep \d+|train|val|test) ", line)]


def test_epoch_lines_survive_scrolling_and_no_bar_is_left(
        terminal: Terminal, write_config: Callable[..., Path]) -> None:
    epochs = 40  # about 50 lines of output: the 24-line terminal scrolls
    config = write_config(training={"iterations": epochs, "device": "cpu", "log_every_n_steps": 2},
                          loggers=[{"console": {"refresh_per_second": 1000}}])  # a redraw a step
    terminal.start("run", str(config))
    assert terminal.exit_code() == 0, terminal.screen()
    screen = terminal.screen()
    lines = screen.splitlines()

    assert BAR in terminal.raw.read_text(errors="replace"), "no bar was ever drawn"
    assert leftovers(screen) == [], screen
    epoch_lines = [i for i, line in enumerate(lines) if re.match(r"epoch \d+/", line)]
    numbers = [int(lines[i].split()[1].split("/")[0]) for i in epoch_lines]
    assert numbers == list(range(1, epochs + 1)), screen  # each once, in order
    assert epoch_lines == list(range(epoch_lines[0], epoch_lines[0] + epochs)), screen  # adjacent
    assert lines[0].startswith("kit ") and "experiment tiny" in lines[0], screen
    assert lines[1].startswith(f"run directory: {config.parent}"), screen  # one line, joined
    last = epoch_lines[-1]
    assert "results (finished)" in lines[last + 1], screen  # the table follows directly
    finished = [i for i, line in enumerate(lines) if line.startswith("run finished in ")]
    assert len(finished) == 1 and finished[0] > last + 1, screen
    assert lines[finished[0]].endswith(lines[1].removeprefix("run directory: ")), screen
    assert all(not line.strip() for line in lines[finished[0] + 1:]), screen  # nothing after it


def test_ctrl_c_leaves_no_bar_behind(terminal: Terminal, write_config: Callable[..., Any]) -> None:
    config = write_config(training={"type": "step", "iterations": 1_000_000, "eval_frequency": 100_000,
                                    "device": "cpu", "log_every_n_steps": 2},
                          loggers=["console"])
    terminal.start("run", str(config))
    terminal.wait_for(lambda: any(line.startswith("train ") and BAR in line
                                  for line in terminal.screen().splitlines()), "the training bar")
    terminal.tmux("send-keys", "-t", "kit", "C-c")  # the terminal echoes ^C at the bar's end
    assert terminal.exit_code() == 128 + 2, terminal.screen()
    screen = terminal.screen()
    assert leftovers(screen) == [], screen
    assert "^C" not in screen, screen
    assert any(line.startswith("run interrupted in /") for line in screen.splitlines()), screen
