"""Find, load and check kit's plugins: three separate steps.

1. **discover** reads entry-point metadata only: nothing is imported, so ``kit --help``
   and ``kit plugins list`` stay fast and a broken plugin cannot break them. It walks
   the installed distributions once and parses ``METADATA`` only for the few that
   provide a kit entry point (parsing every package's is what made ``--help`` slow).
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
import importlib.metadata as md
import importlib.util
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from kit.errors import KitError, PluginLoadError, PluginNotFoundError

__all__ = [
    "GROUPS",
    "EntryPointSpec",
    "Registry",
]

GROUPS: tuple[str, ...] = (
    "kit.states",
    "kit.backends",
    "kit.loggers",
    "kit.checkpoint_formats",
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
        """What is visibly wrong with this entry point, found without importing it."""
        if _VALUE.match(self.value) is None:
            return [f"malformed entry point {self.value!r}"]
        found: list[str] = []
        if not _module_exists(self.module):
            found.append(f"module {self.module!r} not found")
        missing = [dist for dist in self.requires if not _installed(dist)]
        if missing:
            extras = ",".join(self.extras)
            found.append(
                f"missing {', '.join(missing)}: install `{self.package}[{extras}]`"
            )
        return found


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


def _installed(dist: str) -> bool:
    """Is a distribution called ``dist`` installed? A name lookup: no metadata is read."""
    try:
        md.distribution(dist)
    except md.PackageNotFoundError:
        return False
    return True


def _required_by(extras: tuple[str, ...], requirements: Iterable[str]) -> tuple[str, ...]:
    """The distribution names in ``Requires-Dist`` lines whose marker names one of ``extras``."""
    names = []
    for req in requirements:
        name, _, marker = req.partition(";")
        if any(re.search(rf"extra\s*==\s*['\"]{re.escape(e)}['\"]", marker) for e in extras):
            names.append(re.split(r"[\s\[<>=!~(;]", name.strip(), maxsplit=1)[0])
    return tuple(names)


# -- step 1: discover -----------------------------------------------------------------


def _from_metadata(groups: Iterable[str]) -> Iterator[EntryPointSpec]:
    """Every entry point in ``groups``, from one walk of the installed distributions.

    ``entry_points()`` reads each distribution's ``entry_points.txt`` only, and skips a
    package shadowed by an earlier copy on ``sys.path`` (as import does).
    """
    everything = md.entry_points()
    packages: dict[md.Distribution | None, tuple[str, str, list[str]]] = {}
    for group in dict.fromkeys(groups):
        for ep in everything.select(group=group):
            if ep.dist not in packages:
                packages[ep.dist] = _about(ep.dist)
            package, version, requirements = packages[ep.dist]
            match = _VALUE.match(ep.value)
            extras = tuple(
                e.strip() for e in (match.group("extras") or "").split(",") if e.strip()
            ) if match else ()
            yield EntryPointSpec(
                group=ep.group,
                name=ep.name,
                package=package,
                value=ep.value,
                version=version,
                extras=extras,
                requires=_required_by(extras, requirements) if extras else (),
            )


def _about(dist: md.Distribution | None) -> tuple[str, str, list[str]]:
    """Name, version and ``Requires-Dist`` of ``dist``: one parse of its ``METADATA``."""
    if dist is None:
        return "?", "", []
    meta = dist.metadata
    return meta["Name"] or "?", meta["Version"] or "", meta.get_all("Requires-Dist") or []


class Registry:
    """The entry points kit can choose from, grouped and sorted; built without importing.

    Pass ``specs`` to build one in memory (tests, embedding); :meth:`from_environment`
    reads the installed distributions' metadata.
    """

    def __init__(self, specs: Iterable[EntryPointSpec]) -> None:
        self.specs: tuple[EntryPointSpec, ...] = tuple(sorted(set(specs)))
        self._groups: dict[str, list[EntryPointSpec]] = {}
        for spec in self.specs:
            self._groups.setdefault(spec.group, []).append(spec)

    @classmethod
    def from_environment(cls, groups: Iterable[str] = GROUPS) -> Registry:
        """Read the installed packages' entry points: costly, so build one and keep it."""
        return cls(_from_metadata(groups))

    def group(self, group: str) -> list[EntryPointSpec]:
        return list(self._groups.get(group, ()))

    def names(self, group: str) -> list[str]:
        return sorted({spec.name for spec in self.group(group)})

    def find(self, group: str, name: str) -> EntryPointSpec:
        """The one entry point called ``name`` in ``group``, or a clear error."""
        matches = [spec for spec in self.group(group) if spec.name == name]
        if len(matches) > 1:
            owners = ", ".join(spec.label for spec in matches)
            raise KitError(
                f"{len(matches)} packages provide {group} {name!r}: {owners}",
                hint="uninstall one of them",
            )
        if not matches:
            available = self.names(group)
            close = difflib.get_close_matches(name, available, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            hint += f"available: {', '.join(available) or 'none installed'}"
            raise PluginNotFoundError(f"unknown {_KIND[group]} {name!r}", hint=hint)
        return matches[0]

    def load(self, group: str, name: str) -> Any:
        return self.find(group, name).load()


_KIND = {
    "kit.states": "mode",
    "kit.backends": "backend",
    "kit.loggers": "logger",
    "kit.checkpoint_formats": "checkpoint format",
    "kit.plugins": "plugin",
    "kit.commands": "command",
}
