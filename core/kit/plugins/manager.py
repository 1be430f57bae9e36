"""A fresh, fully set-up pluggy manager from one call; no global manager exists.

Importing this module pulls in neither torch nor click, so other frameworks can embed
kit's hooks cheaply: ``pm = kit.get_plugin_manager(MyPlugin())``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pluggy

from kit import hookspecs
from kit.errors import ConfigError, KitError, PluginLoadError, validation_message
from kit.markers import PROJECT
from kit.plugins.discovery import AUTOLOAD_ENV, EntryPointSpec, Registry, autoload_enabled
from kit.plugins.isolation import Isolated
from kit.report import say, warn

__all__ = [
    "AUTOLOAD_ENV",
    "KitPluginManager",
    "PluginChoice",
    "get_plugin_manager",
    "instantiate",
    "load_named",
]



@dataclass(frozen=True)
class PluginChoice:
    """A plugin a run asked for by name: an entry point in ``group`` or ``pkg.mod:attr``."""

    group: str
    name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    where: str = ""
    """The config key that asked for it, for error messages (``loggers[1]``)."""
    isolate: bool = False
    """Report and disable the plugin when a hook raises, instead of failing the run."""
    base_dir: Path | None = None
    """Where an import target is searched first: the config file's folder, as for models."""


class KitPluginManager(pluggy.PluginManager):
    """pluggy's manager, knowing how to name each plugin to a user (``package[entry]``)."""

    def __init__(self) -> None:
        super().__init__(PROJECT)
        self.labels: dict[str, str] = {}
        self._monitors = 0
        self._watchers: list[Callable[[], None]] = []

    @property
    def monitored(self) -> bool:
        """Whether hook calls are monitored (traced): :class:`~kit.plugins.relay.HookRelay`
        then sends every call through pluggy, which does the monitoring."""
        return self._monitors > 0

    def watch(self, changed: Callable[[], None]) -> None:
        """Call ``changed`` whenever what a hook call runs may have changed: a plugin
        registered or unregistered, monitoring turned on or off (relays re-resolve)."""
        self._watchers.append(changed)

    def _changed(self) -> None:
        for changed in self._watchers:
            changed()

    def register(self, plugin: object, name: str | None = None) -> str | None:
        registered = super().register(plugin, name)
        self._changed()
        return registered

    def unregister(self, plugin: object | None = None, name: str | None = None) -> Any | None:
        unregistered = super().unregister(plugin, name)
        self._changed()
        return unregistered

    def add_hookcall_monitoring(self, before: Any, after: Any) -> Callable[[], None]:
        undo = super().add_hookcall_monitoring(before, after)
        self._monitors += 1
        self._changed()

        stopped = False

        def stop() -> None:
            nonlocal stopped
            undo()
            if not stopped:  # pluggy's undo may be called twice; the count drops once
                stopped = True
                self._monitors -= 1
                self._changed()

        return stop

    def label(self, name: str | None, plugin: object = None) -> str:
        """``package[entry]``, an import target, or the class name of an object registered as is."""
        if name is not None and name in self.labels:
            return self.labels[name]
        return type(plugin).__qualname__ if plugin is not None else str(name)


def instantiate(obj: Any, options: Mapping[str, Any], *, label: str, where: str = "") -> Any:
    """Turn a loaded entry point into a plugin object.

    A class is called with its validated options when it declares an ``Options``
    pydantic model, and with nothing otherwise; a module or an instance is used as is.
    """
    key = f"{where}.options" if where else label
    if not isinstance(obj, type):
        if options:
            raise ConfigError(f"{label} takes no options", key=key, hint="remove them")
        return obj
    model = getattr(obj, "Options", None)
    if model is None:
        if options:
            raise ConfigError(f"{label} takes no options", key=key, hint="remove them")
        return obj()
    from pydantic import ValidationError

    try:
        validated = model.model_validate(dict(options))
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ConfigError(validation_message(err), key=f"{key}.{loc}" if loc else key) from None
    return obj(validated)


def load_named(registry: Registry, group: str, name: str, *, key: str | None,
               base_dir: Path | None) -> tuple[str, Any]:
    """What a config names for ``group``: an import target (``pkg.mod:attr``, resolved like
    the config's model and data) or an installed entry point; ``(label, object)``, the label
    being how errors name it (the target, or ``package[entry]``)."""
    if ":" in name:
        from kit.targets import resolve_target

        return name, resolve_target(name, key=key or name, base_dir=base_dir)
    loaded = registry.load(group, name, key=key)
    return registry.find(group, name).label, loaded


def _load_choice(choice: PluginChoice, registry: Registry) -> tuple[str, Any]:
    label, loaded = load_named(registry, choice.group, choice.name, key=choice.where or None,
                               base_dir=choice.base_dir)
    return label, instantiate(loaded, choice.options, label=label, where=choice.where)


