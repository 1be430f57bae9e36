"""``kit run``: train, resume or evaluate, as the mode says."""

from __future__ import annotations

from pathlib import Path

import click

from kit.cli import CliState

__all__ = ["run"]


@click.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--mode", default="new", show_default=True,
              help="The trainer state to run: an entry point in kit.states.")
@click.option("--backend", default=None, help="Override the config's backend.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set training.iterations=5. Repeatable.")
@click.option("--run-dir", type=click.Path(path_type=Path), default=None,
              help="continue/auto/evaluate: the run to use (default: the experiment's latest).")
@click.option("--checkpoint", default=None, metavar="best|last|PATH",
              help="evaluate: the checkpoint to load (default: best if one was monitored, else last).")
@click.option("--allow-config-change", is_flag=True,
              help="continue: accept config changes that can break an exact resume.")
@click.pass_obj
def run(state: CliState, config: Path, mode: str, backend: str | None,
        overrides: tuple[str, ...], run_dir: Path | None, checkpoint: str | None,
        allow_config_change: bool) -> None:
    """Run CONFIG (YAML or TOML) in the given mode: new, continue, auto, evaluate, or a plugin's.

    SIGTERM, SIGINT and SIGUSR1 stop a run after the current step with a checkpoint saved
    (exit code 128+signal); `--mode continue` picks it up exactly there. `--mode auto`
    continues the latest run unless it finished, else starts a new one: the same command
    line for a job's first start and every requeue.
    """
    from kit.config import PluginConfig, load_config
    from kit.plugins import blame
    from kit.trainer import Trainer

    cfg = load_config(config, overrides)
    listed = {p.name for p in cfg.plugins}
    cfg.plugins = [*cfg.plugins, *(PluginConfig(name=n) for n in state.enabled if n not in listed)]
    trainer = Trainer(cfg, mode=mode, backend=backend, registry=state.registry,
                      blocked=state.blocked, run_dir=run_dir, checkpoint=checkpoint,
                      allow_config_change=allow_config_change)
    try:
        trainer.run()
    except Exception as exc:  # a plugin's failure is named with its hook, above its own frames
        blamed = blame(exc, trainer.pm)
        if blamed is None:
            raise
        raise blamed from exc
