"""``csv``: one wide CSV per run, a row per global step, a column per scalar metric.

Columns are added as metrics first appear (validation after the first epoch, test at
the end); the file is then rewritten once, atomically, with the wider header, so it
always reads back with ``pandas.read_csv``.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

import kit

if TYPE_CHECKING:
    from kit import MetricRecord, Trainer

__all__ = ["CsvLogger"]

_INDEX = ["step", "iteration", "wall_time"]


class CsvLogger:
    """Scalars only; text and histograms belong to richer loggers."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        filename: str = "metrics.csv"

    def __init__(self, options: Options | None = None) -> None:
        self.options = options or self.Options()
        self.path: Path | None = None
        self.columns = list(_INDEX)
        self.row: dict[str, Any] = {}
        self._fh: IO[str] | None = None

    @kit.hookimpl
    def kit_train_begin(self, trainer: Trainer) -> None:
        if trainer.run_dir is None or not trainer.is_global_zero:
            return
        self.path = trainer.run_dir / self.options.filename
        if self.path.is_file():  # a resumed run appends under the existing header
            with self.path.open(newline="", encoding="utf-8") as fh:
                self.columns = next(csv.reader(fh), []) or list(_INDEX)
        else:
            self._rewrite([])
        self._fh = self.path.open("a", newline="", encoding="utf-8")

    @kit.hookimpl
    def kit_metric_recorded(self, record: MetricRecord) -> None:
        if self._fh is None or record.kind != "scalar":
            return
        if self.row and self.row["step"] != record.step:
            self._write_row()
        if not self.row:
            self.row = {"step": record.step, "iteration": record.iteration,
                        "wall_time": record.wall_time}
        self.row[record.name] = record.value

    @kit.hookimpl
    def kit_train_end(self) -> None:
        if self._fh is None:
            return
        if self.row:
            self._write_row()
        self._fh.close()
        self._fh = None

    def _write_row(self) -> None:
        assert self._fh is not None
        new = [name for name in self.row if name not in self.columns]
        if new:
            self._fh.close()
            assert self.path is not None
            with self.path.open(newline="", encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh))
            self.columns += new
            self._rewrite(rows)
            self._fh = self.path.open("a", newline="", encoding="utf-8")
        csv.DictWriter(self._fh, self.columns).writerow(self.row)
        self._fh.flush()
        self.row = {}

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        assert self.path is not None

        def write(tmp: Path) -> None:
            with tmp.open("w", newline="", encoding="utf-8") as fh:
                writer = csv.DictWriter(fh, self.columns)
                writer.writeheader()
                writer.writerows(rows)
                fh.flush()
                os.fsync(fh.fileno())

        kit.atomic_write(self.path, write)
