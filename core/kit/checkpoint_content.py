"""What a kit checkpoint holds, checked before any of it is used.

A checkpoint can verify against its manifest and still not be kit's (a forged one,
another program's): resuming from it must fall back like from a corrupt one, not fail
halfway through restoring, or crash later on a value torch cannot take. Whether it fits
*this* model is the trainer's check.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict, cast

from kit.errors import CheckpointError
from kit.manifest import nesting_problem, show_name
from kit.runstate import Progress

__all__ = ["BackendSection", "Checkpoint", "KitHeader", "check_kit_checkpoint"]


class KitHeader(TypedDict):
    version: str
    format: int


class BackendSection(TypedDict):
    name: str
    state: dict[str, Any]


class _Checked(TypedDict):
    progress: Progress
    model: dict[str, Any]
    optimizer: dict[str, Any]
    rng: dict[str, Any]


class Checkpoint(_Checked, total=False):
    """The checkpoint dict, format 3: what :meth:`kit.Trainer.state_dict` builds (``rng_ranks``
    only with several processes).

    The keys are kit's, but ``kit_checkpoint_save`` lets plugins add entries (under
    ``plugins``, by the hook's contract), so the dict stays open where kit hands it on:
    hooks, formats (:class:`~kit.interfaces.CheckpointFormat`) and the store take it as a
    plain ``dict[str, Any]``, and a format needs no kit type. A loaded checkpoint that
    passed :func:`check_kit_checkpoint` has the four required keys in these types;
    ``scheduler``, ``backend``, ``plugins`` and ``results`` are dicts (or None) when present,
    and ``loop``, ``rng_ranks`` and ``progress['world_size']`` hold exactly what the trainer
    restores from them; everything else in it is as kit wrote it, unchecked.
    """

    kit: KitHeader
    scheduler: dict[str, Any] | None
    backend: BackendSection | None
    loop: dict[str, Any] | None
    config: dict[str, Any]
    results: dict[str, dict[str, float]]
    plugins: dict[str, Any]
    rng_ranks: list[dict[str, Any]] | None


_INT64 = 2**63 - 1
_COUNTS = ("iteration", "global_step", "epoch", "epoch_batches")


def _int(value: Any, low: int = 0, high: int = _INT64) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _real(value: Any) -> bool:
    """A float (NaN too: kit records the mean of no batches as NaN) or an int that converts to one."""
    return isinstance(value, float) or _int(value, -_INT64 - 1)


def _word(value: Any, *options: str) -> bool:
    return isinstance(value, str) and value in options


def _progress_problem(progress: Any) -> str | None:
    if not isinstance(progress, dict):
        return "it has no 'progress'"
    for key in _COUNTS[:3]:
        if key not in progress:
            return f"progress[{key!r}] is missing"
    if "world_size" in progress and not _int(progress["world_size"], 1):
        return "progress['world_size'] is not a whole number from 1 to 2**63-1"
    for key, value in progress.items():
        if (key in _COUNTS or (isinstance(value, int) and not isinstance(value, bool))) and not _int(value):
            return f"progress[{key!r:.40}] is not a whole number from 0 to 2**63-1"
    if "phase" in progress and not _word(progress["phase"], "train", "end", "done"):
        return "progress['phase'] is not 'train', 'end' or 'done'"
    best = progress.get("best")
    if not (best is None or (isinstance(best, dict) and isinstance(best.get("name"), str)
                             and _word(best.get("mode"), "min", "max") and _real(best.get("value"))
                             and _int(best.get("step")))):
        return "progress['best'] is not None or {'name', 'mode', 'value', 'step'}"
    return None


def _rng_problem(rng: Any, name: str = "rng", good: set[tuple[str, int]] | None = None) -> str | None:
    """What :func:`kit.seed.set_rng_state` would choke on (an out-of-range int is an OverflowError).

    ``good`` holds what was already found fine, as (what it was checked as, id): a forged
    ``rng_ranks`` can share one list among tens of thousands of entries in a small file, and
    each list is checked once (as :func:`kit.manifest.nesting_problem` walks it), not once
    per entry.
    """
    import torch

    good = set() if good is None else good

    def states(value: Any, dtype: torch.dtype) -> bool:
        return isinstance(value, torch.Tensor) and value.dtype == dtype and value.dim() == 1

    def each(what: str, values: Any, fits: Callable[[Any], bool], length: int | None = None) -> bool:
        if (what, id(values)) in good:
            return True
        if not (isinstance(values, list | tuple) and length in (None, len(values))
                and all(fits(value) for value in values)):
            return False
        good.add((what, id(values)))
        return True

    if not isinstance(rng, dict):
        return "'rng' is not a dict"
    python = rng.get("python")
    if not (isinstance(python, list | tuple) and len(python) == 3 and _int(python[0])
            and each("words", python[1], lambda word: _int(word, 0, 2**32 - 1), 625)
            and (python[2] is None or isinstance(python[2], float))):
        return f"{name}['python'] is not a state of Python's random module"
    if not states(rng.get("torch"), torch.uint8):
        return f"{name}['torch'] is not a uint8 tensor"
    if not each("cuda", rng.get("cuda", []), lambda state: states(state, torch.uint8)):
        return f"{name}['cuda'] is not a list of uint8 tensors"
    numpy = rng.get("numpy")
    if "numpy" in rng and not (isinstance(numpy, list | tuple) and len(numpy) == 5
                               and isinstance(numpy[0], str) and states(numpy[1], torch.int64)
                               and _int(numpy[2], 0, 624) and _int(numpy[3], 0, 1)
                               and isinstance(numpy[4], float)):
        return f"{name}['numpy'] is not a numpy random state"
    return None


def _rng_ranks_problem(ranks: Any) -> str | None:
    """Each process's RNG state (several processes): the trainer restores ``ranks[rank]`` in
    place of ``rng``, with one process too, so each is held to ``rng``'s check."""
    if ranks is None:
        return None
    if not isinstance(ranks, list):
        return "'rng_ranks' is not a list"
    good: set[tuple[str, int]] = set()
    for rank, rng in enumerate(ranks):
        if ("rng", id(rng)) in good:
            continue
        problem = _rng_problem(rng, f"rng_ranks[{rank}]", good) if isinstance(rng, dict) \
            else f"rng_ranks[{rank}] is not a dict"
        if problem:
            return problem
        good.add(("rng", id(rng)))
    return None


