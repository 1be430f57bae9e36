"""An MLP on scikit-learn's handwritten digits: 1,797 8x8 images that ship inside sklearn."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

import kit


def build_model(hidden: int = 128, dropout: float = 0.1) -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, hidden), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(hidden, 10),
    )


def build_data(val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0) -> kit.Data:
    """Standardised features, split once with a fixed seed; no download."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise kit.ConfigError("the digits example needs scikit-learn", key="data.target",
                              hint="pip install 'kit-trainer[examples]'") from None

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test, n_val = int(len(x) * test_fraction), int(len(x) * val_fraction)
    test, val, train = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
    mean, std = x[train].mean(0), x[train].std(0)
    std[std < 1e-3] = 1.0  # pixels constant in the training split stay as they are
    x = (x - mean) / std

    def split(idx: torch.Tensor) -> TensorDataset:
        return TensorDataset(x[idx], y[idx])

    return kit.Data(train=split(train), val=split(val), test=split(test))
