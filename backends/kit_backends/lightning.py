"""kit's model inside Lightning: a ``LightningModule`` that rebuilds the user's model.

Its hyperparameters are the model's kit target, keyword arguments and the config's
folder, so ``KitLightningModule.load_from_checkpoint(path)`` rebuilds the model from a
``lightning``-format kit checkpoint with nothing but Lightning. Weights live under
``model.``, as Lightning saves a module stored as ``self.model``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch

import kit

__all__ = ["KitLightningModule"]


class KitLightningModule(L.LightningModule):
    """Wraps the ``torch.nn.Module`` that the kit target ``target`` builds."""

    def __init__(
        self, target: str, kwargs: dict[str, Any] | None = None, base_dir: str | None = None
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        folder = Path(base_dir) if base_dir else None
        factory = kit.resolve_target(target, key="model.target", base_dir=folder)
        model = factory(**(kwargs or {}))
        if not isinstance(model, torch.nn.Module):
            raise kit.ConfigError(f"the model factory returned {type(model).__name__}, not a torch.nn.Module",
                                  key="model.target")
        self.model = model

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)
