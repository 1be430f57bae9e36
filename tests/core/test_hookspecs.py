"""The contract file documents itself: every hook, every argument, in firing order."""

from __future__ import annotations

import inspect
import itertools
import os
import re
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from recorder import Recorder

import kit
from kit import hookspecs
from kit.errors import RunInterrupted

REQUIRED = {
    "kit_train_begin": ["trainer"], "kit_train_end": ["trainer"],
    "kit_iteration_begin": ["trainer", "iteration"],
    "kit_iteration_end": ["trainer", "iteration", "metrics"],
    "kit_step_begin": ["trainer", "iteration", "batch_idx"],
    "kit_before_backward": ["trainer", "loss"], "kit_after_backward": ["trainer"],
    "kit_before_optimizer_step": ["trainer", "optimizer"],
    "kit_skip_optimizer_step": ["trainer", "optimizer", "loss"],
    "kit_step_end": ["trainer", "iteration", "batch_idx", "loss"],
    "kit_loader_exhausted": ["trainer", "iteration"],
    "kit_val_begin": ["trainer", "iteration"],
    "kit_val_end": ["trainer", "iteration", "val_results"],
    "kit_val_step_begin": ["trainer", "batch_idx"],
    "kit_val_step_end": ["trainer", "batch_idx", "loss", "evaluation"],
    "kit_test_begin": ["trainer"], "kit_test_end": ["trainer", "test_results"],
    "kit_test_step_begin": ["trainer", "batch_idx"],
    "kit_test_step_end": ["trainer", "batch_idx", "loss", "evaluation"],
    "kit_metric_recorded": ["trainer", "record"],
    "kit_checkpoint_save": ["trainer", "checkpoint"],
    "kit_checkpoint_load": ["trainer", "checkpoint"],
    "kit_exception": ["trainer", "error"], "kit_interrupt": ["trainer", "signum"],
}


def test_every_required_hook_exists_with_its_arguments() -> None:
    for name, args in REQUIRED.items():
        assert list(inspect.signature(getattr(hookspecs, name)).parameters) == args, name
    assert set(hookspecs.HOOK_NAMES) == set(REQUIRED)


def test_every_hook_documents_itself_and_each_argument() -> None:
    for name in hookspecs.HOOK_NAMES:
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        summary = doc.splitlines()[0] if doc else ""
        assert summary.endswith("."), f"{name} needs a one-line summary"
        for arg in inspect.signature(getattr(hookspecs, name)).parameters:
            assert f":param {arg}:" in doc, f"{name} does not document {arg}"


# -- the loop sketch in the module docstring, checked against real runs -------------

OUTSIDE_THE_LOOP = {"kit_checkpoint_load", "kit_exception", "kit_interrupt"}
"""Hooks the sketch's notes place (resume, evaluate, error, signal), not its loop."""

HOOK_CALL = re.compile(r"(kit_\w+)\(.*\)")


@dataclass
class Block:
    """A block of the sketch: ``*`` a ``for`` loop, ``?`` an ``if``, ``""`` the whole sketch."""

    repeat: str
    body: list[str | Block] = field(default_factory=list)


def sketch_lines(doc: str) -> list[str]:
    """The loop sketch: the literal block after the docstring's ``::``, up to its first blank line."""
    lines = inspect.cleandoc(doc).splitlines()
    start = next(i for i, line in enumerate(lines) if line.endswith("::")) + 2
    return lines[start:lines.index("", start)]


def parse_sketch(lines: list[str]) -> Block:
    """Hook calls, ``for`` and ``if`` blocks nested by indentation; other lines are prose."""
    root = Block("")
    open_blocks: list[tuple[int, Block]] = [(-1, root)]
    for line in lines:
        code = line.split("#", 1)[0].rstrip()
        text = code.lstrip()
        if not text:
            continue
        indent = len(code) - len(text)
        while indent <= open_blocks[-1][0]:
            open_blocks.pop()
        body = open_blocks[-1][1].body
        if call := HOOK_CALL.fullmatch(text):
            body.append(call[1])
        elif text.endswith(":"):
            block = Block("*" if text.startswith("for ") else "?")
            body.append(block)
            open_blocks.append((indent, block))
        else:
            assert not re.search(r"kit_\w+\(", text), f"a hook call in a prose line: {line!r}"
    return root


