"""Generate docs/reference/{hooks,cli}.md from the code, or check they are current.

    python docs/generate.py --check   # exit 1 if a reference is stale (nox -s docs)
    python docs/generate.py --write
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import click

from kit import hookspecs
from kit.cli import main

REFERENCE = Path(__file__).resolve().parent / "reference"


def hooks_md() -> str:
    out = ["# Hook reference", "", "Generated from `kit/hookspecs.py` by `docs/generate.py`.", "",
           "```text", inspect.cleandoc(hookspecs.__doc__ or ""), "```", ""]
    for name in hookspecs.HOOK_NAMES:
        fn = getattr(hookspecs, name)
        params = ", ".join(inspect.signature(fn).parameters)
        out += [f"## `{name}({params})`", "", inspect.getdoc(fn) or "", ""]
    return "\n".join(out)


def cli_md() -> str:
    out = ["# CLI reference", "", "Generated from the click commands by `docs/generate.py`.", ""]

    def walk(command: click.Command, path: list[str], parent: click.Context | None) -> None:
        ctx = click.Context(command, info_name=path[-1], parent=parent, terminal_width=88)
        out.extend([f"## `{' '.join(path)}`", "", "```text", command.get_help(ctx), "```", ""])
        if isinstance(command, click.Group):
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                if sub is not None:
                    walk(sub, [*path, name], ctx)

    walk(main, ["kit"], None)
    return "\n".join(out)


def main_() -> int:
    mode = sys.argv[1] if len(sys.argv) > 1 else "--check"
    stale = []
    for name, text in (("hooks.md", hooks_md()), ("cli.md", cli_md())):
        path = REFERENCE / name
        if mode == "--write":
            path.write_text(text)
        elif not path.is_file() or path.read_text() != text:
            stale.append(name)
    if stale:
        print(f"stale: {', '.join(stale)}; run `nox -s docs -- --write`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main_())
