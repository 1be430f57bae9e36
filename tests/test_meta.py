"""kit's packages as an outside plugin sees them (after pytest's own testing/test_meta.py).

Every module of ``kit``, ``kit_backends`` and ``kit_contrib`` imports on its own with
warnings as errors, and ``kit_backends``, ``kit_contrib``, the example plugin package
and every Python block in the docs use only the names in ``kit.__all__``: kit's own
plugins get no back door that a third-party one lacks.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import inspect
import json
import os
import pkgutil
import re
import subprocess
import sys
import textwrap
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - kit depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("kit", "kit_backends", "kit_contrib")
CLIENTS = (ROOT / "backends" / "kit_backends", ROOT / "contrib" / "kit_contrib",
           ROOT / "tests" / "e2e" / "example_plugin")
DOCS = (*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md")


# -- (a) each module imports cleanly on its own -----------------------------------------------

# One process imports every module, each as if first: the packages' modules already loaded
# are dropped from sys.modules before each import (torch and the like stay, or this would
# cost a torch import per module). A warning is an error (-W error), and so is output.
_IMPORT_EACH = """
import contextlib, importlib, io, json, sys
ours = set(sys.argv[1].split(","))
results = {}
for name in sys.argv[2:]:
    for loaded in [m for m in sys.modules if m.partition(".")[0] in ours]:
        del sys.modules[loaded]
    said = io.StringIO()
    outcome = {"error": None, "missing": None}
    try:
        with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
            importlib.import_module(name)
    except BaseException as exc:
        outcome = {"error": f"{type(exc).__name__}: {exc}",
                   "missing": exc.name if isinstance(exc, ImportError) else None}
    results[name] = {**outcome, "output": said.getvalue()}
