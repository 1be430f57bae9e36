"""Checkpoints: written atomically through a format, pruned to the newest ``keep_last``."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, ClassVar

import torch

from kit.errors import CheckpointError
from kit.interfaces import CheckpointFormat
from kit.rundir import atomic_write

__all__ = ["CheckpointStore", "TorchFormat"]


class TorchFormat(CheckpointFormat):
    """``torch.save`` of tensors and plain data; loaded with ``weights_only=True``."""

    name: ClassVar[str] = "torch"
    suffix: ClassVar[str] = ".pt"

    def save(self, checkpoint: dict[str, Any], path: Path) -> None:
        with path.open("wb") as fh:
            torch.save(checkpoint, fh)
            fh.flush()
            os.fsync(fh.fileno())

    def load(self, path: Path, *, map_location: Any = "cpu") -> dict[str, Any]:
        try:
            data = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as exc:  # unpickling refusals and corrupt files alike
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"cannot load checkpoint {path}: {first}") from exc
        if not isinstance(data, dict):
            raise CheckpointError(f"{path} holds a {type(data).__name__}, not a kit checkpoint")
        return data


_NAME = re.compile(r"^iter-(\d+)\.")


class CheckpointStore:
    """The checkpoints of one run: ``<run>/checkpoints/iter-000042<suffix>``."""

    def __init__(self, folder: Path, fmt: CheckpointFormat, *, keep_last: int) -> None:
        self.folder = folder
        self.format = fmt
        self.keep_last = keep_last

    def path_for(self, iteration: int) -> Path:
        return self.folder / f"iter-{iteration:06d}{self.format.suffix}"

    def list(self) -> list[Path]:
        """Finished checkpoints of this format, oldest first."""
        if not self.folder.is_dir():
            return []
        found = [
            p for p in self.folder.iterdir()
            if _NAME.match(p.name) and p.name.endswith(self.format.suffix)
        ]
        return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))  # type: ignore[union-attr]

    def save(self, checkpoint: dict[str, Any], iteration: int) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = atomic_write(self.path_for(iteration), lambda tmp: self.format.save(checkpoint, tmp))
        for old in self.list()[: -self.keep_last]:
            old.unlink(missing_ok=True)
        return path

    def load(self, path: Path, *, map_location: Any = "cpu") -> dict[str, Any]:
        if not path.is_file():
            raise CheckpointError(f"checkpoint {path} not found")
        return self.format.load(path, map_location=map_location)
