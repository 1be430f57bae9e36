"""kit's built-in modes: ``new``, ``continue``, ``auto`` and ``evaluate``, on one template.

Each is a :class:`~kit.interfaces.State` registered in ``kit.states``; a package adds
its own mode the same way (see ``docs/plugins.md``).
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any, ClassVar

import yaml
from pydantic import ValidationError

from kit._version import __version__
from kit.checkpoint import check_kit_checkpoint, checkpoint_folder
from kit.config import KitConfig
from kit.configdiff import Change, check_changes, diff_configs
from kit.errors import CheckpointError, ConfigError
from kit.interfaces import State
from kit.report import say, warn
from kit.rundir import create_run_dir, write_json, write_text
from kit.runs import find_run, latest_run, run_info

__all__ = ["AutoResume", "ContinueTraining", "EvaluateOnly", "TrainNew", "format_results", "save_run_config"]


RUN_CONFIG_HEADER = "# kit run:"
"""The first line kit writes into a run's ``config.yaml``: what tells a run from a project folder."""


def save_run_config(run_dir: Path, config: dict[str, Any]) -> None:
    """Write the run's ``config.yaml``, marked as kit's so a project folder is never taken for a run."""
    header = (f"{RUN_CONFIG_HEADER} the resolved config this run started with (kit {__version__}); "
              "kit reads it back to resume\n")
    write_text(run_dir / "config.yaml", header + yaml.safe_dump(config, sort_keys=False))


def _check_is_run(run_dir: Path) -> Path:
    """``run_dir`` if it is a kit run: kit wrote its ``config.yaml`` (or, for runs older than that
    header, it has a summary or checkpoints). A project folder that merely holds a
    ``config.yaml`` is refused, so kit never writes its run files there."""
    try:
        with (run_dir / "config.yaml").open(encoding="utf-8", errors="replace") as fh:
            first = fh.readline(200)
    except OSError:
        first = ""
    if first.startswith(RUN_CONFIG_HEADER) or (run_dir / "summary.json").is_file() \
            or (run_dir / "checkpoints").is_dir():
        return run_dir
    raise ConfigError(f"{run_dir} does not look like a kit run: kit did not write its config.yaml, and it "
                      "has no summary or checkpoints", key="--run-dir",
                      hint="pass a run folder, runs/<experiment>/<run-id> (`kit runs list` shows them)")


def _saved_config(run_dir: Path) -> dict[str, Any]:
    """The run's ``config.yaml`` with today's defaults filled in, or a clear error."""
    path = run_dir / "config.yaml"
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read the run's saved config {path}: {type(exc).__name__}",
                          key="--run-dir", hint="restore the file, or start a new run") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"the run's saved config {path} is not a mapping", key="--run-dir",
                          hint="restore the file, or start a new run")
    with contextlib.suppress(ValidationError):  # defaults added since the run was saved
        saved = KitConfig.model_validate(saved).resolved()
    return saved


class TrainNew(State):
    """Train a new model in a new run directory, then test it."""

    name: ClassVar[str] = "new"

    def open_run_dir(self) -> Path:
        trainer = self.trainer
        if trainer.requested_run_dir is not None:
            raise ConfigError(f"mode {self.name} always starts a new run directory", key="--run-dir",
                              hint="drop --run-dir, or use --mode continue, auto or evaluate on that run")
        return self.new_run_dir()

    def new_run_dir(self) -> Path:
        """A new run directory under ``runs_dir/experiment``, holding the resolved config."""
        config = self.trainer.config
        run_dir = create_run_dir(config.runs_dir, config.experiment)
        save_run_config(run_dir, config.resolved())
        return run_dir

    def execute(self) -> None:
        trainer = self.trainer
        trainer.fit()
        if trainer.test_loader is not None:
            trainer.test()


