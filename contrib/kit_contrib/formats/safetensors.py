"""``safetensors``: tensors in ``tensors.safetensors``, everything else in ``state.json``.

No pickle is involved at all, so a checkpoint from anywhere is safe to load. The JSON
keeps the checkpoint's shape: tensors become ``{"__tensor__": key}``, tuples and
dicts with non-string keys (an optimizer's per-parameter state) are tagged so they
come back as they went in. The ``safetensors`` package is imported with this module, so a
run that selects the format without it fails before anything is written, naming
``kit-trainer[safetensors]``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import kit

__all__ = ["SafetensorsFormat"]

_TAGS = ("__tensor__", "__tuple__", "__dict__")


class _Packer:
    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self._storages: set[int] = set()

    def pack(self, value: Any, where: str) -> Any:
        if isinstance(value, torch.Tensor):
            tensor = value.detach()
            storage = tensor.untyped_storage().data_ptr()
            if storage in self._storages or not tensor.is_contiguous():  # safetensors refuses shared memory
                tensor = tensor.contiguous().clone()
            elif storage:
                self._storages.add(storage)
            key = f"t{len(self.tensors)}"
            self.tensors[key] = tensor
            return {"__tensor__": key}
        if isinstance(value, dict):
            if all(isinstance(k, str) and k not in _TAGS for k in value):
                return {k: self.pack(v, f"{where}.{k}") for k, v in value.items()}
            return {"__dict__": [[self.pack(k, where), self.pack(v, f"{where}[{k!r}]")]
                                 for k, v in value.items()]}
        if isinstance(value, tuple):
            return {"__tuple__": [self.pack(v, f"{where}[{i}]") for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [self.pack(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if value is None or isinstance(value, bool | int | float | str):
            return value
        raise kit.CheckpointError(
            f"cannot store a {type(value).__name__} at {where} in a safetensors checkpoint",
            hint="checkpoints hold tensors and plain data (dict, list, str, numbers)",
        )


def _unpack(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if len(value) == 1:
            (tag, inner), = value.items()
            if tag == "__tensor__":
                return tensors[inner]
            if tag == "__tuple__":
                return tuple(_unpack(v, tensors) for v in inner)
            if tag == "__dict__":
                return {_unpack(k, tensors): _unpack(v, tensors) for k, v in inner}
        return {k: _unpack(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_unpack(v, tensors) for v in value]
    return value


class SafetensorsFormat(kit.CheckpointFormat):
    """No pickle anywhere: safetensors for tensors, JSON for the rest."""

    name: ClassVar[str] = "safetensors"
    tensors_file: ClassVar[str] = "tensors.safetensors"
    state_file: ClassVar[str] = "state.json"

    def save(self, checkpoint: dict[str, Any], folder: Path) -> None:
        packer = _Packer()
        skeleton = packer.pack(checkpoint, "checkpoint")
        save_file(packer.tensors, str(folder / self.tensors_file))
        (folder / self.state_file).write_text(json.dumps(skeleton), encoding="utf-8")

    def load(self, folder: Path, *, map_location: Any = "cpu") -> dict[str, Any]:
        try:
            tensors = load_file(str(folder / self.tensors_file), device="cpu")
            skeleton = json.loads((folder / self.state_file).read_text(encoding="utf-8"))
            data = _unpack(skeleton, tensors)
        except (OSError, ValueError, KeyError, SafetensorError) as exc:
            raise kit.CheckpointError(
                f"cannot load checkpoint {folder}: {type(exc).__name__}: {exc}") from exc
        if str(map_location) != "cpu":
            data = _to(data, torch.device(map_location))
        if not isinstance(data, dict):
            raise kit.CheckpointError(f"{folder} holds a {type(data).__name__}, not a kit checkpoint")
        return data


def _to(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to(v, device) for v in value)
    return value
