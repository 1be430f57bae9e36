"""Find, load and check kit's plugins: three separate steps.

1. **discover** reads entry-point metadata only: nothing is imported, so ``kit --help``
   and ``kit plugins list`` stay fast and a broken plugin cannot break them. It scans
   ``sys.path`` once for ``*.dist-info`` folders (as ``importlib.metadata`` does, without
   importing it and its ``email`` parser), reads each ``entry_points.txt`` once, and
   ``Requires-Dist`` only where a kit entry point declares extras.
2. **load** imports one entry point, by name, when a run selects it. An import failure
   becomes one :class:`~kit.errors.PluginLoadError` naming ``package[entry]``.
3. **check** inspects an entry point without running its code: is its module on the
   path, are the extras it declares installed?

Everything is sorted by (group, name, package), so output and selection are deterministic.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.machinery
import importlib.util
import os
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from kit.env import DISABLE_AUTOLOAD, flag
from kit.errors import ConfigError, KitError, PluginLoadError, PluginNotFoundError

__all__ = [
    "AUTOLOAD_ENV",
    "GROUPS",
    "EntryPointSpec",
    "Registry",
    "autoload_enabled",
]

AUTOLOAD_ENV = DISABLE_AUTOLOAD


def autoload_enabled() -> bool:
    """Whether ``kit.plugins`` entry points load in every run (``AUTOLOAD_ENV`` unset or ``0``)."""
    return not flag(AUTOLOAD_ENV)


GROUPS: tuple[str, ...] = (
    "kit.states",
    "kit.backends",
    "kit.loggers",
    "kit.checkpoint_formats",
    "kit.tasks",
    "kit.plugins",
    "kit.commands",
)
"""Every entry-point group kit reads."""

_VALUE = re.compile(r"^\s*(?P<module>[\w.]+)\s*(?::\s*(?P<attr>[\w.]+))?\s*(?:\[(?P<extras>[^\]]*)\])?\s*$")


@dataclass(frozen=True, order=True)
class EntryPointSpec:
    """One discovered entry point: metadata only, never imported by discovery."""

    group: str
    name: str
    package: str
    value: str
    version: str = ""
    extras: tuple[str, ...] = field(default=(), compare=False)
    requires: tuple[str, ...] = field(default=(), compare=False)
    """The distributions ``extras`` need, from the package's ``Requires-Dist`` at discovery."""

    @property
    def label(self) -> str:
        """How errors name this plugin: ``package[entry]``."""
        return f"{self.package}[{self.name}]"

    @property
    def module(self) -> str:
        match = _VALUE.match(self.value)
        return match.group("module") if match else self.value

    @property
    def attr(self) -> str | None:
        match = _VALUE.match(self.value)
        return match.group("attr") if match else None

    # -- step 2: load ---------------------------------------------------------------

    def load(self) -> Any:
        """Import the entry point's object; every failure names ``package[entry]``."""
        if _VALUE.match(self.value) is None:
            raise PluginLoadError(self.label, ValueError(f"malformed entry point {self.value!r}"))
        try:
            obj: Any = importlib.import_module(self.module)
            for part in (self.attr or "").split(".") if self.attr else ():
                obj = getattr(obj, part)
        except Exception as exc:  # a plugin can fail in any way; we report it, once
            hint = None
            if isinstance(exc, ImportError) and self.extras:
                extras = ",".join(self.extras)
                hint = f"install `{self.package}[{extras}]`"
            raise PluginLoadError(self.label, exc, hint=hint) from exc
        return obj

    # -- step 3: check --------------------------------------------------------------

    def problems(self) -> list[str]:
        """What is visibly broken in this entry point, found without importing it."""
        if _VALUE.match(self.value) is None:
            return [f"malformed entry point {self.value!r}"]
        if not _module_exists(self.module):
            return [f"module {self.module!r} not found"]
        return []

    def unavailable(self, registry: Registry | None = None) -> str | None:
        """Why this optional plugin cannot load here (its extras are not installed), or ``None``.

        Not a fault of the plugin: ``install `package[extra]``` fixes it. ``registry`` knows
        what is installed; without one, ``sys.path`` is scanned.
        """
        installed = registry or Registry(())
        missing = [dist for dist in self.requires if not installed.installed(dist)]
        if not missing:
            return None
        return f"missing {', '.join(missing)}: install `{self.package}[{','.join(self.extras)}]`"


