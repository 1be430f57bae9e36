"""Generate docs/reference/{hooks,cli}.md from the code, or check they are current.

    python docs/generate.py --check   # exit 1 if a reference is stale (nox -s docs)
    python docs/generate.py --write   # regenerate them

The hook reference is ``kit/hookspecs.py``'s own text. The CLI reference is what click
prints for ``kit … --help``: each command's help is rendered by click itself, in a
context built the way click builds it for a real invocation (so the group's context
settings, ``-h, --help`` included, reach every command), at the width click uses in
any terminal at least 80 columns wide. Only kit's own commands are listed, so a
third-party command installed on the machine never leaks into the reference.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

import click

from kit import hookspecs
from kit.cli import BUILTIN_PACKAGE, CliState, main
from kit.plugins.discovery import Registry

__all__ = ["REFERENCE", "cli_md", "hooks_md", "main_", "render", "stale"]

REFERENCE = Path(__file__).resolve().parent / "reference"

HELP_WIDTH = 78
"""click's help width in a terminal of 80 columns or more: ``min(columns, 80) - 2``."""


def hooks_md() -> str:
    out = ["# Hook reference", "", "Generated from `core/kit/hookspecs.py` by `docs/generate.py`.", "",
           "```text", inspect.cleandoc(hookspecs.__doc__ or ""), "```", ""]
    for name in hookspecs.HOOK_NAMES:
        fn = getattr(hookspecs, name)
        params = ", ".join(inspect.signature(fn).parameters)
        out += [f"## `{name}({params})`", "", inspect.getdoc(fn) or "", ""]
    return "\n".join(out)


def _builtin_commands_only() -> CliState:
    """The CLI's state with a registry of kit's own commands: the reference must not
    depend on what else happens to be installed."""
    registry = Registry.from_environment()
    return CliState(_registry=Registry(
        spec for spec in registry.specs if spec.group != "kit.commands" or spec.package == BUILTIN_PACKAGE))


def cli_md() -> str:
    out = ["# CLI reference", "",
           "Generated from the click commands by `docs/generate.py`: each section is exactly what "
           "`kit … --help` prints.", ""]

    def walk(command: click.Command, path: list[str], parent: click.Context | None,
             **settings: object) -> None:
        # make_context applies the command's context_settings and inherits the parent's,
        # as a real `kit … --help` does; resilient parsing skips required arguments
        ctx = command.make_context(path[-1], [], parent=parent, resilient_parsing=True, **settings)
        out.extend([f"## `{' '.join(path)}`", "", "```text", command.get_help(ctx), "```", ""])
        if isinstance(command, click.Group):
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                if sub is not None and not sub.hidden:
                    walk(sub, [*path, name], ctx)

    walk(main, ["kit"], None, obj=_builtin_commands_only(), terminal_width=HELP_WIDTH)
    return "\n".join(out)


def render() -> dict[str, str]:
    """Every reference file's name and its current text."""
    return {"hooks.md": hooks_md(), "cli.md": cli_md()}


def stale(folder: Path = REFERENCE) -> list[str]:
    """The reference files in ``folder`` that are missing or differ from the code."""
    return [name for name, text in render().items()
            if not (folder / name).is_file() or (folder / name).read_text(encoding="utf-8") != text]


def main_(argv: list[str] | None = None, folder: Path = REFERENCE) -> int:
    parser = argparse.ArgumentParser(description="Generate or check docs/reference.")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--check", action="store_true", help="exit 1 if a reference is stale (default)")
    action.add_argument("--write", action="store_true", help="regenerate the references")
    args = parser.parse_args(argv)
    if args.write:
        for name, text in render().items():
            (folder / name).write_text(text, encoding="utf-8")
        return 0
    names = stale(folder)
    if names:
        print(f"stale: {', '.join(names)} in {folder}; run `python docs/generate.py --write` "
              "(or `nox -s docs -- --write`)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main_())
