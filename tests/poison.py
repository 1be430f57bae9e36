"""Runs that go wrong on purpose, at chosen optimizer steps (for nan_guard and grad_norm).

``poison:Poison`` is a hook plugin a config can list (``plugins: [{"poison:Poison": {…}}]``)
and ``poison:two_groups`` an ``optimizer.name`` with two parameter groups.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

import kit


class Poison:
    """Makes chosen optimizer steps non-finite. ``loss``: the model's inputs turn NaN while
    training, so the loss and every gradient are; ``grad``: after backward, one element of
    the first parameter's gradient becomes inf, and the loss stays finite."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        steps: list[int] = Field(default_factory=list, description="optimizer steps N, counting from 1")
        from_step: int | None = Field(None, description="and every step from this one on")
        where: Literal["loss", "grad"] = "loss"

    def __init__(self, options: Options | None = None) -> None:
        self.options = options or self.Options()
        self._trainer: kit.Trainer | None = None

    def due(self) -> bool:
        """Whether the optimizer step being accumulated (``global_step + 1``) is poisoned."""
        assert self._trainer is not None
        step = self._trainer.global_step + 1
        start = self.options.from_step
        return step in self.options.steps or (start is not None and step >= start)

    @kit.hookimpl
    def kit_train_begin(self, trainer: kit.Trainer) -> None:
        self._trainer = trainer
        if self.options.where == "loss" and trainer.model is not None:
            trainer.model.register_forward_pre_hook(self._inputs)

    def _inputs(self, module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if module.training and self.due():
            return (args[0] * float("nan"), *args[1:])
        return None

    @kit.hookimpl
    def kit_after_backward(self, trainer: kit.Trainer) -> None:
        if self.options.where == "grad" and self.due():
            assert trainer.model is not None
            grad = next(iter(trainer.model.parameters())).grad
            assert grad is not None
            grad.view(-1)[0] = float("inf")


def two_groups(params: Iterable[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """SGD with the first layer's parameters in group 0 and the rest in group 1."""
    every = list(params)
    groups: list[dict[str, Any]] = [{"params": every[:2]}, {"params": every[2:], "lr": lr / 2}]
    return torch.optim.SGD(groups, lr=lr)