def _module_exists(dotted: str) -> bool:
    """Locate ``dotted`` without executing any package's ``__init__``.

    A top-level name goes through every finder (editable installs use their own);
    submodules are looked up in their parent's search locations only.
    """
    parts = dotted.split(".")
    path: list[str] = []
    for depth in range(len(parts)):
        name = ".".join(parts[: depth + 1])
        loaded = sys.modules.get(name)
        if loaded is not None:
            spec = loaded.__spec__
        elif depth == 0:
            spec = importlib.util.find_spec(name)
        else:
            spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None:
            return loaded is not None
        path = list(spec.submodule_search_locations or [])
    return True


def _normal(name: str) -> str:
    """A distribution name as pip compares them (PEP 503): ``Kit_Trainer`` -> ``kit-trainer``."""
    return re.sub(r"[-_.]+", "-", name).lower()


_DIST_FOLDER = re.compile(r"^(?P<name>[^-]+)(?:-(?P<version>[^-]+?))?(?:-py[\w.]+)?\.(?:dist|egg)-info$",
                          re.IGNORECASE)


@dataclass(frozen=True)
class _Distribution:
    name: str
    version: str
    folder: str


def _distributions() -> dict[str, _Distribution]:
    """Every distribution on ``sys.path`` by normalised name; the first copy wins, as for import.

    Read from the names of ``*.dist-info`` / ``*.egg-info`` folders alone: one ``listdir`` per
    path entry, no file opened. This is what ``importlib.metadata`` finds, without importing
    it (and the ``email`` parser it brings), which would be most of ``kit --help``'s time.
    """
    found: dict[str, _Distribution] = {}
    for entry in sys.path:
        try:
            names = sorted(os.listdir(entry or "."))
        except OSError:  # a zip file, a missing folder
            continue
        for name in names:
            match = _DIST_FOLDER.match(name)
            if match is None or _normal(match["name"]) in found:
                continue
            folder = os.path.join(entry or ".", name)
            version = match["version"] or next(iter(_headers(folder, "Version")), "")
            found[_normal(match["name"])] = _Distribution(match["name"].replace("_", "-"), version, folder)
    return found


def _read(folder: str, filename: str) -> str:
    try:
        with open(os.path.join(folder, filename), encoding="utf-8") as fh:
            return fh.read()
    except (OSError, UnicodeDecodeError):
        return ""


def _headers(folder: str, field_name: str) -> list[str]:
    """Every ``field_name`` header of the folder's core metadata (``METADATA`` or ``PKG-INFO``)."""
    text = _read(folder, "METADATA") or _read(folder, "PKG-INFO")
    values = []
    for line in text.split("\n\n", 1)[0].splitlines():  # the headers end at the first blank line
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() == field_name.lower():
            values.append(value.strip())
    return values


def _entry_points(folder: str) -> Iterator[tuple[str, str, str]]:
    """(group, name, value) from the folder's ``entry_points.txt`` (an INI file)."""
    group = None
    for raw in _read(folder, "entry_points.txt").splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line[0] == "[" and line[-1] == "]":
            group = line[1:-1].strip()
        elif group is not None:
            name, sep, value = line.partition("=")
            if sep:
                yield group, name.strip(), value.strip()


def _requirements(folder: str) -> list[str]:
    """``Requires-Dist`` lines, or an egg's ``requires.txt`` sections turned into them."""
    if folder.lower().endswith(".dist-info"):
        return _headers(folder, "Requires-Dist")
    lines, extra = [], ""
    for raw in _read(folder, "requires.txt").splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            extra = line[1:-1].split(":", 1)[0]
        elif line:
            lines.append(f"{line}; extra == '{extra}'" if extra else line)
    return lines


def _required_by(extras: tuple[str, ...], requirements: Iterable[str]) -> tuple[str, ...]:
    """The distribution names in ``Requires-Dist`` lines whose marker names one of ``extras``."""
    names = []
    for req in requirements:
        name, _, marker = req.partition(";")
        if any(re.search(rf"extra\s*==\s*['\"]{re.escape(e)}['\"]", marker) for e in extras):
            names.append(re.split(r"[\s\[<>=!~(;]", name.strip(), maxsplit=1)[0])
    return tuple(names)


# -- step 1: discover -----------------------------------------------------------------


