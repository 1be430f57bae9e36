"""``kit runs list``: every run's status, progress and best metric, from its files alone."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from kit.errors import ConfigError

__all__ = ["runs"]

DEFAULT = Path("runs")


@click.group()
def runs() -> None:
    """Inspect runs."""


@runs.command("list")
@click.argument("runs_dir", type=click.Path(path_type=Path), required=False)
@click.option("--experiment", default=None, help="Only this experiment's runs.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table.")
def list_(runs_dir: Path | None, experiment: str | None, as_json: bool) -> None:
    """Show each run under RUNS_DIR (default: runs): running, finished, interrupted, crashed, failed."""
    from kit.manifest import show_name
    from kit.runs import list_runs, run_info

    runs_dir = runs_dir or DEFAULT
    hint = "pass the folder that holds <experiment>/<run-id>/ (default: runs)"
    if os.path.exists(runs_dir) and not os.path.isdir(runs_dir):
        raise ConfigError(f"{show_name(runs_dir)} is a file, not a runs folder", hint=hint)
    if not os.path.exists(runs_dir) and runs_dir != DEFAULT:  # no runs yet under the default is no error
        raise ConfigError(f"runs folder {show_name(runs_dir)} not found", hint=hint)
    infos = [run_info(p) for p in list_runs(runs_dir, experiment)]
    if as_json:
        for info in infos:
            click.echo(json.dumps({"run": str(info.path), "status": info.status,
                                   "iteration": info.iteration, "iterations": info.iterations,
                                   "best": info.best}))
        return
    if not infos:
        click.echo(f"no runs under {show_name(runs_dir)}")
        return
    rows = [("RUN", "STATUS", "PROGRESS", "BEST")]
    for info in infos:  # every name below comes from disk: shown so that it cannot split a line
        progress = f"{info.iteration if info.iteration is not None else '?'}/{info.iterations or '?'}"
        best = "-"
        if info.best:
            best = f"{show_name(info.best['name'])}={info.best['value']:.4g} @ step {info.best['step']}"
        rows.append((show_name(f"{info.path.parent.name}/{info.path.name}"), show_name(info.status),
                     progress, best))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
