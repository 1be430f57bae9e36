"""Tiny regression data and models for the task tests: 96 samples, y = x @ w + 0.5."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

import kit

W = torch.tensor([1.0, -2.0, 0.5, 3.0])


def _xy(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(96, 4, generator=g)
    return x, x @ W + 0.5


def build_pairs(mask: bool = False) -> kit.Data:
    """``(x, y)`` or ``(x, y, mask)`` with every third target masked out (and set to 1e6, so a
    loss that looked at it would explode)."""
    x, y = _xy(0)
    keep = torch.arange(96) % 3 != 0
    if mask:
        y = torch.where(keep, y, torch.full_like(y, 1e6))
    parts = [torch.utils.data.TensorDataset(x[i:i + 32], y[i:i + 32], *([keep[i:i + 32]] if mask else []))
             for i in (0, 32, 64)]
    return kit.Data(*parts)


class DictData(Dataset[dict[str, torch.Tensor]]):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.y[i]}


def build_dicts() -> kit.Data:
    x, y = _xy(0)
    return kit.Data(*(DictData(x[i:i + 32], y[i:i + 32]) for i in (0, 32, 64)))


def build_linear() -> torch.nn.Module:
    return torch.nn.Linear(4, 1)


class OwnLoss(torch.nn.Module):
    """Hugging Face style: ``forward(x, y)`` returns ``{"loss", "predictions"}``."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, Any]:
        pred = self.linear(x).squeeze(-1)
        return {"loss": torch.nn.functional.mse_loss(pred, y) if y is not None else None,
                "predictions": pred}


def build_own_loss() -> torch.nn.Module:
    return OwnLoss()
