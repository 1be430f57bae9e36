"""``predictions``: every evaluation's indices, targets, outputs and predictions, on disk.

As autrainer's ``save_dev_outputs`` and ``save_test_outputs`` do: after each validation
and the test pass, one ``.npz`` file per split and step in ``<run>/predictions/``
(``val-step00000040.npz``), holding ``indices`` (the samples' positions in the split),
``targets``, ``outputs`` (what the task's metrics compare: logits, values) and
``predictions`` (the arg-max class for classification, the outputs otherwise). Plain
numpy arrays, no pickle: ``numpy.load(path)`` reads them. With several processes every
rank's share is gathered to rank zero, which writes them in index order.

Cost: the evaluation's outputs stay on the device until the pass ends, then are copied to
the host once; nothing happens during training.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

import kit

__all__ = ["Predictions"]


class Predictions:
    """Saves each evaluation's indices, targets, outputs and predictions to ``.npz`` files."""

    autoload: ClassVar[bool] = False

    class Options(BaseModel):
        """``plugins: [{predictions: {…}}]``."""

        model_config = ConfigDict(extra="forbid")

        splits: list[Literal["val", "test"]] = Field(["val", "test"], min_length=1,
                                                     description="the evaluations to save")
        folder: kit.RunPath = Field("predictions", description="inside the run directory")

    def __init__(self, options: Options | None = None) -> None:
        self.options = options or self.Options()
        self._parts: list[tuple[Any, Any]] = []

    # -- collecting ---------------------------------------------------------------------

    def _begin(self) -> None:
        self._parts = []

    def _add(self, evaluation: kit.Evaluation) -> None:
        if evaluation.preds is None or evaluation.targets is None:
            return
        self._parts.append((evaluation.targets.detach(), evaluation.preds.detach()))

    @kit.hookimpl
    def kit_val_begin(self) -> None:
        self._begin()

    @kit.hookimpl
    def kit_test_begin(self) -> None:
        self._begin()

    @kit.hookimpl
    def kit_val_step_end(self, evaluation: kit.Evaluation) -> None:
        if "val" in self.options.splits:
            self._add(evaluation)

    @kit.hookimpl
    def kit_test_step_end(self, evaluation: kit.Evaluation) -> None:
        if "test" in self.options.splits:
            self._add(evaluation)

    @kit.hookimpl
    def kit_val_end(self, trainer: kit.Trainer) -> None:
        if "val" in self.options.splits:
            self._write(trainer, "val", trainer.val_loader)

    @kit.hookimpl
    def kit_test_end(self, trainer: kit.Trainer) -> None:
        if "test" in self.options.splits:
            self._write(trainer, "test", trainer.test_loader)

    # -- writing ------------------------------------------------------------------------

    def _write(self, trainer: kit.Trainer, split: str, loader: Any) -> None:
        """Gather this pass to rank zero (every rank calls this) and write it there."""
        parts, self._parts = self._parts, []
        mine: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        if parts:
            targets = torch.cat([t for t, _ in parts]).cpu()
            outputs = torch.cat([p for _, p in parts]).float().cpu()
            order = getattr(getattr(loader, "sampler", None), "order", None)
            indices = torch.tensor(order(), dtype=torch.int64)[: len(targets)] if callable(order) \
                else torch.arange(len(targets))
            mine = (indices, targets, outputs)
        gathered = trainer.backend.all_gather_object(mine) if trainer.backend is not None else [mine]
        if not trainer.is_global_zero or trainer.run_dir is None:
            return
        shares = [share for share in gathered if share is not None]
        if not shares:
            kit.warn(f"predictions: the task gave no predictions and targets for {split}; nothing saved")
            return
        index = torch.cat([share[0] for share in shares])
        sort = torch.argsort(index)
        index = index[sort]
        target = torch.cat([share[1] for share in shares])[sort]
        output = torch.cat([share[2] for share in shares])[sort]
        task = trainer.task
        classify = task is not None and task.classification and output.dim() > 1
        prediction = output.argmax(-1) if classify else output
        folder = kit.run_path(trainer.run_dir, self.options.folder, key="plugins.predictions.folder")
        folder.mkdir(parents=True, exist_ok=True)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.savez(fh, indices=index.numpy(), targets=target.numpy(), outputs=output.numpy(),
                         predictions=prediction.numpy())
                fh.flush()
                os.fsync(fh.fileno())

        kit.atomic_write(folder / f"{split}-step{trainer.global_step:08d}.npz", write)
