"""``kit config show|schema``: the resolved configuration and its JSON schema."""

from __future__ import annotations

import json
from pathlib import Path

import click

__all__ = ["config"]


@click.group()
def config() -> None:
    """Inspect configurations."""


@config.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value. Repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of YAML.")
def show(path: Path, overrides: tuple[str, ...], as_json: bool) -> None:
    """Print PATH fully resolved: defaults filled in, overrides applied, validated."""
    import yaml

    from kit.config import load_config

    resolved = load_config(path, overrides).resolved()
    if as_json:
        click.echo(json.dumps(resolved, indent=2))
    else:
        click.echo(yaml.safe_dump(resolved, sort_keys=False), nl=False)


@config.command()
def schema() -> None:
    """Print the JSON schema of a kit config (for editors and validation)."""
    from kit.config import KitConfig

    click.echo(json.dumps(KitConfig.model_json_schema(), indent=2))