def _from_metadata(groups: Iterable[str]) -> tuple[list[EntryPointSpec], frozenset[str]]:
    """Every entry point in ``groups``, and the normalised names of every installed distribution.

    One scan of ``sys.path``; each distribution's ``entry_points.txt`` is read once, and its
    ``Requires-Dist`` only when one of its kit entry points declares extras.
    """
    wanted = set(groups)
    specs = []
    installed = _distributions()
    for dist in installed.values():
        requirements: list[str] | None = None
        for group, name, value in _entry_points(dist.folder):
            if group not in wanted:
                continue
            match = _VALUE.match(value)
            extras = tuple(
                e.strip() for e in (match.group("extras") or "").split(",") if e.strip()
            ) if match else ()
            if extras and requirements is None:
                requirements = _requirements(dist.folder)
            specs.append(EntryPointSpec(
                group=group, name=name, package=dist.name, value=value, version=dist.version,
                extras=extras, requires=_required_by(extras, requirements or ()) if extras else (),
            ))
    return specs, frozenset(installed)


class Registry:
    """The entry points kit can choose from, grouped and sorted; built without importing.

    Pass ``specs`` to build one in memory (tests, embedding); :meth:`from_environment`
    reads the installed distributions' metadata.
    """

    def __init__(self, specs: Iterable[EntryPointSpec], installed: Iterable[str] | None = None) -> None:
        self.specs: tuple[EntryPointSpec, ...] = tuple(sorted(set(specs)))
        self._installed = frozenset(installed) if installed is not None else None
        self._groups: dict[str, list[EntryPointSpec]] = {}
        for spec in self.specs:
            self._groups.setdefault(spec.group, []).append(spec)

    @classmethod
    def from_environment(cls, groups: Iterable[str] = GROUPS) -> Registry:
        """Read the installed packages' entry points (one scan of ``sys.path``)."""
        specs, installed = _from_metadata(groups)
        return cls(specs, installed)

    def installed(self, distribution: str) -> bool:
        """Whether a distribution of that name is installed (known since discovery, else looked up)."""
        names = self._installed if self._installed is not None else frozenset(_distributions())
        return _normal(distribution) in names

    def group(self, group: str) -> list[EntryPointSpec]:
        return list(self._groups.get(group, ()))

    def names(self, group: str) -> list[str]:
        return sorted({spec.name for spec in self.group(group)})

    def without(self, labels: Iterable[str]) -> Registry:
        """This registry less the entry points named ``package[entry]`` in ``labels``: how
        ``-p no:package[entry]`` chooses between two packages that provide one name."""
        drop = set(labels)
        return Registry((spec for spec in self.specs if spec.label not in drop), self._installed)

    def find(self, group: str, name: str) -> EntryPointSpec:
        """The one entry point called ``name`` in ``group``, or a clear error."""
        matches = [spec for spec in self.group(group) if spec.name == name]
        if len(matches) > 1:
            owners = ", ".join(spec.label for spec in matches)
            raise KitError(
                f"{len(matches)} packages provide {group} {name!r}: {owners}",
                hint=f"uninstall one, or leave one out with `kit -p no:{matches[-1].label} …`",
            )
        if not matches:
            available = self.names(group)
            close = difflib.get_close_matches(name, available, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            hint += f"available: {', '.join(available) or 'none installed'}"
            raise PluginNotFoundError(f"unknown {_KIND[group]} {name!r}", hint=hint)
        return matches[0]

    def load(self, group: str, name: str, *, key: str | None = None) -> Any:
        """Import the entry point chosen as ``name``: the one way kit turns a name into a plugin.

        A name that no package, or more than one, provides is a :class:`ConfigError` at
        ``key`` (the config key or option that chose it). A plugin is known everywhere by
        the name it was chosen by; a class whose own ``name`` attribute says otherwise (a
        mode, backend or checkpoint format) is refused here, naming both, rather than
        written into a manifest under a name no registry knows.
        """
        try:
            spec = self.find(group, name)
        except KitError as exc:
            if key is None:
                raise
            raise ConfigError(exc.message, key=key, hint=exc.hint) from None
        loaded = spec.load()
        declared = getattr(loaded, "name", "") if group in _NAMED and isinstance(loaded, type) else ""
        if isinstance(declared, str) and declared and declared != name:
            raise KitError(
                f"{_KIND[group]} {spec.label} is the class {loaded.__qualname__}, whose name "
                f"attribute is {declared!r}: one plugin, two names",
                hint=f"set its name = {name!r}, or leave name out and kit uses {name!r}")
        return loaded


_NAMED = frozenset({"kit.states", "kit.backends", "kit.checkpoint_formats", "kit.tasks"})
"""The groups whose interfaces (State, Backend, CheckpointFormat, Task) carry a ``name``."""

_KIND = {
    "kit.states": "mode",
    "kit.backends": "backend",
    "kit.loggers": "logger",
    "kit.checkpoint_formats": "checkpoint format",
    "kit.tasks": "task",
    "kit.plugins": "plugin",
    "kit.commands": "command",
}
