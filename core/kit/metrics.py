"""Metric records: what ``trainer.record`` hands every logger through ``kit_metric_recorded``.

Evaluation metrics themselves are torchmetrics' (:mod:`kit.tasks`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["MetricKind", "MetricRecord", "Split"]

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