def _check_blocked(blocked: Iterable[str], choices: list[PluginChoice], registry: Registry) -> None:
    """Say what ``-p no:NAME`` does to this run: a configured plugin left out, or nothing at all."""
    known = {spec.name for group in ("kit.plugins", "kit.loggers") for spec in registry.group(group)}
    labels = {spec.label for spec in registry.specs}  # -p no:package[entry]: one of two with a name
    chosen = {c.name: c for c in choices}
    for name in blocked:
        if name in chosen:
            choice = chosen[name]
            say(f"{choice.where or name} ({name}) is blocked by -p no:{name}: it will not run")
        elif name not in known and name not in labels:
            names = ", ".join(sorted(known)) or "none"
            warn(f"-p no:{name} blocks nothing: no installed plugin or logger is named {name!r} "
                 f"(installed: {names})")


def get_plugin_manager(
    *plugins: object,
    choices: Iterable[PluginChoice] = (),
    registry: Registry | None = None,
    autoload: bool | None = None,
    blocked: Iterable[str] = (),
    broken: Literal["raise", "skip"] = "skip",
) -> KitPluginManager:
    """Build a new plugin manager holding kit's hook specs and the selected plugins.

    :param plugins: plugin objects to register as they are (first, in this order).
    :param choices: plugins and loggers asked for by name, with their options.
    :param registry: where entry points come from; the installed packages by default.
    :param autoload: load every ``kit.plugins`` entry point; default: on unless
        ``KIT_DISABLE_PLUGIN_AUTOLOAD`` is set. A plugin class with ``autoload = False``
        (kit's built-in plugins: ``early_stopping``, ``timer``, …) is opt-in: it runs
        only when ``plugins:`` lists it or ``-p NAME`` asks for it.
    :param blocked: plugin names that must not load (``-p no:NAME``), or entry points
        (``-p no:package[entry]``, to choose between two packages with one name).
    :param broken: what an autoloaded plugin that fails to load does: ``skip`` (warn once
        and go on without it: a program embedding kit must not break because some other
        installed package is broken) or ``raise`` (a kit run: a plugin the user installed
        does not silently go missing). A plugin chosen by name always raises.
    """
    pm = KitPluginManager()
    pm.add_hookspecs(hookspecs)
    blocked = list(blocked)
    for name in blocked:
        pm.set_blocked(name)
    for plugin in plugins:
        pm.register(plugin)
    if autoload is None:
        autoload = autoload_enabled()
    choices = list(choices)
    if autoload or choices or blocked:
        registry = registry if registry is not None else Registry.from_environment()
    if blocked and registry is not None:
        _check_blocked(blocked, choices, registry)
        registry = registry.without(blocked)
    chosen = {c.name for c in choices}
    if autoload and registry is not None:
        for spec in registry.group("kit.plugins"):
            if pm.is_blocked(spec.name) or spec.name in chosen or pm.has_plugin(spec.name):
                continue
            try:
                _autoload(pm, registry, spec)
            except KitError as exc:
                if broken == "raise":
                    raise
                # someone else's broken package must not break a program that merely embeds kit
                warn(f"{exc.message}; skipped: it will not run (blocked=[{spec.name!r}] leaves it out "
                     "without this warning)")
    for choice in choices:
        if pm.is_blocked(choice.name) or pm.has_plugin(choice.name):
            continue
        assert registry is not None
        label, plugin = _load_choice(choice, registry)
        _register(pm, choice.name, Isolated(plugin, label) if choice.isolate else plugin, label)
    _check_hooks(pm)
    return pm


def _autoload(pm: KitPluginManager, registry: Registry, spec: EntryPointSpec) -> None:
    """Load, instantiate and register one ``kit.plugins`` entry point nobody chose by name."""
    registry.find("kit.plugins", spec.name)  # two packages with this name: say which, how to choose
    try:
        loaded = spec.load()
    except PluginLoadError as exc:  # say how to run without it
        raise PluginLoadError(spec.label, exc.cause, hint=exc.hint or (
            f"leave it out with `kit -p no:{spec.name} …`, or blocked=[{spec.name!r}] in Python")) from exc
    if getattr(loaded, "autoload", True) is False:  # opt-in: it runs when a config lists it
        return
    _register(pm, spec.name, instantiate(loaded, {}, label=spec.label), spec.label)


def _register(pm: KitPluginManager, name: str, plugin: Any, label: str) -> None:
    pm.labels[name] = label
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        raise PluginLoadError(label, exc, hint="fix the hook's signature to match kit hooks") from exc
    except ValueError as exc:  # the same object registered twice
        raise KitError(f"plugin {label} cannot be registered: {exc}") from exc


def _check_hooks(pm: pluggy.PluginManager) -> None:
    """Refuse ``kit_*`` hook implementations that match no spec (usually a typo)."""
    for name in dir(pm.hook):
        if not name.startswith("kit_") or name in hookspecs.HOOK_NAMES:
            continue
        caller = getattr(pm.hook, name)
        for impl in caller.get_hookimpls():
            if impl.opts.get("optionalhook"):
                continue
            close = difflib.get_close_matches(name, hookspecs.HOOK_NAMES, n=1)
            hint = f"did you mean {close[0]}?" if close else "run `kit hooks` for the list"
            raise KitError(f"plugin {impl.plugin_name!r} implements unknown hook {name}", hint=hint)
