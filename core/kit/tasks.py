"""Tasks: how a batch becomes a loss, and predictions and targets for the metrics.

The loop never looks inside a batch: it moves it to the device and hands it to the
run's :class:`Task`. A task is chosen like any plugin (``task: {name: regression}``, an
entry point in ``kit.tasks`` or an import target) and may declare an ``Options`` model.
Metrics are torchmetrics', built once the first predictions show their shape (so
``accuracy`` needs no ``num_classes``), and reduce across ranks themselves.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field

from kit.errors import ConfigError

if TYPE_CHECKING:
    import torchmetrics

__all__ = ["Classification", "Evaluation", "MetricSpec", "ModelLoss", "Regression", "Task", "build_metric",
           "metric_name", "metric_specs"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Evaluation:
    """One evaluation batch as the metrics see it."""

    loss: torch.Tensor
    """The batch's mean loss, a scalar on the device."""
    size: int
    """How many samples the loss averages over (weights the split's mean loss)."""
    preds: Any = None
    """What the metrics compare (logits, values); ``None`` when the task has none."""
    targets: Any = None


class Task:
    """How a batch becomes a loss for training, and an :class:`Evaluation` for evaluation.

    ``forward`` is what the loop runs the model through (wrapped by the backend); ``loss``
    is ``task.loss`` resolved (``None`` for a task that takes no loss function).
    """

    name: ClassVar[str] = ""
    default_loss: ClassVar[str | None] = None
    """The loss ``task.loss`` means when left out."""
    default_metrics: ClassVar[tuple[str, ...]] = ()
    """The metrics ``task.metrics`` means when left out."""
    classification: ClassVar[bool] = False
    """Whether metric names mean their multiclass torchmetrics (``num_classes`` from the logits)."""

    def __init__(self, options: BaseModel | None = None) -> None:
        self.options = options
        self.loss: LossFn | None = None

    def batch_size(self, batch: Any) -> int:
        """Samples in ``batch``, for throughput and the evaluation mean: the first tensor's
        first dimension (found at once in an ``(inputs, targets)`` tuple; a search otherwise)."""
        first = batch[0] if isinstance(batch, tuple | list) and batch else batch
        if not isinstance(first, torch.Tensor):
            first = _first_tensor(batch)
        return int(first.shape[0]) if first is not None and first.dim() else 1

    def check(self, metrics: int) -> None:
        """Refuse, before the run starts, options that cannot give ``metrics`` metrics
        anything to compare (a :class:`~kit.errors.ConfigError` naming the key)."""

    def training_step(self, forward: Callable[..., Any], batch: Any) -> torch.Tensor:
        """The batch's loss: a scalar tensor attached to the graph."""
        return self.evaluation_step(forward, batch).loss

    def evaluation_step(self, forward: Callable[..., Any], batch: Any) -> Evaluation:
        raise NotImplementedError


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    items = value.values() if isinstance(value, Mapping) else value if isinstance(value, list | tuple) else ()
    for item in items:
        found = _first_tensor(item)
        if found is not None:
            return found
    return None


def _pair(batch: Any, task: str) -> tuple[Any, torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, list | tuple) and len(batch) in (2, 3):
        return batch[0], batch[1], batch[2] if len(batch) == 3 else None
    raise TypeError(f"the {task} task takes batches (inputs, targets) or (inputs, targets, mask), not "
                    f"{type(batch).__name__}: choose task: {{name: model_loss}} for other batches")


class Classification(Task):
    """``(inputs, targets)``: ``loss(model(inputs), targets)``; class logits against labels."""

    name = "classification"
    default_loss = "cross_entropy"
    default_metrics = ("accuracy",)
    classification = True

    def evaluation_step(self, forward: Callable[..., Any], batch: Any) -> Evaluation:
        inputs, targets, _ = _pair(batch, "classification")
        assert self.loss is not None
        outputs = forward(inputs)
        return Evaluation(self.loss(outputs, targets), int(targets.shape[0]), outputs, targets)


class Regression(Task):
    """``(inputs, targets[, mask])``: outputs of the targets' shape (a trailing 1 squeezed);
    with a mask, only its true entries count, in the loss and in the metrics."""

    name = "regression"
    default_loss = "mse_loss"
    default_metrics = ("mean_squared_error",)

    def evaluation_step(self, forward: Callable[..., Any], batch: Any) -> Evaluation:
        inputs, targets, mask = _pair(batch, "regression")
        assert self.loss is not None
        outputs = forward(inputs)
        if outputs.dim() == targets.dim() + 1 and outputs.shape[-1] == 1:
            outputs = outputs.squeeze(-1)
        targets = targets.to(outputs.dtype)
        if mask is not None:
            outputs, targets = outputs[mask.bool()], targets[mask.bool()]
        return Evaluation(self.loss(outputs, targets), int(targets.shape[0]), outputs, targets)


