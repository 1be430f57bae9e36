"""The ``kit`` command line: a click group whose commands come from ``kit.commands``.

Commands are found through entry points (kit's own too) and imported only when run,
or, for kit's own, when ``--help`` needs their summary. This module is also the one
place where a :class:`~kit.errors.KitError` or a pydantic ``ValidationError`` becomes
one line on stderr and exit code 2 (``--debug`` shows the traceback instead).
"""

from __future__ import annotations

import signal
import sys
from dataclasses import dataclass, field
from typing import Any, NoReturn

import click

from kit import report
from kit._version import __version__
from kit.env import DEBUG, flag
from kit.errors import DiskFullError, KitError, PluginError, disk_full, validation_message
from kit.plugins.discovery import EntryPointSpec, Registry
from kit.report import launched_rank

__all__ = ["CliState", "KitCliError", "KitGroup", "main"]

BUILTIN_PACKAGE = "kit-trainer"


class KitCliError(click.ClickException):
    """A user error, shown as ``Error: …`` with exit code 2."""

    exit_code = 2


@dataclass
class CliState:
    """What the group's options hand to every command (``ctx.obj``)."""

    debug: bool = False
    quiet: bool = False
    blocked: list[str] = field(default_factory=list)
    enabled: list[str] = field(default_factory=list)
    _registry: Registry | None = None

    @property
    def registry(self) -> Registry:
        """The installed entry points, read from package metadata once per invocation."""
        if self._registry is None:
            self._registry = Registry.from_environment()
        return self._registry


def _is_validation_error(exc: BaseException) -> bool:
    pydantic = sys.modules.get("pydantic")  # never import it just to check
    return pydantic is not None and isinstance(exc, pydantic.ValidationError)


def _user_error(exc: BaseException) -> NoReturn:
    if isinstance(exc, PluginError):  # the plugin's own frames: what its author can act on
        click.echo(f"Traceback from {exc.label}'s {exc.hook} (kit's frames: `kit --debug …`):\n"
                   f"{exc.frames}", err=True)
    if isinstance(exc, KitError):
        # click.ClickException is ``Error: …`` with exit code 1: a failed run, not bad input
        where = f"rank {launched_rank()}: " if launched_rank() else ""  # with several processes, which one
        raise (KitCliError if exc.exit_code == KitCliError.exit_code else click.ClickException)(
            where + str(exc)) from exc
    errors = exc.errors()  # type: ignore[attr-defined]
    err = errors[0]
    loc = ".".join(str(p) for p in err["loc"])
    message = validation_message(err)
    raise KitCliError(f"{loc}: {message}" if loc else message) from exc


class KitGroup(click.Group):
    """Resolves subcommands through the ``kit.commands`` entry points."""

    def _specs(self, ctx: click.Context) -> dict[str, EntryPointSpec]:
        # click resolves the command and renders --help before the group's callback runs,
        # so the state (and its one registry) is made here, on the context that outlives it
        state = ctx.ensure_object(CliState)
        specs: dict[str, EntryPointSpec] = {}
        for spec in state.registry.group("kit.commands"):
            # kit's own command wins a name clash; among others the sort order decides
            if spec.name not in specs or spec.package == BUILTIN_PACKAGE:
                specs[spec.name] = spec
        return specs

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._specs(ctx)))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        builtin = super().get_command(ctx, cmd_name)
        if builtin is not None:
            return builtin
        spec = self._specs(ctx).get(cmd_name)
        if spec is None:
            return None
        try:
            command = spec.load()
        except KitError as exc:
            raise KitCliError(str(exc)) from exc
        if not isinstance(command, click.Command):
            raise KitCliError(f"command {spec.label} is a {type(command).__name__}, not a click command")
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """List commands without importing any third-party one."""
        rows = []
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max((len(n) for n in names), default=0)
        specs = self._specs(ctx)
        for name in names:
            spec = specs.get(name)
            if spec is not None and spec.package != BUILTIN_PACKAGE:
                rows.append((name, f"(from {spec.package}; run `kit {name} --help`)"))
                continue
            try:
                command = self.get_command(ctx, name)
            except click.ClickException as exc:
                rows.append((name, f"(broken: {exc.message})"))
                continue
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            signum = getattr(exc, "signum", signal.SIGINT)
            saved = getattr(exc, "checkpoint", None)
            how = " again: stopped at once, the last checkpoint is kept" if getattr(exc, "aborted", False) \
                else ""
            if launched_rank() == 0:  # every rank stopped alike; rank zero says so
                click.echo(f"Interrupted by {signal.Signals(signum).name}{how}"
                           + (f"; checkpoint saved at {saved}" if saved else "")
                           + ("; resume with --mode continue" if saved or how else "."), err=True)
            ctx.exit(128 + int(signum))
        except Exception as exc:
            full = disk_full(exc) if not isinstance(exc, KitError) else None
            if full is not None:  # a full disk before or outside a run: one line, exit 1
                exc = DiskFullError(full.filename or "a file")
            elif not (isinstance(exc, KitError) or _is_validation_error(exc)):
                raise
            state = ctx.find_object(CliState)
            if state is not None and state.debug:
                raise
            _user_error(exc)


def _parse_plugin_flags(values: tuple[str, ...]) -> tuple[list[str], list[str]]:
    blocked = [v[3:] for v in values if v.startswith("no:")]
    enabled = [v for v in values if not v.startswith("no:")]
    return blocked, enabled


@click.group(cls=KitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kit", message="%(prog)s %(version)s")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors (or set "
              "KIT_DEBUG=1).")
@click.option("-p", "plugin_flags", multiple=True, metavar="NAME",
              help="Load plugin NAME even with autoload off; `-p no:NAME` blocks it, `-p "
                   "no:PACKAGE[NAME]` only that package's. Repeatable.")
@click.option("-q", "--quiet", is_flag=True,
              help="Only warnings and errors: no notices, no console logger.")
@click.pass_context
def main(ctx: click.Context, debug: bool, plugin_flags: tuple[str, ...], quiet: bool) -> None:
    """kit: train, validate, test, log and checkpoint PyTorch models, all through plugins."""
    blocked, enabled = _parse_plugin_flags(plugin_flags)
    state = ctx.ensure_object(CliState)
    state.debug = debug or flag(DEBUG)
    state.quiet = quiet
    if quiet:
        report.quiet()
        ctx.call_on_close(lambda: report.quiet(False))  # the logger outlives one command in-process
    state.blocked, state.enabled = blocked, enabled
    if any("[" in name for name in blocked):  # -p no:package[entry]: choose between two packages
        state._registry = state.registry.without(blocked)
