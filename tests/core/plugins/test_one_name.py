"""One name per plugin: a plugin is known everywhere by the name it was chosen by."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import kit
from kit.cli import CliState, main
from kit.errors import ConfigError, KitError
from kit.plugins import EntryPointSpec, Registry, get_plugin_manager


def spec(name: str, value: str, group: str = "kit.plugins", package: str = "pkg") -> EntryPointSpec:
    return EntryPointSpec(group=group, name=name, package=package, value=value, version="1.0")


def test_a_class_whose_name_differs_from_its_entry_point_is_refused_naming_both() -> None:
    registry = Registry([spec("mine", "named_formats:MisnamedFormat", group="kit.checkpoint_formats",
                              package="acme")])
    with pytest.raises(KitError) as info:
        registry.load("kit.checkpoint_formats", "mine")
    message = str(info.value)
    assert "acme[mine]" in message and "'other'" in message and "MisnamedFormat" in message
    assert "set its name = 'mine'" in message


def test_an_empty_or_matching_class_name_loads() -> None:
    registry = Registry([spec("mine", "named_formats:UnnamedFormat", group="kit.checkpoint_formats"),
                         spec("other", "named_formats:MisnamedFormat", group="kit.checkpoint_formats")])
    assert registry.load("kit.checkpoint_formats", "mine").__name__ == "UnnamedFormat"
    assert registry.load("kit.checkpoint_formats", "other").__name__ == "MisnamedFormat"


def test_the_name_check_is_for_the_groups_whose_interface_has_a_name() -> None:
    # a hook plugin's own ``name`` attribute means whatever its author wants
    registry = Registry([spec("mine", "named_formats:MisnamedFormat")])
    assert registry.load("kit.plugins", "mine").__name__ == "MisnamedFormat"


def test_an_unknown_name_is_a_config_error_at_the_key_that_chose_it() -> None:
    registry = Registry([spec("torch", "named_formats:UnnamedFormat", group="kit.checkpoint_formats")])
    with pytest.raises(ConfigError) as info:
        registry.load("kit.checkpoint_formats", "torhc", key="checkpoint.format")
    assert info.value.key == "checkpoint.format"
    assert str(info.value).startswith("checkpoint.format: unknown checkpoint format 'torhc'")
    assert "did you mean 'torch'?" in str(info.value)


def test_two_packages_with_one_name_say_how_to_choose_and_the_choice_works() -> None:
    registry = Registry([spec("dup", "fake_plugins:NoOptions", package="one"),
                         spec("dup", "fake_plugins:WithOptions", package="two")])
    with pytest.raises(KitError) as info:
        registry.load("kit.plugins", "dup")
    assert "one[dup], two[dup]" in str(info.value)
    assert "-p no:two[dup]" in str(info.value)
    chosen = registry.without(["two[dup]"])
    assert chosen.load("kit.plugins", "dup").__name__ == "NoOptions"
    # the same through the plugin manager, as `kit -p no:two[dup] …` does
    pm = get_plugin_manager(registry=registry, autoload=True, blocked=["two[dup]"])
    assert type(pm.get_plugin("dup")).__name__ == "NoOptions"


def test_a_format_is_recorded_by_the_name_it_was_chosen_by_and_loads_back(kit_config: Any) -> None:
    """A format class that leaves ``name`` empty used to write ``"format": ""`` into every
    manifest, which nothing could load again."""
    mine = spec("mine", "named_formats:UnnamedFormat", group="kit.checkpoint_formats", package="acme")
    registry = Registry([*Registry.from_environment().specs, mine])
    config = kit_config(checkpoint={"format": "mine"})
    trainer = kit.Trainer(config, registry=registry, autoload=False)
    trainer.run()
    assert trainer.checkpoints is not None
    folder = trainer.checkpoints.list()[-1]
    assert json.loads((folder / "manifest.json").read_text())["format"] == "mine"
    resumed = kit.Trainer(kit_config(checkpoint={"format": "mine"}, training={"iterations": 3}),
                          registry=registry, mode="continue", autoload=False)
    resumed.run()
    assert resumed.global_step > trainer.global_step
    result = CliRunner().invoke(main, ["ckpt", "inspect", str(folder), "--json"],
                                obj=CliState(_registry=registry), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["format"] == "mine"


def test_a_misnamed_format_is_refused_before_anything_is_written(kit_config: Any, tmp_path: Path) -> None:
    mine = spec("mine", "named_formats:MisnamedFormat", group="kit.checkpoint_formats", package="acme")
    registry = Registry([*Registry.from_environment().specs, mine])
    config = kit_config(checkpoint={"format": "mine"})
    with pytest.raises(KitError, match=r"acme\[mine\].*'other'"):
        kit.Trainer(config, registry=registry, autoload=False).run()
    assert not (Path(config.runs_dir) / config.experiment).exists()


def test_two_autoloaded_plugins_with_one_name_are_an_error_not_a_silent_pick() -> None:
    registry = Registry([spec("dup", "fake_plugins:NoOptions", package="one"),
                         spec("dup", "fake_plugins:WithOptions", package="two")])
    with pytest.raises(KitError, match=r"one\[dup\], two\[dup\].*-p no:two\[dup\]"):
        get_plugin_manager(registry=registry, autoload=True, broken="raise")
