"""What a kit checkpoint holds, checked before any of it is used.

A checkpoint can verify against its manifest and still not be kit's (a forged one,
another program's): resuming from it must fall back like from a corrupt one, not fail
halfway through restoring, or crash later on a value torch cannot take. Whether it fits
*this* model is the trainer's check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from kit.errors import CheckpointError
from kit.manifest import nesting_problem, show_name

__all__ = ["check_kit_checkpoint"]

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


def _rng_problem(rng: Any) -> str | None:
    """What :func:`kit.seed.set_rng_state` would choke on (an out-of-range int is an OverflowError)."""
    import torch

    def states(value: Any, dtype: torch.dtype) -> bool:
        return isinstance(value, torch.Tensor) and value.dtype == dtype and value.dim() == 1

    if not isinstance(rng, dict):
        return "'rng' is not a dict"
    python = rng.get("python")
    if not (isinstance(python, list | tuple) and len(python) == 3 and _int(python[0])
            and isinstance(python[1], list | tuple) and len(python[1]) == 625
            and all(_int(word, 0, 2**32 - 1) for word in python[1])
            and (python[2] is None or isinstance(python[2], float))):
        return "rng['python'] is not a state of Python's random module"
    if not states(rng.get("torch"), torch.uint8):
        return "rng['torch'] is not a uint8 tensor"
    cuda = rng.get("cuda", [])
    if not (isinstance(cuda, list | tuple) and all(states(state, torch.uint8) for state in cuda)):
        return "rng['cuda'] is not a list of uint8 tensors"
    numpy = rng.get("numpy")
    if "numpy" in rng and not (isinstance(numpy, list | tuple) and len(numpy) == 5
                               and isinstance(numpy[0], str) and states(numpy[1], torch.int64)
                               and _int(numpy[2], 0, 624) and _int(numpy[3], 0, 1)
                               and isinstance(numpy[4], float)):
        return "rng['numpy'] is not a numpy random state"
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


def check_kit_checkpoint(data: Any, folder: Path) -> dict[str, Any]:
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
            or _rng_problem(data.get("rng"))
    if problem:
        raise CheckpointError(f"checkpoint {show_name(folder)} is not a kit checkpoint: {problem}")
    return cast(dict[str, Any], data)
