"""``kit hooks``: every hook of the contract with its one-line summary."""

from __future__ import annotations

import click

__all__ = ["hooks"]


@click.command()
@click.option("--args", "show_args", is_flag=True, help="Show each hook's arguments too.")
def hooks(show_args: bool) -> None:
    """List the hooks plugins can implement, in firing order."""
    import inspect

    from kit import hookspecs

    width = max(len(name) for name in hookspecs.HOOK_NAMES)
    for name in hookspecs.HOOK_NAMES:
        fn = getattr(hookspecs, name)
        summary = (inspect.getdoc(fn) or "").splitlines()[0]
        if show_args:
            params = ", ".join(inspect.signature(fn).parameters)
            click.echo(f"{name}({params})\n    {summary}")
        else:
            click.echo(f"{name:<{width}}  {summary}")
