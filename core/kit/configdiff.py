"""What changed between a run's saved config and the one it is continued with.

Some keys cannot break resumption (how long to train, how often to evaluate and save,
which loggers and plugins run); anything else (model, data, optimizer, seed, …) could
make the resumed run silently different, so ``continue`` refuses it unless told to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kit.errors import ConfigError

__all__ = ["SAFE_KEYS", "Change", "check_changes", "diff_configs", "flatten"]

SAFE_KEYS = (
    "experiment",
    "runs_dir",
    "training.iterations",
    "training.eval_frequency",
    "training.save_frequency",
    "training.log_every_n_steps",
    "training.inference_batch_size",
    "training.device",
    "data.num_workers",
    "data.pin_memory",
    "checkpoint",
    "loggers",
    "plugins",
)
"""Keys (and everything under them) that ``continue`` accepts without ``--allow-config-change``."""


@dataclass(frozen=True)
class Change:
    key: str
    old: Any
    new: Any

    @property
    def safe(self) -> bool:
        return any(self.key == k or self.key.startswith(f"{k}.") for k in SAFE_KEYS)

    def __str__(self) -> str:
        missing = "(unset)"
        old = missing if self.old is _MISSING else repr(self.old)
        new = missing if self.new is _MISSING else repr(self.new)
        return f"{self.key}: {old} -> {new}"


_MISSING: Any = type("_Missing", (), {"__repr__": lambda self: "(unset)"})()


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": [1]}, "c": {}}`` -> ``{"a.b": [1]}``: lists (loggers, metrics) compare whole,
    and an empty mapping is the same as an absent one."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def diff_configs(old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    a, b = flatten(old), flatten(new)
    return [Change(k, a.get(k, _MISSING), b.get(k, _MISSING))
            for k in sorted(a.keys() | b.keys()) if a.get(k, _MISSING) != b.get(k, _MISSING)]


def check_changes(changes: list[Change], *, allow: bool) -> None:
    """Refuse changes that can break resumption, naming each key, unless ``allow``."""
    refused = [c for c in changes if not c.safe]
    if refused and not allow:
        raise ConfigError(
            "the config changed in ways that break an exact resume: "
            + "; ".join(str(c) for c in refused),
            key="--mode continue",
            hint="restore those keys, start a new run with --mode new, "
                 "or pass --allow-config-change to resume anyway",
        )
