from __future__ import annotations

import subprocess
import sys

import fake_plugins
import pytest

import kit
from kit.errors import ConfigError, KitError, PluginLoadError
from kit.plugins import EntryPointSpec, HookRelay, PluginChoice, Registry, get_plugin_manager


def registry(*entries: tuple[str, str], group: str = "kit.plugins") -> Registry:
    return Registry(EntryPointSpec(group=group, name=n, package="fake", value=v) for n, v in entries)


@pytest.fixture(autouse=True)
def _clear_calls() -> None:
    fake_plugins.CALLS.clear()


def test_each_call_returns_a_fresh_manager() -> None:
    one, two = get_plugin_manager(autoload=False), get_plugin_manager(autoload=False)
    assert one is not two
    assert one.project_name == "kit"
    assert "kit_step_end" in dir(one.hook)


def test_autoload_registers_kit_plugins_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KIT_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    pm = get_plugin_manager(registry=registry(("noopt", "fake_plugins:NoOptions")))
    assert pm.has_plugin("noopt")
    pm.hook.kit_train_begin(trainer=None)
    assert fake_plugins.CALLS == ["no_options"]


def test_env_var_disables_autoload(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KIT_DISABLE_PLUGIN_AUTOLOAD", "1")
    reg = registry(("noopt", "fake_plugins:NoOptions"))
    assert not get_plugin_manager(registry=reg).has_plugin("noopt")
    # a plugin chosen explicitly still loads
    pm = get_plugin_manager(registry=reg, choices=[PluginChoice("kit.plugins", "noopt")])
    assert pm.has_plugin("noopt")


def test_blocked_plugins_never_load() -> None:
    reg = registry(("noopt", "fake_plugins:NoOptions"), ("broken", "broken_plugin_mod:X"))
    pm = get_plugin_manager(registry=reg, autoload=True, blocked=["noopt", "broken"])
    assert not pm.has_plugin("noopt") and not pm.has_plugin("broken")


def test_broken_autoloaded_plugin_is_skipped_with_one_warning_and_no_cli_advice(
        capfd: pytest.CaptureFixture[str]) -> None:
    reg = registry(("broken", "broken_plugin_mod:X"), ("noopt", "fake_plugins:NoOptions"))
    pm = get_plugin_manager(registry=reg, autoload=True)  # what a program embedding kit gets
    assert pm.has_plugin("noopt") and not pm.has_plugin("broken")
    err = capfd.readouterr().err
    assert err.count("\n") == 1, err
    assert "fake[broken] failed to load" in err and "skipped" in err and "blocked=['broken']" in err
    assert "-p no:" not in err and "kit -" not in err


def test_broken_autoloaded_plugin_names_package_and_entry() -> None:
    with pytest.raises(PluginLoadError, match=r"fake\[broken\] failed to load") as info:
        get_plugin_manager(registry=registry(("broken", "broken_plugin_mod:X")), autoload=True,
                           broken="raise")
    assert str(info.value).endswith(
        "(leave it out with `kit -p no:broken …`, or blocked=['broken'] in Python)")
    assert "\n" not in str(info.value)


def test_options_are_validated_by_the_plugins_own_model() -> None:
    reg = registry(("opt", "fake_plugins:WithOptions"))
    pm = get_plugin_manager(registry=reg, autoload=False, choices=[
        PluginChoice("kit.plugins", "opt", {"threshold": 0.9}, "plugins[0]")])
    pm.hook.kit_train_begin(trainer=None)
    assert fake_plugins.CALLS == ["with_options:0.9"]
    expected = r"^plugins\[0\]\.options\.threshold: Input should be a valid number"
    with pytest.raises(ConfigError, match=expected):
        get_plugin_manager(registry=reg, autoload=False, choices=[
            PluginChoice("kit.plugins", "opt", {"threshold": "high"}, "plugins[0]")])
    with pytest.raises(ConfigError, match=r"plugins\[0\]\.options\.colour: Extra inputs"):
        get_plugin_manager(registry=reg, autoload=False, choices=[
            PluginChoice("kit.plugins", "opt", {"colour": 1}, "plugins[0]")])


def test_options_for_a_plugin_without_options_are_refused() -> None:
    reg = registry(("noopt", "fake_plugins:NoOptions"))
    with pytest.raises(ConfigError, match=r"fake\[noopt\] takes no options"):
        get_plugin_manager(registry=reg, autoload=False, choices=[
            PluginChoice("kit.plugins", "noopt", {"x": 1}, "plugins[0]")])


def test_plugins_by_import_target() -> None:
    pm = get_plugin_manager(autoload=False, registry=Registry([]), choices=[
        PluginChoice("kit.plugins", "fake_plugins:NoOptions")])
    assert pm.has_plugin("fake_plugins:NoOptions")


def test_unknown_hook_is_refused_with_a_suggestion() -> None:
    expected = r"implements unknown hook kit_step_ends \(did you mean kit_step_end\?\)"
    with pytest.raises(KitError, match=expected):
        get_plugin_manager(fake_plugins.Typo(), autoload=False)


def test_wrong_hook_arguments_name_the_plugin() -> None:
    reg = registry(("wrong", "fake_plugins:WrongArgs"))
    with pytest.raises(PluginLoadError, match=r"fake\[wrong\].*los"):
        get_plugin_manager(registry=reg, autoload=True, broken="raise")


def test_relay_resolves_unimplemented_hooks_to_none() -> None:
    pm = get_plugin_manager(fake_plugins.NoOptions(), autoload=False)
    relay = HookRelay(pm)
    assert relay.kit_train_begin is not None
    assert relay.kit_step_end is None and relay.kit_metric_recorded is None
    recorder_calls: list[int] = []

    class Late:
        @kit.hookimpl
        def kit_step_end(self, batch_idx: int) -> None:
            recorder_calls.append(batch_idx)

    pm.register(Late())
    relay.refresh()
    relay.kit_step_end(trainer=None, iteration=1, batch_idx=7, loss=None)
    assert recorder_calls == [7]
    with pytest.raises(AttributeError, match="no kit hook named 'kit_nope'"):
        relay.kit_nope  # noqa: B018


def test_importing_the_manager_imports_neither_torch_nor_click() -> None:
    code = ("import sys, kit; pm = kit.get_plugin_manager(autoload=False); "
            "bad = [m for m in ('torch', 'click', 'pydantic') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
