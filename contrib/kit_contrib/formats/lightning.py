"""``lightning``: one ``model.ckpt`` laid out as Lightning lays out its checkpoints.

The model's weights are under ``state_dict`` with the ``model.`` prefix, beside
``epoch``, ``global_step``, ``optimizer_states``, ``lr_schedulers`` and
``hyper_parameters``. The only hyperparameter is ``kit_model`` (the model's kit target
and keyword arguments): a record, not an instruction, since
:class:`kit_contrib.integrations.lightning.KitLightningModule` imports only a target its caller
names or allows, and no folder is recorded for it to search. The rest of kit's state
rides under ``kit``, so a run resumes from it as exactly as from the ``torch`` format.
Writing needs no Lightning; it loads with ``weights_only=True`` like any kit checkpoint.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import torch

import kit

__all__ = ["LightningFormat"]

_PREFIX = "model."
_OWN = ("model", "optimizer", "scheduler")


def _lightning_version() -> str:
    for dist in ("lightning", "pytorch-lightning"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "2.0.0"


class LightningFormat(kit.CheckpointFormat):
    """A ``.ckpt`` that ``LightningModule.load_from_checkpoint`` reads."""

    name: ClassVar[str] = "lightning"
    filename: ClassVar[str] = "model.ckpt"

    def save(self, checkpoint: dict[str, Any], folder: Path) -> None:
        progress = checkpoint.get("progress") or {}
        model_cfg = (checkpoint.get("config") or {}).get("model") or {}
        scheduler = checkpoint.get("scheduler")
        ckpt = {
            "epoch": int(progress.get("epoch", 0)),
            "global_step": int(progress.get("global_step", 0)),
            "pytorch-lightning_version": _lightning_version(),
            "state_dict": {_PREFIX + k: v for k, v in checkpoint["model"].items()},
            "optimizer_states": [checkpoint["optimizer"]] if checkpoint.get("optimizer") is not None else [],
            "lr_schedulers": [scheduler] if scheduler is not None else [],
            "hyper_parameters": {"kit_model": {"target": model_cfg.get("target"),
                                               "kwargs": model_cfg.get("kwargs") or {}}},
            "kit": {k: v for k, v in checkpoint.items() if k not in _OWN},
        }
        with (folder / self.filename).open("wb") as fh:  # a Python file: a full disk raises ENOSPC
            torch.save(ckpt, fh)

    def load(self, folder: Path, *, map_location: Any = "cpu") -> dict[str, Any]:
        data = kit.load_torch_file(folder / self.filename, map_location=map_location)
        try:
            state = data["state_dict"]
            out = dict(data["kit"])
            out["model"] = {k[len(_PREFIX):]: v for k, v in state.items() if k.startswith(_PREFIX)}
            out["optimizer"] = data["optimizer_states"][0] if data["optimizer_states"] else None
            out["scheduler"] = data["lr_schedulers"][0] if data["lr_schedulers"] else None
        except (KeyError, TypeError, IndexError) as exc:
            raise kit.CheckpointError(f"{folder / self.filename} is not a kit lightning checkpoint: "
                                      f"missing {exc}") from None
        return out