def pattern(block: Block) -> str:
    """The sketch as a regular expression over hook names, each followed by a space."""
    inner = "".join(f"{item} " if isinstance(item, str) else pattern(item) for item in block.body)
    return f"(?:{inner}){block.repeat}"


def hooks_in(block: Block) -> set[str]:
    return {name for item in block.body for name in ([item] if isinstance(item, str) else hooks_in(item))}


def moved(block: Block, hook: str, offset: int) -> Block:
    """A copy of the sketch with ``hook`` moved ``offset`` places among its siblings."""
    body = [moved(item, hook, offset) if isinstance(item, Block) else item for item in block.body]
    if hook in body:
        index = body.index(hook)
        assert 0 <= index + offset < len(body), f"{hook} cannot move by {offset}"
        body.insert(index + offset, body.pop(index))
    return Block(block.repeat, body)


def accepts(sketch: Block, fired: list[str]) -> bool:
    return re.fullmatch(pattern(sketch), "".join(f"{name} " for name in fired)) is not None


def compact(fired: list[str]) -> str:
    """``kit_step_begin kit_metric_recorded x4 …``: a recording short enough to read."""
    runs = ((name, len(list(group))) for name, group in itertools.groupby(fired))
    return " ".join(name if n == 1 else f"{name} x{n}" for name, n in runs)


SKETCH = parse_sketch(sketch_lines(hookspecs.__doc__ or ""))


def test_the_sketch_places_every_hook() -> None:
    assert hooks_in(SKETCH) == set(hookspecs.HOOK_NAMES) - OUTSIDE_THE_LOOP
    doc = hookspecs.__doc__ or ""
    for name in OUTSIDE_THE_LOOP:
        assert f"{name}(" in doc, f"{name} missing from the notes after the sketch"


def test_the_parser_reads_nesting_loops_and_conditions() -> None:
    sketch = parse_sketch([
        "kit_train_begin(trainer)",
        "for iteration in range(9):  # a comment: ignored",
        "    kit_iteration_begin(trainer, iteration)",
        "    forward and backward, then kit_step_end fires",
        "    if stopping: break",
        "    if due:",
        "        kit_checkpoint_save(trainer, checkpoint)",
        "    kit_iteration_end(trainer, iteration, metrics)",
        "kit_train_end(trainer)",
    ])
    assert pattern(sketch) == ("(?:kit_train_begin (?:kit_iteration_begin (?:kit_checkpoint_save )?"
                               "kit_iteration_end )*kit_train_end )")


class StopAtThirdStep:
    @kit.hookimpl
    def kit_step_end(self, trainer: kit.Trainer) -> None:
        if trainer.global_step == 3:
            trainer.should_stop = True


@dataclass
class Scenario:
    """A run, what its recording must contain, and sketch edits that recording must reject."""

    training: dict[str, Any]
    checkpoint: dict[str, Any]
    covers: list[str]
    mutations: list[tuple[str, int]]
    plugins: Callable[[], list[object]] = list


# tiny_task: 32 train / 32 val / 32 test samples, batch 8 -> 4 batches each
SCENARIOS = {
    "epoch-based": Scenario(
        # 2 optimizer steps an epoch (batches 2 and 3); step 3 is mid-epoch 2: a save there
        training={"iterations": 3, "grad_accum": 3, "eval_frequency": 2, "save_frequency": 3,
                  "log_every_n_steps": 1},
        checkpoint={"every_n_steps": 3},
        covers=["kit_metric_recorded kit_step_end",  # train records before their step's end
                "kit_step_end kit_checkpoint_save kit_step_begin",  # a mid-epoch save
                "kit_loader_exhausted kit_metric_recorded kit_val_begin",
                "kit_val_end kit_checkpoint_save kit_iteration_end",
                "kit_loader_exhausted kit_metric_recorded kit_iteration_end"],  # no val, no save
        mutations=[("kit_step_end", -1),  # the issue: train records after kit_step_end
                   ("kit_step_end", +1),  # the mid-epoch save before kit_step_end
                   ("kit_step_begin", +1),
                   ("kit_val_end", -1),
                   ("kit_iteration_end", -1),  # kit_iteration_end before the save
                   ("kit_test_end", -1),
                   ("kit_train_end", -1)]),
    "step-based": Scenario(
        # 5 iterations x 2 batches = 10 batches: the loader runs out twice
        training={"type": "step", "iterations": 5, "grad_accum": 2, "eval_frequency": 2,
                  "save_frequency": 10, "log_every_n_steps": 1},
        checkpoint={"every_n_steps": 2},
        covers=["kit_iteration_begin kit_loader_exhausted kit_step_begin",
                "kit_metric_recorded kit_step_end kit_iteration_end",
                "kit_val_end kit_checkpoint_save kit_iteration_end"],
        mutations=[("kit_step_begin", -1),  # kit_loader_exhausted after kit_step_begin
                   ("kit_step_end", -1),
                   ("kit_iteration_begin", +1),
                   ("kit_iteration_end", -1)]),
    "stopped mid-epoch": Scenario(
        training={"iterations": 5, "save_frequency": 5, "log_every_n_steps": 1},
        checkpoint={},
        covers=["kit_step_end kit_metric_recorded kit_val_begin",  # cut short: no loader_exhausted
                "kit_val_end kit_checkpoint_save kit_iteration_end kit_test_begin"],
        mutations=[("kit_iteration_end", -1), ("kit_val_begin", +1)],
        plugins=lambda: [StopAtThirdStep()]),
}