def _loop_problem(loop: Any) -> str | None:
    """What :meth:`kit.loop.Loop.load_state_dict` restores: the losses not yet logged, as
    :meth:`kit.loop.Loop.state_dict` writes them. A window the loop cannot stack its next
    loss onto, or a sum that is not one number, would crash the run at its next log."""
    import torch

    def floats(value: Any, dim: int) -> bool:
        return isinstance(value, torch.Tensor) and value.is_floating_point() and value.dim() == dim

    if loop is None:
        return None
    if not isinstance(loop, dict):
        return "'loop' is not a dict"
    if not (loop.get("window") is None or floats(loop["window"], 1)):
        return "loop['window'] is not None or a 1-d floating-point tensor"
    if "iter_sum" in loop and not floats(loop["iter_sum"], 0):
        return "loop['iter_sum'] is not a 0-d floating-point tensor"
    if "iter_sum" in loop and not _int(loop.get("iter_count")):
        return "loop['iter_count'] is not a whole number from 0 to 2**63-1"
    if "skipped" in loop and not _int(loop.get("skipped")):
        return "loop['skipped'] is not a whole number from 0 to 2**63-1"
    return None


def _sections_problem(data: dict[Any, Any]) -> str | None:
    """The optimizer, scheduler, backend, results and plugins sections, when they are wrong."""
    optimizer = data.get("optimizer")
    if not (isinstance(optimizer, dict) and isinstance(optimizer.get("state"), dict)
            and isinstance(optimizer.get("param_groups"), list)
            and all(isinstance(group, dict) for group in optimizer["param_groups"])):
        return "'optimizer' is not a dict of 'state' and 'param_groups'"
    for key in ("scheduler", "backend"):
        if not isinstance(data.get(key), dict | None):
            return f"{key!r} is not a dict"
    if not isinstance(data.get("plugins", {}), dict):
        return "'plugins' is not a dict"
    results = data.get("results", {})
    if not (isinstance(results, dict) and all(
            isinstance(split, dict) and all(isinstance(k, str) and _real(v) for k, v in split.items())
            for split in results.values())):
        return "'results' is not a dict of splits, each of names and numbers"
    return None


def check_kit_checkpoint(data: Any, folder: Path) -> Checkpoint:
    """``data`` if it has the shape of :meth:`kit.Trainer.state_dict`, else CheckpointError.

    A checkpoint can verify against its manifest and still not be kit's (a forged one,
    another program's): resuming from it must fall back like from a corrupt one, not fail
    halfway through restoring, seed torch with 2**64 or leave data that the next save cannot
    pickle. Every section kit restores is checked for exactly the types it restores; whether
    the weights fit *this* model is the trainer's check. Tensors are never iterated.
    """
    import torch

    if not isinstance(data, dict):
        problem: str | None = f"it holds a {type(data).__name__}, not a dict"
    else:
        model = data.get("model")
        problem = nesting_problem(data)
        if problem is None and not (isinstance(model, dict) and all(
                isinstance(k, str) and (isinstance(v, torch.Tensor) or k.endswith("_extra_state"))
                for k, v in model.items())):
            problem = "'model' is not a dict of tensors"
        problem = problem or _progress_problem(data.get("progress")) or _sections_problem(data) \
            or _loop_problem(data.get("loop")) or _rng_problem(data.get("rng")) \
            or _rng_ranks_problem(data.get("rng_ranks"))
    if problem:
        raise CheckpointError(f"checkpoint {show_name(folder)} is not a kit checkpoint: {problem}")
    return cast(Checkpoint, data)