print(json.dumps(results))
"""


def import_each(modules: Sequence[str], packages: Sequence[str] = PACKAGES,
                env: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """Each module's import under ``python -W error``: its error, the module it missed, its output."""
    result = subprocess.run([sys.executable, "-W", "error", "-c", _IMPORT_EACH, ",".join(packages),
                             *modules], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    outcomes: dict[str, dict[str, Any]] = json.loads(result.stdout.splitlines()[-1])
    return outcomes


def _walk(package: str, paths: Sequence[str]) -> Iterator[str]:
    yield package
    for info in pkgutil.iter_modules(paths):
        name = f"{package}.{info.name}"
        if info.ispkg:
            yield from _walk(name, [os.path.join(path, info.name) for path in paths])
        elif info.name != "__main__":  # importing kit.__main__ is running kit's CLI
            yield name


def package_modules() -> list[str]:
    """Every module of kit's three packages, found on disk: nothing is imported to list them."""
    names: list[str] = []
    for package in PACKAGES:
        spec = importlib.util.find_spec(package)
        assert spec is not None and spec.submodule_search_locations is not None, package
        names += _walk(package, list(spec.submodule_search_locations))
    return names


@functools.cache
def import_outcomes() -> dict[str, dict[str, Any]]:
    return import_each(package_modules())


def optional_packages() -> dict[str, str]:
    """The top-level package each optional extra installs, with the extra's name."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    tops: dict[str, str] = {}
    for extra, requirements in project["optional-dependencies"].items():
        for requirement in requirements:
            name = re.match(r"[A-Za-z0-9._-]+", requirement)
            if name and name.group(0) != project["name"]:
                tops[name.group(0).lower().replace("-", "_")] = extra
    return tops


def missing_extra(missing: str | None, extras: Mapping[str, str]) -> str | None:
    """The extra to name when an import failed only because that extra is not installed."""
    top = (missing or "").partition(".")[0]
    if top in extras and importlib.util.find_spec(top) is None:
        return extras[top]
    return None


@pytest.mark.parametrize("module", package_modules())
def test_each_module_imports_cleanly_on_its_own(module: str) -> None:
    outcome = import_outcomes()[module]
    extra = missing_extra(outcome["missing"], optional_packages())
    if extra is not None and module.partition(".")[0] != "kit":  # core needs no extra, ever
        pytest.skip(f"{module} needs kit-trainer[{extra}], not installed")
    assert outcome["error"] is None, f"python -W error -c 'import {module}': {outcome['error']}"
    assert outcome["output"] == "", f"importing {module} printed {outcome['output']!r}"


def test_the_import_check_fails_on_a_warning_an_error_or_output(tmp_path: Path) -> None:
    package = tmp_path / "acme"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "fine.py").write_text("import json\n")
    (package / "warns.py").write_text("import warnings\nwarnings.warn('old', DeprecationWarning)\n")
    (package / "prints.py").write_text("print('hello')\n")
    (package / "needs.py").write_text("import acme_extra_not_installed\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    outcomes = import_each(["acme.fine", "acme.warns", "acme.prints", "acme.needs"], ["acme"], env)
    assert outcomes["acme.fine"] == {"error": None, "missing": None, "output": ""}
    assert outcomes["acme.warns"]["error"] == "DeprecationWarning: old"
    assert outcomes["acme.prints"]["output"] == "hello\n"
    assert outcomes["acme.needs"]["missing"] == "acme_extra_not_installed"
    # skipped only for an extra's own package, and only while it is not installed
    assert missing_extra("acme_extra_not_installed", {"acme_extra_not_installed": "fancy"}) == "fancy"
    assert missing_extra("acme_extra_not_installed", {}) is None
    assert missing_extra("json", {"json": "fancy"}) is None
    assert missing_extra("torch", optional_packages()) is None  # a dependency is never optional
    assert {"kit", "kit.trainer", "kit_backends.ddp", "kit_contrib.formats.lightning"} \
        <= set(package_modules())


# -- (b) plugins use only kit.__all__ ------------------------------------------------------------

def public_names() -> list[str]:
    """``kit.__all__`` as written in core/kit/__init__.py, read without importing kit."""
    tree = ast.parse((ROOT / "core" / "kit" / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            names: list[str] = ast.literal_eval(node.value)
            return names
    raise AssertionError("core/kit/__init__.py assigns no __all__")


def private_uses(source: str, public: Collection[str]) -> list[tuple[int, str]]:
    """``(line, name)`` for each ``import kit.X``, ``from kit.X import …``, ``from kit import
    NAME`` and ``kit.NAME`` in ``source`` whose name is not in ``public``."""
    tree = ast.parse(source)
    aliases, found = {"kit"}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "kit":
                    aliases.add(alias.asname or "kit")
                elif alias.name.startswith("kit."):
                    found.append((node.lineno, alias.name))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            if node.module.startswith("kit."):
                found.append((node.lineno, node.module))
            elif node.module == "kit":
                found += [(node.lineno, f"kit.{a.name}") for a in node.names
                          if a.name != "*" and a.name not in public]
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id in aliases and node.attr not in public:
            found.append((node.lineno, f"kit.{node.attr}"))
    return sorted(set(found))


_FENCE = re.compile(r"^([ \t]*)```python[ \t]*\n(.*?)^\1```[ \t]*$", re.S | re.M)


def python_blocks(markdown: str) -> Iterator[tuple[int, str]]:
    """``(line of its first line, code)`` for each ```python block."""
    for match in _FENCE.finditer(markdown):
        yield markdown.count("\n", 0, match.start(2)) + 1, textwrap.dedent(match.group(2))


def client_files() -> list[Path]:
    """The Python files that must use kit as an outside plugin does, and the docs."""
    files = [path for folder in CLIENTS for path in sorted(folder.rglob("*.py"))
             if not {"build", "__pycache__"} & set(path.relative_to(folder).parts)]
    return files + [path for path in DOCS if "```python" in path.read_text(encoding="utf-8")]


def problems(path: Path, public: Collection[str], root: Path = ROOT) -> list[str]:
    """``FILE:LINE: what`` for each private use of kit in ``path`` (a Python file, or Markdown)."""
    text = path.read_text(encoding="utf-8")
    pieces = python_blocks(text) if path.suffix == ".md" else iter([(1, text)])
    where = path.relative_to(root)
    found = []
    for first, source in pieces:
        try:
            uses = private_uses(source, public)
        except SyntaxError as exc:
            found.append(f"{where}:{first + (exc.lineno or 1) - 1}: does not parse: {exc.msg}")
            continue
        found += [f"{where}:{first + line - 1}: {name} is not in kit.__all__" for line, name in uses]
    return found


@pytest.mark.parametrize("path", client_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_plugins_and_docs_use_only_kits_public_names(path: Path) -> None:
    found = problems(path, public_names())
    assert not found, "\n".join([*found, "use kit.NAME for a name in kit.__all__ (core/kit/__init__.py), "
                                 "or export what a plugin needs there"])


def test_the_surface_check_reports_file_line_and_name(tmp_path: Path) -> None:
    public = ["Trainer", "TrainNew", "say"]
    assert private_uses("import kit\nfrom kit.checkpoint import load_torch_file\n", public) \
        == [(2, "kit.checkpoint")]
    assert private_uses("import kit.states\n", public) == [(1, "kit.states")]
    assert private_uses("from kit import Trainer, checkpoint as c\n", public) == [(1, "kit.checkpoint")]
    assert private_uses("import kit as k\n\nclass M(k.states.TrainNew): ...\n", public) \
        == [(3, "kit.states")]
    assert private_uses("import kit\nkit.say(kit.report)\n", public) == [(2, "kit.report")]
    fine = "from kit import *\nimport kit\nkit.TrainNew\nfrom . import report\nimport kitten.x\nkitten.y\n"
    assert private_uses(fine, public) == []
    doc = tmp_path / "guide.md"
    doc.write_text("# Guide\n\n```bash\npython -c 'import kit.states'\n```\n\n- item\n\n"
                   "  ```python\n  import kit\n  kit.TrainNew\n  kit.report.say('x')\n  ```\n\n"
                   "```python\nnot python(\n```\n")
    assert problems(doc, public, root=tmp_path) == [
        "guide.md:12: kit.report is not in kit.__all__", "guide.md:16: does not parse: '(' was never closed"]


def test_the_checks_cover_what_they_claim() -> None:
    checked = {str(path.relative_to(ROOT)) for path in client_files()}
    assert {"backends/kit_backends/ddp.py", "contrib/kit_contrib/formats/lightning.py",
            "tests/e2e/example_plugin/src/kit_example_plugin/__init__.py", "docs/plugins.md",
            "docs/concepts.md", "README.md"} <= checked
    blocks = list(python_blocks((ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")))
    assert len(blocks) >= 5 and any("kit.TrainNew" in code for _, code in blocks)


def test_kits_public_names_are_sorted_resolve_and_say_what_they_are_for() -> None:
    import kit

    names = public_names()
    assert names == sorted(names) == kit.__all__
    for name in names:
        value = getattr(kit, name)
        if (inspect.isclass(value) or inspect.isfunction(value)) and value.__module__.startswith("kit."):
            assert (value.__doc__ or "").strip(), f"kit.{name} has no docstring of its own"


def test_the_plugin_guide_lists_every_public_name() -> None:
    guide = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    section = guide.split("\n## What a plugin imports\n", 1)[1].split("\n## ", 1)[0]
    table = "\n".join(line for line in section.splitlines() if line.startswith("|"))
    assert sorted(set(re.findall(r"`(\w+)`", table))) == public_names()


@pytest.mark.parametrize("package", ["kit", "kit.plugins", "kit.cli", "kit_backends", "kit_contrib"])
def test_no_public_name_is_also_a_submodule(package: str) -> None:
    """A lazily loaded ``pkg.name`` that is also ``pkg/name.py`` is replaced by the module as
    soon as anything imports ``pkg.name`` directly, so ``from pkg import name`` then gives
    a module instead of the function (this broke the CLI's plugin blame once)."""
    imported = importlib.import_module(package)
    submodules = {info.name for info in pkgutil.iter_modules(imported.__path__)}
    assert not submodules & set(getattr(imported, "__all__", ())), package
