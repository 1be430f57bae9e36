"""``mlflow``: params, metrics with steps, tags and the config, into one MLflow run per kit run.

The tracking store is the logger's ``tracking_uri``, else ``MLFLOW_TRACKING_URI``, else a
SQLite database beside the runs (``sqlite:///<runs_dir>/mlflow.db``, artifacts in
``<runs_dir>/mlartifacts``), so it works offline with nothing to set up. The MLflow run
id is kept in ``<run>/mlflow.json``: ``--mode continue`` logs into the same MLflow run,
and ``evaluate`` adds its results there without changing the run's status. The run
ends FINISHED, FAILED or KILLED (interrupted by a signal), as the kit run ended.
Metrics are sent in batches (``log_batch``), every ``flush_seconds`` and at the end.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

import kit

if TYPE_CHECKING:
    from kit import MetricRecord, Trainer

__all__ = ["MlflowLogger"]

_STATUS = {"finished": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
_MAX_BATCH = 1000  # MLflow's limit on metrics per log_batch
_MAX_PARAM = 6000  # MLflow's limit on a param value's length


class MlflowLogger:
    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        tracking_uri: str | None = Field(None, description="default: MLFLOW_TRACKING_URI, else SQLite")
        experiment: str | None = Field(None, description="MLflow experiment; default: kit's experiment")
        run_name: str | None = Field(None, description="default: the run directory's name")
        tags: dict[str, str] = Field(default_factory=dict)
        log_best_checkpoint: bool = Field(False, description="upload the best checkpoint at the end")
        flush_seconds: float = Field(5.0, ge=0)

    def __init__(self, options: Options | None = None) -> None:
        try:
            from mlflow.entities import Metric, Param, RunTag
            from mlflow.tracking import MlflowClient
        except ImportError as exc:
            raise kit.KitError("the mlflow logger needs the mlflow package",
                               hint="install `kit-trainer[mlflow]`") from exc
        self._client_cls, self._metric, self._param, self._tag = MlflowClient, Metric, Param, RunTag
        self.options = options or self.Options()
        self.client: Any = None
        self.run_id: str | None = None
        self.tracking_uri = ""
        self._pending: list[Any] = []
        self._flush_at = 0.0
        self._ends_run = True

    # -- start ---------------------------------------------------------------------

    def _uri(self, trainer: Trainer) -> tuple[str, str | None]:
        """The tracking URI, and an artifact location when kit chose the store."""
        uri = self.options.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if uri:
            return uri, None
        runs_dir = Path(trainer.config.runs_dir).resolve()
        runs_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{runs_dir / 'mlflow.db'}", (runs_dir / "mlartifacts").as_uri()

    def _experiment_id(self, name: str, artifacts: str | None) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        return str(self.client.create_experiment(name, artifact_location=artifacts))

    @kit.hookimpl
    def kit_train_begin(self, trainer: Trainer) -> None:
        if trainer.run_dir is None or not trainer.is_global_zero:
            return
        self.tracking_uri, artifacts = self._uri(trainer)
        self.client = self._client_cls(tracking_uri=self.tracking_uri)
        state_file = trainer.run_dir / "mlflow.json"
        previous = json.loads(state_file.read_text()) if state_file.is_file() else {}
        self._ends_run = trainer.trains
        if previous.get("tracking_uri") == self.tracking_uri and previous.get("run_id"):
            self.run_id = str(previous["run_id"])  # continue/evaluate: the same MLflow run
            if trainer.trains:
                self.client.update_run(self.run_id, status="RUNNING")
        else:
            experiment = self._experiment_id(self.options.experiment or trainer.config.experiment, artifacts)
            run = self.client.create_run(experiment, run_name=self.options.run_name or trainer.run_dir.name)
            self.run_id = str(run.info.run_id)
            kit.write_json(state_file, {"tracking_uri": self.tracking_uri, "run_id": self.run_id})
        if not trainer.trains:
            return
        logged = self.client.get_run(self.run_id).data.params
        params = [self._param(k, str(v)[:_MAX_PARAM]) for k, v in sorted(trainer.hparams().items())
                  if k not in logged]  # params are immutable in MLflow: a resumed run adds new ones only
        tags = {"kit.experiment": trainer.config.experiment, "kit.run_id": trainer.run_dir.name,
                "kit.mode": trainer.mode, "kit.backend": trainer.config.backend.name,
                "kit.run_dir": str(trainer.run_dir), "kit.version": kit.__version__, **self.options.tags}
        for start in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[start:start + 100])
        self.client.log_batch(self.run_id, tags=[self._tag(k, str(v)) for k, v in tags.items()])
        self.client.log_artifact(self.run_id, str(trainer.run_dir / "config.yaml"))

    # -- metrics -------------------------------------------------------------------

    @kit.hookimpl
    def kit_metric_recorded(self, record: MetricRecord) -> None:
        if self.run_id is None:
            return
        if record.kind == "scalar":
            self._pending.append(self._metric(record.name, float(record.value),
                                              int(record.wall_time * 1000), record.step))
        elif record.kind == "text":
            self.client.log_text(self.run_id, str(record.value),
                                 f"text/{record.name}/step-{record.step:08d}.txt")
        if len(self._pending) >= _MAX_BATCH or time.monotonic() >= self._flush_at:
            self._flush()

    def _flush(self) -> None:
        self._flush_at = time.monotonic() + self.options.flush_seconds
        while self._pending:
            batch, self._pending = self._pending[:_MAX_BATCH], self._pending[_MAX_BATCH:]
            self.client.log_batch(self.run_id, metrics=batch)

    # -- end -----------------------------------------------------------------------

    @kit.hookimpl
    def kit_train_end(self, trainer: Trainer) -> None:
        if self.run_id is None:
            return
        try:
            self._flush()
            store = trainer.checkpoints
            best = store.best() if store is not None and self.options.log_best_checkpoint else None
            if best is not None:
                self.client.log_artifacts(self.run_id, str(best), f"checkpoints/{best.name}")
        finally:
            if self._ends_run:
                self.client.set_terminated(self.run_id, status=_STATUS.get(trainer.status, "FAILED"))
            self.run_id = None
