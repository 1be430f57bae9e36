"""Metric records (what loggers receive) and evaluation metrics (what the loop computes).

Evaluation metrics accumulate on the device and sync once, in :meth:`Metric.compute`,
so an evaluation pass costs one host sync, not one per batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

__all__ = ["Accuracy", "MeanLoss", "Metric", "MetricKind", "MetricRecord", "Split"]

MetricKind = Literal["scalar", "text", "histogram"]
Split = Literal["train", "val", "test"]


@dataclass(frozen=True, slots=True)
class MetricRecord:
    """One recorded value, as ``kit_metric_recorded`` hands it to every logger."""

    name: str
    """Namespaced by split: ``train/loss``, ``val/accuracy``."""
    value: Any
    """A Python number for scalars, a str for text, a list/array for histograms."""
    kind: MetricKind
    split: Split | None
    step: int
    """The global optimizer step when the value was recorded."""
    iteration: int
    wall_time: float
    """Seconds since the epoch (``time.time()``)."""


@runtime_checkable
class Metric(Protocol):
    """An evaluation metric over a whole split; construct with no arguments."""

    name: str

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Accumulate one batch; must not force a host sync."""

    def compute(self) -> float:
        """The metric over everything seen since :meth:`reset`."""

    def reset(self) -> None: ...

    def reduce(self, all_reduce: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Combine this rank's state with every other rank's (``all_reduce`` sums a tensor
        over ranks, in place); called before :meth:`compute` when training on several."""


class _Sum:
    """A device-side running sum and count."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.total: torch.Tensor | float = 0.0
        self.count = 0

    def compute(self) -> float:
        return float(self.total) / self.count if self.count else float("nan")

    def reduce(self, all_reduce: Callable[[torch.Tensor], torch.Tensor]) -> None:
        import torch

        both = all_reduce(torch.tensor([float(self.total), float(self.count)], dtype=torch.float64))
        self.total, self.count = float(both[0]), int(both[1])


class Accuracy(_Sum):
    """Top-1 accuracy for class logits ``(N, C)`` against integer targets ``(N,)``."""

    name = "accuracy"

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.total = self.total + (outputs.argmax(dim=-1) == targets).sum()
        self.count += targets.shape[0]


class MeanLoss(_Sum):
    """The sample-weighted mean of per-batch mean losses."""

    name = "loss"

    def add(self, loss: torch.Tensor, batch_size: int) -> None:
        self.total = self.total + loss * batch_size
        self.count += batch_size