class ContinueTraining(TrainNew):
    """Resume a run exactly from its newest valid checkpoint, mid-epoch included.

    The run is ``--run-dir`` or the experiment's latest. A config that differs from the
    run's saved one is shown as a diff; changes that could break an exact resume are
    refused unless ``--allow-config-change``, and accepted ones are recorded in
    ``config_changes.jsonl``. A larger ``training.iterations`` extends a finished run.
    """

    name: ClassVar[str] = "continue"

    def open_run_dir(self) -> Path:
        trainer = self.trainer
        cfg = trainer.config
        return _check_is_run(find_run(cfg.runs_dir, cfg.experiment, trainer.requested_run_dir,
                                      mode="continue"))

    def restore(self) -> None:
        trainer = self.trainer
        run_dir, store = trainer.run_dir, trainer.checkpoints
        assert run_dir is not None and store is not None
        saved = _saved_config(run_dir)
        new = trainer.config.resolved()
        changes = diff_configs(saved, new)
        check_changes(changes, allow=trainer.allow_config_change)
        for folder, checkpoint in store.valid():  # newest first; one that does not fit is skipped
            try:
                trainer.load_state_dict(checkpoint)
            except CheckpointError as exc:
                warn(f"skipping {folder.name}: {exc}")
                continue
            if changes and trainer.is_global_zero:
                self._accept_changes(run_dir, changes, folder.name, new)
            trainer.last_checkpoint = folder
            say(f"continuing {run_dir} from {folder.name} "
                f"(iteration {trainer.iteration}, step {trainer.global_step})")
            return
        if store.list():  # committed checkpoints, none usable: restarting would throw them away
            raise CheckpointError(
                f"run {run_dir} has checkpoints, but none can be resumed from (each is named above); "
                "nothing was changed", hint="restore one, or start a new run with --mode new")
        # stopped before its first checkpoint committed: start over, in place
        if changes and trainer.is_global_zero:
            self._accept_changes(run_dir, changes, None, new)
        say(f"{run_dir} has no checkpoint yet: starting it from the beginning")

    @staticmethod
    def _accept_changes(run_dir: Path, changes: list[Change], checkpoint: str | None,
                        new: dict[str, Any]) -> None:
        """Show accepted config changes, record them in ``config_changes.jsonl``, save the new config."""
        say("the config changed since this run was saved:\n"
            + "\n".join(f"  {c}{'' if c.safe else '  (allowed by --allow-config-change)'}"
                        for c in changes))
        with (run_dir / "config_changes.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "checkpoint": checkpoint,
                "changes": [{"key": c.key, "old": c.old, "new": c.new, "safe": c.safe}
                            for c in changes],
            }, default=str) + "\n")
        save_run_config(run_dir, new)


class AutoResume(ContinueTraining):
    """Continue the experiment's latest run, or start a new one when there is none or it
    finished: one command line that is right on the first start and on every requeue.

    A run counts as finished when its summary says so at ``training.iterations`` or more;
    a larger ``iterations`` extends it instead. ``--run-dir`` continues that run.
    """

    name: ClassVar[str] = "auto"
    shared: ClassVar[tuple[str, ...]] = ("fresh",)
    fresh: bool = False

    def open_run_dir(self) -> Path:
        trainer = self.trainer
        cfg = trainer.config
        if trainer.requested_run_dir is not None:
            return super().open_run_dir()
        run = latest_run(cfg.runs_dir, cfg.experiment)
        if run is not None and not _finished(run, cfg.training.iterations):
            return run
        self.fresh = True
        say(f"starting a new run of {cfg.experiment}"
            + (f" ({run.name} finished)" if run is not None else " (none to continue)"))
        return self.new_run_dir()

    def restore(self) -> None:
        if not self.fresh:
            super().restore()


def _finished(run: Path, iterations: int) -> bool:
    info = run_info(run)
    return info.status == "finished" and (info.iteration or 0) >= iterations


