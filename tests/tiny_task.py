"""Factories for a tiny, fast classification task used across the tests."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

import kit


def build_model(hidden: int = 16, dropout: float = 0.0) -> nn.Module:
    return nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 3))


def build_data(n: int = 96, with_val: bool = True, with_test: bool = True) -> kit.Data:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()

    def part(lo: int, hi: int) -> TensorDataset:
        return TensorDataset(x[lo:hi], y[lo:hi])

    third = n // 3
    train_end = n - 2 * third if with_val else n - third
    return kit.Data(
        train=part(0, train_end),
        val=part(n - 2 * third, n - third) if with_val else None,
        test=part(n - third, n) if with_test else None,
    )


def broken_model() -> nn.Module:
    raise RuntimeError("boom in user code")


def not_data() -> int:
    return 3


def build_loaders(batch_size: int = 8) -> kit.Data:
    """The same data as ready DataLoaders of the user's own (no kit.EpochSampler): a resumed
    pass is reached by replaying batches."""
    from torch.utils.data import DataLoader

    data = build_data()
    return kit.Data(*(DataLoader(part, batch_size=batch_size) for part in (data.train, data.val, data.test)))