class ModelLoss(Task):
    """Models that compute their own loss (Hugging Face style).

    A dict batch is passed as keyword arguments, a tuple or list as positional ones, and
    anything else as one argument. The model returns the loss as a tensor, as
    ``output["loss"]`` or as ``output.loss``; for metrics, ``prediction_key`` names what
    in its output they compare with ``target_key`` in the batch.
    """

    name = "model_loss"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        prediction_key: str | None = Field(None, description="the model output's entry the metrics read")
        target_key: str | None = Field(None, description="the batch's entry the metrics compare with")

    options: Options

    def __init__(self, options: Options | None = None) -> None:
        super().__init__(options or self.Options())

    def check(self, metrics: int) -> None:
        if metrics and not (self.options.prediction_key and self.options.target_key):
            raise ConfigError("the model_loss task gives metrics nothing to compare", key="task.options",
                              hint="set prediction_key (in the model's output) and target_key (in the "
                                   "batch), or metrics: []")

    def evaluation_step(self, forward: Callable[..., Any], batch: Any) -> Evaluation:
        if isinstance(batch, Mapping):
            output = forward(**batch)
        elif isinstance(batch, list | tuple):
            output = forward(*batch)
        else:
            output = forward(batch)
        loss = _field(output, "loss")
        if not isinstance(loss, torch.Tensor):
            raise TypeError("the model_loss task needs the model to return its loss: a tensor, a dict with "
                            f"'loss' or an object with .loss; it returned {type(output).__name__}")
        opts = self.options
        preds = _field(output, opts.prediction_key) if opts.prediction_key else None
        targets = batch[opts.target_key] if opts.target_key and isinstance(batch, Mapping) else None
        return Evaluation(loss, self.batch_size(batch), preds, targets)


def _field(output: Any, key: str) -> Any:
    if isinstance(output, torch.Tensor):
        return output if key == "loss" else None
    if isinstance(output, Mapping):
        return output.get(key)
    return getattr(output, key, None)


# -- metrics ----------------------------------------------------------------------------

_METRICS = {
    "accuracy": "Accuracy", "f1": "F1Score", "precision": "Precision", "recall": "Recall",
    "auroc": "AUROC", "average_precision": "AveragePrecision",
    "mean_squared_error": "MeanSquaredError", "mse": "MeanSquaredError",
    "mean_absolute_error": "MeanAbsoluteError", "mae": "MeanAbsoluteError",
    "r2": "R2Score", "explained_variance": "ExplainedVariance", "pearson": "PearsonCorrCoef",
}
"""Short names for torchmetrics classes; any other is an import target (``torchmetrics:X``)."""
_CLASSIFICATION = {"Accuracy", "F1Score", "Precision", "Recall", "AUROC", "AveragePrecision"}


def metric_name(entry: str) -> str:
    """``val/<name>``'s name: a short name as is, a class in snake case (``MeanSquaredError``
    -> ``mean_squared_error``)."""
    if ":" not in entry:
        return entry
    tail = entry.rsplit(":", 1)[1].rsplit(".", 1)[-1]
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", tail).lower()


@dataclass(frozen=True)
class MetricSpec:
    """One entry of ``task.metrics``, its class found when the run is built."""

    entry: str
    """As the config wrote it: a short name or an import target."""
    name: str
    """What it is recorded as: ``val/<name>``."""
    cls: Any
    kwargs: dict[str, Any]
    key: str
    """The config key that asked for it, for errors."""


def metric_specs(entries: Sequence[str | Mapping[str, Any]], *, base_dir: Path | None) -> list[MetricSpec]:
    """``task.metrics`` entries (a name, or ``{name: {kwargs}}``), each class found now, so a
    typo or an import target that does not import is refused before anything is written."""
    import torchmetrics

    from kit.targets import resolve_target

    specs = []
    for i, item in enumerate(entries):
        key = f"task.metrics[{i}]"
        entry, kwargs = next(iter(item.items())) if isinstance(item, Mapping) else (item, {})
        if ":" in entry:
            cls = resolve_target(entry, key=key, base_dir=base_dir)
        elif entry in _METRICS:
            cls = getattr(torchmetrics, _METRICS[entry])
        else:
            raise ConfigError(f"unknown metric {entry!r}", key=key,
                              hint=f"built-in: {', '.join(sorted(_METRICS))}; or an import target such as "
                                   "`torchmetrics:MeanSquaredError`")
        specs.append(MetricSpec(entry, metric_name(entry), cls, dict(kwargs or {}), key))
    return specs


def build_metric(spec: MetricSpec, *, classes: int, classification: bool) -> torchmetrics.Metric:
    """A fresh torchmetrics metric for ``spec``; a multiclass one gets ``num_classes`` from
    ``classes`` (the first predictions' last dimension) unless its kwargs say."""
    import torchmetrics

    cls, args = spec.cls, dict(spec.kwargs)
    if classification and getattr(cls, "__name__", "") in _CLASSIFICATION and "task" not in args:
        args["task"] = "multiclass"
        if "num_classes" not in args and classes:
            args["num_classes"] = classes
    try:
        metric = cls(**args)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{getattr(cls, '__name__', spec.entry)} rejected these options: {exc}",
                          key=spec.key, hint="fix the values") from None
    if not isinstance(metric, torchmetrics.Metric):
        raise ConfigError(f"{spec.entry} is not a torchmetrics.Metric", key=spec.key,
                          hint="subclass torchmetrics.Metric")
    return metric
