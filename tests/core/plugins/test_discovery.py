from __future__ import annotations

import sys

import pytest

from kit.errors import KitError, PluginLoadError, PluginNotFoundError
from kit.plugins import EntryPointSpec, Registry


def spec(name: str, value: str, group: str = "kit.plugins", package: str = "pkg") -> EntryPointSpec:
    return EntryPointSpec(group=group, name=name, package=package, value=value, version="1.0")


def test_registry_is_sorted_and_deduplicated() -> None:
    a = spec("b", "fake_plugins:NoOptions")
    b = spec("a", "fake_plugins:NoOptions", group="kit.loggers")
    c = spec("a", "fake_plugins:NoOptions")
    registry = Registry([a, b, c, a])
    assert [(s.group, s.name) for s in registry.specs] == [
        ("kit.loggers", "a"), ("kit.plugins", "a"), ("kit.plugins", "b")]
    assert registry.names("kit.plugins") == ["a", "b"]


def test_discovery_and_checks_import_nothing() -> None:
    module = "never_imported_plugin_xyz"
    registry = Registry([spec("ghost", f"{module}:Plugin")])
    assert registry.find("kit.plugins", "ghost").problems() == [f"module {module!r} not found"]
    assert module not in sys.modules
    # a module that exists is found without running it (importing it would raise)
    assert spec("broken", "broken_plugin_mod:X").problems() == []
    assert "broken_plugin_mod" not in sys.modules


def test_broken_plugin_is_one_error_naming_package_and_entry() -> None:
    broken = spec("broken", "broken_plugin_mod:X", package="acme-kit")
    with pytest.raises(PluginLoadError) as info:
        broken.load()
    assert info.value.entry == "acme-kit[broken]"
    assert "acme-kit[broken] failed to load: ModuleNotFoundError" in str(info.value)
    assert "kit_dependency_that_does_not_exist" in str(info.value)


def test_missing_attribute_and_malformed_value() -> None:
    with pytest.raises(PluginLoadError, match=r"pkg\[x\].*AttributeError"):
        spec("x", "fake_plugins:Nope").load()
    bad = spec("y", "not a value!")
    assert bad.problems() == ["malformed entry point 'not a value!'"]
    with pytest.raises(PluginLoadError, match="malformed"):
        bad.load()


def test_unknown_name_lists_what_is_available() -> None:
    registry = Registry([spec("console", "m:C", group="kit.loggers"),
                         spec("jsonl", "m:J", group="kit.loggers")])
    with pytest.raises(PluginNotFoundError) as info:
        registry.find("kit.loggers", "consol")
    message = str(info.value)
    assert "unknown logger 'consol'" in message
    assert "did you mean 'console'?" in message
    assert "available: console, jsonl" in message


def test_two_packages_with_one_name_is_a_clear_error() -> None:
    registry = Registry([spec("dup", "m:A", package="one"), spec("dup", "m:B", package="two")])
    with pytest.raises(KitError, match=r"2 packages provide kit.plugins 'dup': one\[dup\], two\[dup\]"):
        registry.find("kit.plugins", "dup")


def test_installed_builtins_register_through_entry_points() -> None:
    registry = Registry.from_environment()
    found = {(s.group, s.name): s for s in registry.specs if s.package == "kit-trainer"}
    assert found[("kit.states", "new")].value == "kit.states:TrainNew"
    assert found[("kit.backends", "torch")].value == "kit_backends.torch:TorchBackend"
    assert {("kit.loggers", "console"), ("kit.loggers", "jsonl"),
            ("kit.checkpoint_formats", "torch"), ("kit.commands", "run")} <= set(found)
    assert all(not s.problems() for s in found.values())
