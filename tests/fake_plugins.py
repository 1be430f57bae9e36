"""Plugin objects the unit tests register through in-memory entry points."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

import kit

CALLS: list[str] = []


class WithOptions:
    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        threshold: float = 0.5

    def __init__(self, options: Options) -> None:
        self.options = options

    @kit.hookimpl
    def kit_train_begin(self) -> None:
        CALLS.append(f"with_options:{self.options.threshold}")


class NoOptions:
    @kit.hookimpl
    def kit_train_begin(self) -> None:
        CALLS.append("no_options")


class Typo:
    @kit.hookimpl
    def kit_step_ends(self, loss: Any) -> None:  # misspelt on purpose
        pass


class WrongArgs:
    @kit.hookimpl
    def kit_step_end(self, los: Any) -> None:  # not an argument of kit_step_end
        pass


class NotAState:
    pass

