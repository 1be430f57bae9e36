"""``kit plugins list``: every installed plugin, found without importing any of them."""

from __future__ import annotations

import json

import click

from kit.cli import CliState
from kit.errors import KitError
from kit.plugins.discovery import AUTOLOAD_ENV, GROUPS, EntryPointSpec, autoload_enabled

__all__ = ["plugins"]


@click.group()
def plugins() -> None:
    """Inspect installed plugins."""


def _status(spec: EntryPointSpec, state: CliState, check: bool, clashes: set[tuple[str, str]]) -> str:
    problems = spec.problems()
    if (spec.group, spec.name) in clashes:
        problems.append(f"name clash: several packages provide {spec.group} {spec.name!r}")
    unavailable = spec.unavailable(state.registry)
    if not problems and unavailable:  # optional and not installed: not a broken plugin
        return f"unavailable: {unavailable}"
    if not problems and check:
        try:
            spec.load()
        except KitError as exc:
            problems.append(exc.message.split(" failed to load: ", 1)[-1])
    if problems:
        return "error: " + "; ".join(problems)
    if spec.name in state.blocked:
        return "blocked (-p no:)"
    if spec.group == "kit.plugins" and not autoload_enabled() \
            and spec.name not in state.enabled:
        return f"not autoloaded ({AUTOLOAD_ENV})"
    return "ok"


@plugins.command("list")
@click.option("--group", "groups", multiple=True, type=click.Choice(GROUPS),
              help="Only this entry-point group. Repeatable.")
@click.option("--check", is_flag=True,
              help="Also import each plugin to catch import errors; exit 1 if any row is an error.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table.")
@click.pass_obj
def list_(state: CliState, groups: tuple[str, ...], check: bool, as_json: bool) -> None:
    """List plugins by group: name, package, version and status.

    Without --check nothing is imported: a missing module shows as an error and a
    plugin whose optional dependency is not installed as unavailable (with what to
    install); an error inside a plugin's code shows with --check. The exit code is 0
    without --check, whatever the rows say; with --check it is 1 when any listed plugin
    has an error (unavailable ones are not errors), after the whole list is printed.
    """
    specs = [s for s in state.registry.specs if not groups or s.group in groups]
    seen: dict[tuple[str, str], set[str]] = {}
    for s in specs:
        seen.setdefault((s.group, s.name), set()).add(s.package)
    clashes = {key for key, packages in seen.items() if len(packages) > 1}
    rows = [(s, _status(s, state, check, clashes)) for s in specs]
    if as_json:
        for s, status in rows:
            click.echo(json.dumps({"group": s.group, "name": s.name, "package": s.package,
                                   "version": s.version, "value": s.value, "status": status}))
    else:
        _print_table(rows)
    failed = [s.label for s, status in rows if status.startswith("error")]
    if check and failed:
        many = "s" if len(failed) > 1 else ""
        raise click.ClickException(f"--check found {len(failed)} broken plugin{many}: {', '.join(failed)}")


def _print_table(rows: list[tuple[EntryPointSpec, str]]) -> None:
    """A rich table whose cells are plain text: ``pkg[extra]`` from metadata is not markup."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, pad_edge=False)
    for column in ("group", "name", "package", "version", "status"):
        table.add_column(column, overflow="fold")
    for s, status in rows:
        style = "red" if status.startswith("error") else ""
        table.add_row(*(Text(cell, style=style) for cell in (s.group, s.name, s.package, s.version, status)))
    Console(highlight=False).print(table)