def hook_names(recorder: Recorder) -> list[str]:
    return ["kit_metric_recorded" if e[0] == "metric" else f"kit_{e[0]}" for e in recorder.events]


@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_a_real_run_fires_hooks_in_the_sketchs_order(kit_config: Any, scenario: Scenario) -> None:
    recorder = Recorder()
    config = kit_config(training=scenario.training, checkpoint=scenario.checkpoint)
    kit.Trainer(config, plugins=[*scenario.plugins(), recorder], autoload=False).run()
    fired = hook_names(recorder)
    recording = " ".join(fired)
    for part in scenario.covers:  # the run exercised what it is here to check
        assert part in recording, f"the run never fired {part!r}:\n{compact(fired)}"
    assert accepts(SKETCH, fired), f"hookspecs' sketch rejects this run:\n{compact(fired)}"
    for hook, offset in scenario.mutations:  # the check is not one any order passes
        assert not accepts(moved(SKETCH, hook, offset), fired), f"moving {hook} by {offset} went unnoticed"


class SignalAt:
    """Sends this process SIGUSR1 once, at a training step or a validation batch."""

    def __init__(self, *, step: int | None = None, val_batch: int | None = None) -> None:
        self.step, self.val_batch, self.sent = step, val_batch, False

    def _send(self) -> None:
        if not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGUSR1)

    @kit.hookimpl
    def kit_step_end(self, trainer: kit.Trainer) -> None:
        if trainer.global_step == self.step:
            self._send()

    @kit.hookimpl
    def kit_val_step_end(self, batch_idx: int) -> None:
        if batch_idx == self.val_batch:
            self._send()


@pytest.mark.parametrize("where", ["mid-epoch", "validation"])
def test_a_signal_and_the_resume_follow_the_notes(kit_config: Any, where: str) -> None:
    """The notes under the sketch: a signal saves, fires kit_interrupt and kit_train_end; the
    resume loads first and goes on mid-epoch, or straight at the interrupted validation."""
    config = kit_config(training={"iterations": 2, "log_every_n_steps": 1})
    stopped = Recorder()
    at = SignalAt(step=3) if where == "mid-epoch" else SignalAt(val_batch=1)
    with pytest.raises(RunInterrupted):
        kit.Trainer(config, plugins=[at, stopped], autoload=False).run()
    last_step = "kit_step_end" if where == "mid-epoch" else "kit_val_step_end"
    assert hook_names(stopped)[-4:] == [last_step, "kit_checkpoint_save", "kit_interrupt", "kit_train_end"]

    resumed = Recorder()
    kit.Trainer(config, mode="continue", plugins=[resumed], autoload=False).run()
    fired = hook_names(resumed)
    if where == "mid-epoch":  # iteration 1 begins again and goes on from the batch after step 3
        assert resumed.events[:4] == [("checkpoint_load",), ("train_begin",), ("iteration_begin", 1),
                                      ("step_begin", 1, 3)]
        assert accepts(SKETCH, fired[1:]), compact(fired)
    else:  # iteration 1's validation again, without kit_iteration_begin or steps
        assert fired[:3] == ["kit_checkpoint_load", "kit_train_begin", "kit_val_begin"]
        second = fired.index("kit_iteration_begin")
        assert "kit_step_begin" not in fired[:second]
        assert accepts(SKETCH, ["kit_train_begin", *fired[second:]]), compact(fired)
