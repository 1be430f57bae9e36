"""Hook plugins that differ only in how pluggy orders them: plain, tryfirst, trylast, wrappers.

Each records its entry-point name in ``CALLS`` when its ``kit_iteration_end`` starts (a
wrapper: before it yields), so a test can compare the order a run really calls them in
with the order ``kit plugins list --hooks`` prints.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, ClassVar

import kit

CALLS: list[tuple[int, str]] = []
"""``(iteration, entry-point name)`` for every ``kit_iteration_end`` call, in call order."""


class Plain:
    name = "plain"

    @kit.hookimpl
    def kit_iteration_end(self, iteration: int) -> None:
        CALLS.append((iteration, self.name))

    @kit.hookimpl
    def kit_skip_optimizer_step(self) -> str | None:  # a firstresult hook: never vetoes
        return None


class Later(Plain):
    """Plain too, registered before ``plain`` (entry points load sorted by name): called after it."""

    name = "later"


class OptIn(Plain):
    """Like kit's own built-ins, loaded only when asked for (``-p optin`` or ``plugins:``)."""

    name = "optin"
    autoload: ClassVar[bool] = False


class First:
    name = "first"

    @kit.hookimpl(tryfirst=True)
    def kit_iteration_end(self, iteration: int) -> None:
        CALLS.append((iteration, self.name))


class Last:
    name = "last"

    @kit.hookimpl(trylast=True)
    def kit_iteration_end(self, iteration: int) -> None:
        CALLS.append((iteration, self.name))


class Wrap:
    name = "wrap"

    @kit.hookimpl(wrapper=True)
    def kit_iteration_end(self, iteration: int) -> Generator[None, Any, Any]:
        CALLS.append((iteration, self.name))
        return (yield)


class Outer:
    name = "outer"

    @kit.hookimpl(wrapper=True, tryfirst=True)
    def kit_iteration_end(self, iteration: int) -> Generator[None, Any, Any]:
        CALLS.append((iteration, self.name))
        return (yield)


class OldStyle:
    name = "old"

    @kit.hookimpl(hookwrapper=True)
    def kit_iteration_end(self, iteration: int) -> Generator[None, Any, None]:
        CALLS.append((iteration, self.name))
        yield
