"""``tensorboard``: scalars, text, histograms and hparams, through torch's SummaryWriter.

Event files go to ``<run>/<log_dir>``; only the global-zero rank writes. A continued run
writes with ``purge_step`` at its checkpoint, so steps logged after the checkpoint by
the stopped run are hidden rather than drawn twice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

import kit

if TYPE_CHECKING:
    from kit import MetricRecord, Trainer

__all__ = ["TensorBoardLogger"]


class TensorBoardLogger:
    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        log_dir: kit.RunPath = Field("tensorboard", description="a folder inside the run directory")
        flush_secs: int = Field(10, ge=1, le=3600)
        hparams: bool = Field(True, description="write the flattened config as hparams")

    def __init__(self, options: Options | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # torch raises this when tensorboard is missing
            raise kit.KitError("the tensorboard logger needs the tensorboard package",
                               hint="install `kit-trainer[tensorboard]`") from exc
        self._writer_cls = SummaryWriter
        self.options = options or self.Options()
        self.writer: Any = None

    @kit.hookimpl
    def kit_train_begin(self, trainer: Trainer) -> None:
        if trainer.run_dir is None or not trainer.is_global_zero:
            return
        log_dir = kit.run_path(trainer.run_dir, self.options.log_dir, key="loggers.tensorboard.log_dir")
        # A resumed run hides what the stopped one logged after its checkpoint (a run restarted
        # from the beginning hides all of it), so TensorBoard shows one clean curve, not two.
        purge = None
        if trainer.trains and (trainer.global_step or any(log_dir.glob("events.out.tfevents.*"))):
            purge = trainer.global_step + 1 if trainer.global_step else 0
        self.writer = self._writer_cls(log_dir=str(log_dir),
                                       flush_secs=self.options.flush_secs, purge_step=purge)
        if self.options.hparams and not trainer.global_step and trainer.trains:
            from torch.utils.tensorboard.summary import hparams

            values = {k: v if isinstance(v, bool | int | float | str) else str(v)
                      for k, v in trainer.hparams().items()}
            for summary in hparams(values, {}):  # type: ignore[no-untyped-call]
                self.writer.file_writer.add_summary(summary)

    @kit.hookimpl
    def kit_metric_recorded(self, record: MetricRecord) -> None:
        if self.writer is None:
            return
        if record.kind == "scalar":
            self.writer.add_scalar(record.name, record.value, record.step, record.wall_time)
        elif record.kind == "text":
            self.writer.add_text(record.name, str(record.value), record.step, record.wall_time)
        elif record.kind == "histogram":
            import numpy as np

            self.writer.add_histogram(record.name, np.asarray(record.value), record.step,
                                      walltime=record.wall_time)

    @kit.hookimpl
    def kit_train_end(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None
