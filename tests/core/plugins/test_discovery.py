from __future__ import annotations

import sys
from pathlib import Path

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


def install(site: Path, version: str) -> None:
    """A real (if tiny) installed distribution ``acme-kit`` under ``site``."""
    info = site / f"acme_kit-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: acme-kit\nVersion: {version}\n"
        "Requires-Dist: pyyaml>=6\n"
        'Requires-Dist: kit-dependency-that-does-not-exist>=1; extra == "fancy"\n'
        "Requires-Dist: another-missing-dist ; extra == 'other'\n")
    (info / "entry_points.txt").write_text(
        "[kit.loggers]\nfancy = acme_fancy:Logger [fancy]\nplain = acme_fancy:Logger\n")
    (site / "acme_fancy.py").write_text("class Logger:\n    pass\n")


def test_discovery_reads_what_an_entry_points_extras_require(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(tmp_path, "1.0")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry.from_environment(["kit.loggers"])
    fancy, plain = registry.find("kit.loggers", "fancy"), registry.find("kit.loggers", "plain")
    assert (fancy.package, fancy.version, fancy.extras) == ("acme-kit", "1.0", ("fancy",))
    assert fancy.requires == ("kit-dependency-that-does-not-exist",)  # not pyyaml, not 'other'
    assert fancy.problems() == [] and fancy.unavailable() == (
        "missing kit-dependency-that-does-not-exist: install `acme-kit[fancy]`")
    assert plain.requires == () and plain.problems() == [] and plain.unavailable() is None
    assert "acme_fancy" not in sys.modules


def test_a_shadowed_copy_of_a_package_is_not_a_second_plugin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(tmp_path / "first", "2.0")
    install(tmp_path / "second", "1.0")
    monkeypatch.syspath_prepend(str(tmp_path / "second"))
    monkeypatch.syspath_prepend(str(tmp_path / "first"))  # import finds this copy: so does kit
    registry = Registry.from_environment(["kit.loggers"])
    assert [(s.name, s.version) for s in registry.specs if s.package == "acme-kit"] == [
        ("fancy", "2.0"), ("plain", "2.0")]
    assert registry.find("kit.loggers", "plain").version == "2.0"