class EvaluateOnly(State):
    """Validate and test a checkpoint (``--checkpoint best|last|PATH``); never trains or saves.

    Results are returned (``kit run`` prints them as a table) and written to
    ``evaluate-<checkpoint>.json`` in the run directory (for a PATH outside any run, in a new folder under
    ``runs/<experiment>/evaluations/``, which ``continue`` and ``auto`` never pick up).
    """

    name: ClassVar[str] = "evaluate"
    trains: ClassVar[bool] = False
    locks: ClassVar[bool] = False  # it only reads checkpoints, so it may run beside training
    summary: ClassVar[str | None] = None  # the run's summary.json belongs to its training
    shared: ClassVar[tuple[str, ...]] = ("folder",)

    folder: Path | None = None
    checkpoint: dict[str, Any] | None = None

    def open_run_dir(self) -> Path:
        trainer = self.trainer
        cfg = trainer.config
        requested = trainer.requested_checkpoint
        if requested not in (None, "best", "last"):
            path = Path(str(requested))
            if not path.exists():
                raise ConfigError(f"checkpoint {path} not found", key="--checkpoint",
                                  hint="pass best, last, or a checkpoint folder")
            self.folder = checkpoint_folder(path)
            run_dir = self.folder.parent.parent
            if self.folder.parent.name == "checkpoints" and (run_dir / "config.yaml").is_file():
                return _check_is_run(run_dir)
            # Outside any run: verified before anything is written, and evaluated in
            # runs/<experiment>/evaluations/, where no continue or auto takes it for a run.
            self.checkpoint = trainer.read_checkpoint(self.folder)
            run_dir = create_run_dir(cfg.runs_dir, f"{cfg.experiment}/evaluations")
            save_run_config(run_dir, cfg.resolved())
            return run_dir
        run_dir = find_run(cfg.runs_dir, cfg.experiment, trainer.requested_run_dir, mode="evaluate")
        return _check_is_run(run_dir) if trainer.requested_run_dir is not None else run_dir

    def restore(self) -> None:
        trainer = self.trainer
        store = trainer.checkpoints
        assert store is not None
        requested = trainer.requested_checkpoint
        checkpoint = self.checkpoint
        if self.folder is None and requested in (None, "best"):
            best = store.best()
            if requested == "best" and best is None:
                raise CheckpointError(
                    f"run {trainer.run_dir} has no best checkpoint (no monitored metric was recorded)",
                    hint="set checkpoint.monitor when training, or use --checkpoint last")
            if best is not None:
                try:
                    self.folder, checkpoint = best, store.load(best, check=check_kit_checkpoint)
                except CheckpointError as exc:
                    if requested == "best":
                        raise
                    warn(f"skipping the best checkpoint: {exc}")  # by default, the last one will do
                    self.folder = None
        if self.folder is None:
            found = store.latest()
            if found is None:
                raise CheckpointError(f"run {trainer.run_dir} has no valid checkpoint",
                                      hint="train it first, or pass --checkpoint PATH")
            self.folder, checkpoint = found
        elif checkpoint is None:
            checkpoint = store.load(self.folder, check=check_kit_checkpoint)
        trainer.load_state_dict(checkpoint, resume=False)
        trainer.last_checkpoint = self.folder

    def execute(self) -> None:
        trainer = self.trainer
        assert trainer.run_dir is not None and self.folder is not None
        if trainer.val_loader is not None:
            trainer.validate()
        if trainer.test_loader is not None:
            trainer.test()
        if not trainer.is_global_zero:
            return
        write_json(trainer.run_dir / f"evaluate-{self.folder.name}.json", {
            "checkpoint": str(self.folder), "iteration": trainer.iteration,
            "global_step": trainer.global_step, "results": trainer.results,
        })


def format_results(results: dict[str, dict[str, float]]) -> str:
    """Results by split as an aligned plain-text table (one row per split)."""
    columns = sorted({k for split in results.values() for k in split}, key=lambda k: (k != "loss", k))
    rows = [["split", *columns]] + [
        [split, *(f"{values[c]:.4f}" if c in values else "-" for c in columns)]
        for split, values in results.items()
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows)
    return "\n".join(line.rstrip() for line in lines)
