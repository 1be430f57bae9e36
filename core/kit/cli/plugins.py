"""``kit plugins list``: every installed plugin, found without importing any of them.

``--hooks`` is the exception: to say in which order a run calls each hook's
implementations it builds the run's plugin manager, which imports the plugins.
"""

from __future__ import annotations

import json
import textwrap
from typing import TYPE_CHECKING, Any

import click

from kit.cli import CliState, KitCliError
from kit.errors import KitError
from kit.plugins.discovery import AUTOLOAD_ENV, GROUPS, EntryPointSpec, autoload_enabled

if TYPE_CHECKING:
    from kit.plugins.manager import KitPluginManager

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
@click.option("--hooks", "by_hook", is_flag=True,
              help="Show each hook's implementations in the order a run calls them.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table.")
@click.pass_obj
def list_(state: CliState, groups: tuple[str, ...], check: bool, by_hook: bool, as_json: bool) -> None:
    """List plugins by group: name, package, version and status.

    Without --check nothing is imported: a missing module shows as an error and a
    plugin whose optional dependency is not installed as unavailable (with what to
    install); an error inside a plugin's code shows with --check. The exit code is 0
    without --check, whatever the rows say; with --check it is 1 when any listed plugin
    has an error (unavailable ones are not errors), after the whole list is printed.

    --hooks imports and loads the plugins a run would (autoloaded ones, `-p NAME`,
    not `-p no:NAME`; loggers and a config's `plugins:` are not included) and prints,
    for each hook in firing order, its implementations in call order, marked
    tryfirst, trylast, wrapper or hookwrapper (wrappers run around the rest; a
    firstresult hook stops at the first result), then the installed plugins not
    loaded and why. With --json: one line per hook, then one per plugin not loaded.
    """
    if by_hook:
        if groups or check:
            raise KitCliError("--hooks takes no --group or --check: it loads every plugin a run would")
        _list_hooks(state, as_json)
        return
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


# -- --hooks: call order, from the run's own plugin manager ------------------------------

_MARKERS = ("tryfirst", "trylast", "wrapper", "hookwrapper")


def _run_manager(state: CliState) -> KitPluginManager:
    """The plugin manager ``kit run`` builds, less what only a config adds (loggers, ``plugins:``)."""
    from kit.plugins.manager import PluginChoice, get_plugin_manager

    choices = [PluginChoice("kit.plugins", name, where=f"-p {name}") for name in state.enabled]
    return get_plugin_manager(choices=choices, registry=state.registry, blocked=state.blocked)


def _call_order(pm: KitPluginManager) -> list[dict[str, Any]]:
    """Each hook of the contract, in firing order, with its implementations in call order.

    pluggy keeps a hook's implementations sorted so that it calls them last to first
    (``_multicall`` walks ``get_hookimpls()`` reversed): wrappers, then the others, each
    tryfirst before plain before trylast, later registrations before earlier ones.
    """
    from kit import hookspecs

    hooks = []
    for name in hookspecs.HOOK_NAMES:
        caller = getattr(pm.hook, name)
        spec = caller.spec
        impls = [{"plugin": pm.label(impl.plugin_name, impl.plugin),
                  "markers": [m for m in _MARKERS if getattr(impl, m)]}
                 for impl in reversed(caller.get_hookimpls())]
        hooks.append({"hook": name, "firstresult": bool(spec and spec.opts.get("firstresult")),
                      "implementations": impls})
    return hooks


def _not_loaded(pm: KitPluginManager, state: CliState) -> list[dict[str, str]]:
    """Installed ``kit.plugins`` the manager left out, and why (opt-in ones are imported to tell)."""
    rows = []
    for spec in state.registry.group("kit.plugins"):
        taken = pm.labels.get(spec.name)
        if taken == spec.label:
            continue
        if taken is not None:
            why = f"not loaded: {taken} has the name"
        elif pm.is_blocked(spec.name):
            why = f"blocked (-p no:{spec.name})"
        elif not autoload_enabled():
            why = f"not autoloaded ({AUTOLOAD_ENV})"
        elif getattr(spec.load(), "autoload", True) is False:
            why = f"opt-in (plugins: or -p {spec.name})"
        else:  # nothing above applies; say so rather than guess
            why = "not loaded"
        rows.append({"plugin": spec.label, "status": why})
    return rows


def _list_hooks(state: CliState, as_json: bool) -> None:
    pm = _run_manager(state)
    hooks, absent = _call_order(pm), _not_loaded(pm, state)
    if as_json:
        for row in [*hooks, *absent]:
            click.echo(json.dumps(row))
        return
    click.echo("\n".join(_hook_lines(hooks, absent)))


def _hook_lines(hooks: list[dict[str, Any]], absent: list[dict[str, str]]) -> list[str]:
    """Readable at 80 columns: one block per implemented hook, the rest summed up below."""
    lines = ["Hooks in firing order, each with its implementations in call order:"]
    for hook in hooks:
        impls = hook["implementations"]
        if not impls:
            continue
        lines.append(hook["hook"] + ("  (firstresult: the first non-None result wins)"
                                     if hook["firstresult"] else ""))
        width = max(len(impl["plugin"]) for impl in impls)
        lines += [f"  {i}. {impl['plugin']:<{width}}  {' '.join(impl['markers'])}".rstrip()
                  for i, impl in enumerate(impls, 1)]
    unused = [hook["hook"] for hook in hooks if not hook["implementations"]]
    if unused:
        lines += textwrap.wrap(f"Not implemented by any loaded plugin ({len(unused)}): "
                               + ", ".join(unused), width=80, subsequent_indent="  ",
                               break_on_hyphens=False)
    if absent:
        width = max(len(row["plugin"]) for row in absent)
        lines += ["Installed, not loaded:",
                  *(f"  {row['plugin']:<{width}}  {row['status']}" for row in absent)]
    return lines
