"""Developer tasks. `nox -s quickstart` and `nox -s tests` need nothing but nox installed.

Torch is installed first and pinned (KIT_TORCH, default torch==2.13.0) so the project's
`torch>=2.2` requirement is already met and no other build is pulled in.
"""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "docs"]
nox.options.reuse_existing_virtualenvs = True

PYPROJECT = nox.project.load_toml("pyproject.toml")
TORCH = os.environ.get("KIT_TORCH", "torch==2.13.0")


def install(session: nox.Session, *args: str, groups: tuple[str, ...] = ()) -> None:
    session.install(TORCH)
    for group in groups:
        session.install(*nox.project.dependency_groups(PYPROJECT, group))
    session.install(*args)


@nox.session
def quickstart(session: nox.Session) -> None:
    """Train the digits MLP example (scikit-learn's data set ships in the package)."""
    install(session, "-e", ".[examples,safetensors]")
    session.run("kit", "run", "examples/digits/config.yaml", *session.posargs)


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (pass pytest arguments after --)."""
    install(session, "-e", ".", groups=("test",))
    # one worker per core; a file's tests stay together so its module fixtures are built once
    session.run("pytest", "-n", "auto", "--dist", "loadfile", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint and import order."""
    session.install(*nox.project.dependency_groups(PYPROJECT, "lint"))
    session.run("ruff", "check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on kit, kit_backends and kit_contrib."""
    install(session, "-e", ".[safetensors,lightning]", groups=("typecheck",))
    session.run("mypy")


@nox.session
def docs(session: nox.Session) -> None:
    """Check the generated references in docs/ match the code (`-- --write` regenerates)."""
    install(session, "-e", ".")
    session.run("python", "docs/generate.py", *(session.posargs or ["--check"]))


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks against raw PyTorch in one run: `-- loop_overhead` (default: all of them)."""
    install(session, "-e", ".[tensorboard,mlflow,safetensors,lightning]")
    names = session.posargs or ["loop_overhead", "logger_overhead", "checkpoint_io", "ddp_overhead",
                                 "lightning_overhead"]
    for name in names:
        session.run("python", f"benchmarks/{name.removesuffix('.py')}.py")
