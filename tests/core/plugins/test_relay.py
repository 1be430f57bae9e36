"""The relay's direct calls do exactly what pluggy's would, and step aside where they cannot.

Each case registers the same plugins twice, calls the hook once through pluggy and once
through :class:`kit.HookRelay`, and compares what every implementation saw, in which
order, and what came back.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import pluggy
import pytest

import kit
from kit.plugins import HookRelay, blame, get_plugin_manager

Log = list[tuple[str, tuple[Any, ...]]]


def plugins(log: Log) -> list[object]:
    """Implementations of a veto (firstresult) and a step hook, with every kind of ordering
    and argument subset pluggy allows."""

    class Plain:
        @kit.hookimpl
        def kit_skip_optimizer_step(self, loss: Any) -> str | None:
            log.append(("plain", (loss,)))
            return None

        @kit.hookimpl
        def kit_step_end(self, trainer: Any, iteration: int, batch_idx: int, loss: Any) -> None:
            log.append(("plain", (trainer, iteration, batch_idx, loss)))

    class First:
        @kit.hookimpl(tryfirst=True)
        def kit_skip_optimizer_step(self, optimizer: Any, trainer: Any) -> str | None:
            log.append(("first", (optimizer, trainer)))
            return None

        @kit.hookimpl(trylast=True)
        def kit_step_end(self, batch_idx: int) -> None:
            log.append(("first", (batch_idx,)))

    class Vetoes:
        @kit.hookimpl
        def kit_skip_optimizer_step(self) -> str | None:
            log.append(("vetoes", ()))
            return "bad batch"

        @kit.hookimpl
        def kit_step_end(self) -> None:
            log.append(("vetoes", ()))

    class Last:
        @kit.hookimpl(trylast=True)
        def kit_skip_optimizer_step(self, loss: Any) -> str | None:
            log.append(("last", (loss,)))
            return "never reached"

    return [Plain(), First(), Vetoes(), Last()]


def both(chosen: Callable[[list[object]], list[object]]) -> tuple[Log, Log, Any, Any]:
    """The same plugins called through pluggy and through the relay: (logs, results)."""
    pluggy_log: Log = []
    relay_log: Log = []
    pm = get_plugin_manager(*chosen(plugins(pluggy_log)), autoload=False)
    via_pluggy = (pm.hook.kit_skip_optimizer_step(trainer="t", optimizer="o", loss="l"),
                  pm.hook.kit_step_end(trainer="t", iteration=1, batch_idx=2, loss="l"))
    relay = HookRelay(get_plugin_manager(*chosen(plugins(relay_log)), autoload=False))
    assert relay.kit_skip_optimizer_step is not None and relay.kit_step_end is not None
    assert not isinstance(relay.kit_step_end, pluggy.HookCaller)  # the direct call
    via_relay = (relay.kit_skip_optimizer_step(trainer="t", optimizer="o", loss="l"),
                 relay.kit_step_end(trainer="t", iteration=1, batch_idx=2, loss="l"))
    return pluggy_log, relay_log, via_pluggy, via_relay


@pytest.mark.parametrize("chosen", [
    lambda p: p,
    lambda p: p[::-1],
    lambda p: [p[0], p[1]],
    lambda p: [p[1], p[3], p[0]],
    lambda p: [p[2]],
], ids=["all", "reversed", "no-veto", "first-last-plain", "veto-only"])
def test_direct_calls_match_pluggy(chosen: Callable[[list[object]], list[object]]) -> None:
    pluggy_log, relay_log, via_pluggy, via_relay = both(chosen)
    assert relay_log == pluggy_log
    assert via_relay[0] == via_pluggy[0]  # firstresult: the first reason, the rest not called


def test_a_veto_stops_the_chain_and_order_follows_tryfirst() -> None:
    _, log, _, (reason, _) = both(lambda p: p)
    assert reason == "bad batch"
    assert log == [
        ("first", ("o", "t")), ("vetoes", ()),  # the veto: tryfirst, then the last registered; stop
        ("vetoes", ()), ("plain", ("t", 1, 2, "l")), ("first", (2,)),  # the step end: trylast last
    ]


def test_one_implementation_taking_every_argument_is_called_as_is() -> None:
    seen: list[int] = []

    class Every:
        @kit.hookimpl
        def kit_step_end(self, trainer: Any, iteration: int, batch_idx: int, loss: Any) -> None:
            seen.append(batch_idx)

    plugin = Every()
    relay = HookRelay(get_plugin_manager(plugin, autoload=False))
    assert relay.kit_step_end == plugin.kit_step_end  # no frame between the loop and the plugin
    relay.kit_step_end(trainer=None, iteration=1, batch_idx=3, loss=None)
    assert seen == [3]


def test_wrappers_and_monitoring_go_through_pluggy() -> None:
    order: list[str] = []

    class Wraps:
        @kit.hookimpl(wrapper=True)
        def kit_step_end(self) -> Generator[None, None, None]:
            order.append("before")
            yield
            order.append("after")

    class Plain:
        @kit.hookimpl
        def kit_step_end(self) -> None:
            order.append("plain")

    pm = get_plugin_manager(Wraps(), Plain(), autoload=False)
    relay = HookRelay(pm)
    assert isinstance(relay.kit_step_end, pluggy.HookCaller)
    relay.kit_step_end(trainer=None, iteration=1, batch_idx=0, loss=None)
    assert order == ["before", "plain", "after"]

    traced: list[str] = []
    pm = get_plugin_manager(Plain(), autoload=False)
    undo = pm.add_hookcall_monitoring(lambda name, impls, kwargs: traced.append(name),
                                      lambda outcome, name, impls, kwargs: None)
    relay = HookRelay(pm)
    assert isinstance(relay.kit_step_end, pluggy.HookCaller)
    relay.kit_step_end(trainer=None, iteration=1, batch_idx=0, loss=None)
    assert traced == ["kit_step_end"]
    undo()
    relay.refresh()
    assert not isinstance(relay.kit_step_end, pluggy.HookCaller)


def test_a_failing_implementation_is_still_named_with_its_hook() -> None:
    class Breaks:
        @kit.hookimpl
        def kit_step_end(self, batch_idx: int) -> None:
            raise ValueError(f"bad batch {batch_idx}")

    pm = get_plugin_manager(Breaks(), autoload=False)
    relay = HookRelay(pm)
    with pytest.raises(ValueError, match="bad batch 4") as raised:
        relay.kit_step_end(trainer=None, iteration=1, batch_idx=4, loss=None)
    error = blame(raised.value, pm)
    assert error is not None and "kit_step_end" in str(error) and "Breaks" in str(error)


def test_positional_only_parameters_and_missing_keywords_behave_as_in_pluggy() -> None:
    seen: list[Any] = []

    class PositionalOnly:
        @kit.hookimpl
        def kit_test_begin(self, trainer: Any, /) -> None:
            seen.append(trainer)

    class Two:
        @kit.hookimpl
        def kit_val_begin(self, iteration: int) -> None:
            seen.append(iteration)

        @kit.hookimpl
        def kit_step_end(self, batch_idx: int) -> None:
            seen.append(batch_idx)

    relay = HookRelay(get_plugin_manager(PositionalOnly(), Two(), Two(), autoload=False))
    assert relay.kit_test_begin is not None and relay.kit_step_end is not None
    relay.kit_test_begin(trainer="t")
    assert seen == ["t"]
    with pytest.raises(pluggy.HookCallError, match="must provide argument 'batch_idx'"):
        relay.kit_step_end(trainer=None, iteration=1, loss=None)  # type: ignore[call-arg]
    with pytest.raises(pluggy.HookCallError, match="must provide argument 'iteration'"), \
            pytest.warns(UserWarning, match="'iteration'.* cannot be found"):
        relay.call("kit_val_begin", trainer=None)  # the untyped path: pluggy's own check


def test_another_manager_goes_through_pluggy_and_monitoring_stops_once() -> None:
    plain = pluggy.PluginManager("kit")
    plain.add_hookspecs(kit.hookspecs)

    class Plain:
        @kit.hookimpl
        def kit_train_end(self) -> None:
            pass

    plain.register(Plain())
    assert isinstance(HookRelay(plain).kit_train_end, pluggy.HookCaller)  # its monitoring is unknown

    pm = get_plugin_manager(Plain(), autoload=False)
    relay = HookRelay(pm)
    first = pm.add_hookcall_monitoring(lambda *a: None, lambda *a: None)
    second = pm.add_hookcall_monitoring(lambda *a: None, lambda *a: None)
    first()
    first()  # undone twice: the second monitor still holds
    assert isinstance(relay.kit_train_end, pluggy.HookCaller)
    second()
    assert not isinstance(relay.kit_train_end, pluggy.HookCaller)
