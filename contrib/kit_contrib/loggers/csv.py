"""``csv``: one wide CSV per run, a row per global step, a column per scalar metric.

Columns are added as metrics first appear (validation after the first epoch, test at
the end); the file is then rewritten once, atomically, with the wider header, so it
always reads back with ``pandas.read_csv``. As with ``jsonl``, every checkpoint records
how many rows the file held (and the row still being filled), and a run continued from
it cuts the file back to them first, so each (metric, step) appears once however often
the run was stopped.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

import kit

if TYPE_CHECKING:
    from kit import MetricRecord, Trainer

__all__ = ["CsvLogger"]

_INDEX = ["step", "iteration", "wall_time"]
_STATE = "csv"


class CsvLogger:
    """Scalars only; text and histograms belong to richer loggers."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        filename: kit.RunPath = Field("metrics.csv", description="inside the run directory")

    def __init__(self, options: Options | None = None) -> None:
        self.options = options or self.Options()
        self.path: Path | None = None
        self.columns = list(_INDEX)
        self.row: dict[str, Any] = {}
        self.rows = 0
        """Data rows in the file, for the checkpoint's record of them."""
        self._fh: IO[str] | None = None
        self._resume: dict[str, Any] | None = None

    @kit.hookimpl
    def kit_checkpoint_load(self, checkpoint: dict[str, Any]) -> None:
        state = (checkpoint.get("plugins") or {}).get(_STATE)
        self._resume = state if isinstance(state, dict) else None

    @kit.hookimpl
    def kit_train_begin(self, trainer: Trainer) -> None:
        if trainer.run_dir is None or not trainer.is_global_zero or not trainer.trains:
            return  # an evaluation (which may run beside training) writes its own results file
        self.path = kit.run_path(trainer.run_dir, self.options.filename, key="loggers.csv.filename")
        if self.path.is_file():  # a resumed run appends under the existing header
            with self.path.open(newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                rows = list(reader)
                self.columns = list(reader.fieldnames or _INDEX)
            rows = self._resumed_rows(rows, trainer.global_step)
            self._rewrite(rows)
            self.rows = len(rows)
        else:
            self._rewrite([])
        self._fh = self.path.open("a", newline="", encoding="utf-8")

    def _resumed_rows(self, rows: list[dict[str, Any]], step: int) -> list[dict[str, Any]]:
        """The rows logged before the checkpoint this run resumes from."""
        resume = self._resume or {}
        if step == 0 and not self._resume:
            return []  # restarted from the beginning
        count = resume.get("rows")
        if resume.get("filename") == self.options.filename and isinstance(count, int) \
                and not isinstance(count, bool) and count >= 0:
            pending = resume.get("pending")
            ok = isinstance(pending, dict) and type(pending.get("step")) is int
            self.row = dict(pending) if ok and isinstance(pending, dict) else {}
            return rows[:count]

        def before(row: dict[str, Any]) -> bool:
            try:
                return int(row.get("step") or "") <= step
            except ValueError:
                return False

        return [row for row in rows if before(row)]

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
    def kit_checkpoint_save(self, checkpoint: dict[str, Any]) -> None:
        if self._fh is None:
            return
        self._fh.flush()
        # the row being filled stays open (more of its step may follow): it rides in the checkpoint
        checkpoint["plugins"][_STATE] = {"filename": self.options.filename, "rows": self.rows,
                                         "pending": dict(self.row)}

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
        self.rows += 1
        self.row = {}

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        assert self.path is not None

        def write(tmp: Path) -> None:
            with tmp.open("w", newline="", encoding="utf-8") as fh:
                writer = csv.DictWriter(fh, self.columns, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)
                fh.flush()
                os.fsync(fh.fileno())

        kit.atomic_write(self.path, write)
