"""Regression on scikit-learn's diabetes data: 442 patients, 10 features, a disease score a
year later; it ships inside sklearn. The model computes its own loss (task ``model_loss``)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

import kit

__all__ = ["DictDataset", "Regressor", "build_data", "build_model"]


class DictDataset(Dataset[dict[str, torch.Tensor]]):
    """Items ``{"x": features, "y": target}``: the batch the model takes as keyword arguments."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[index], "y": self.y[index]}


class Regressor(nn.Module):
    """A small MLP that returns its own loss, as Hugging Face models do, so one forward
    serves training (``loss``) and the metrics (``predictions``)."""

    def __init__(self, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(10, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor | None]:
        """``loss`` is ``None`` without targets, so the model also predicts on new data."""
        pred = self.net(x).squeeze(-1)
        return {"loss": F.mse_loss(pred, y) if y is not None else None, "predictions": pred}


def build_model(hidden: int = 32, dropout: float = 0.1) -> nn.Module:
    """Small on purpose: 310 training samples of a nearly linear problem overfit a wide net."""
    return Regressor(hidden, dropout)


def build_data(val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0) -> kit.Data:
    """Split once with a fixed seed (70/15/15 by default); no download.

    Features and target are standardised with the training split's mean and standard
    deviation only, so nothing about validation or test leaks into training. The loss and
    ``mean_absolute_error`` are therefore in standard deviations of the target; R² is
    scale-free and the number to compare.
    """
    try:
        from sklearn.datasets import load_diabetes
    except ImportError:
        raise kit.ConfigError("the diabetes example needs scikit-learn", key="data.target",
                              hint="pip install 'kit-trainer[examples]'") from None

    features, target = load_diabetes(return_X_y=True)
    x = torch.tensor(features, dtype=torch.float32)
    y = torch.tensor(target, dtype=torch.float32)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test, n_val = int(len(x) * test_fraction), int(len(x) * val_fraction)
    test, val, train = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
    x = (x - x[train].mean(0)) / x[train].std(0)
    y = (y - y[train].mean()) / y[train].std()

    def split(idx: torch.Tensor) -> DictDataset:
        return DictDataset(x[idx], y[idx])

    return kit.Data(train=split(train), val=split(val), test=split(test))
