"""``kit run``: train, resume or evaluate, as the mode says."""

from __future__ import annotations

from pathlib import Path

import click

from kit.cli import CliState

__all__ = ["run"]


@click.command()
@click.argument("config", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--mode", default="new", show_default=True,
              help="The trainer state to run: an entry point in kit.states.")
@click.option("--backend", default=None, help="Override the config's backend.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set training.iterations=5. Repeatable.")
@click.pass_obj
def run(state: CliState, config: Path, mode: str, backend: str | None,
        overrides: tuple[str, ...]) -> None:
    """Run CONFIG (YAML or TOML) in the given mode."""
    from kit.config import PluginConfig, load_config
    from kit.trainer import Trainer

    cfg = load_config(config, overrides)
    listed = {p.name for p in cfg.plugins}
    cfg.plugins = [*cfg.plugins, *(PluginConfig(name=n) for n in state.enabled if n not in listed)]
    trainer = Trainer(cfg, mode=mode, backend=backend, registry=state.registry,
                      blocked=state.blocked)
    trainer.run()
