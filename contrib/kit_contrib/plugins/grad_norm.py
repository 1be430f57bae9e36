"""``grad_norm``: the total gradient norm and each parameter group's, every N optimizer steps.

Measured in ``kit_before_optimizer_step``, where the gradients are complete (averaged over
ranks), unscaled under ``precision: "16"`` and not yet clipped: the norm
``training.clip_grad_norm`` compares with its limit. It is computed on the device with
``torch.nn.utils.get_total_norm`` (the computation ``clip_grad_norm_`` does), once per
parameter group; the total is the norm of the groups' norms, which for a p-norm equals the
norm over every gradient.

Step numbers match ``train/loss``: the norm of the N-th optimizer step is recorded with
step N, on steps where N % every_n_steps == 0. The plugin implements that one hook and
on every other step returns after one modulo: no device work, no host sync. On a
recording step the norms are read at once (one host read, on rank zero only; on a GPU
a sync every N steps, as ``train/loss`` logging has anyway). A step that ``nan_guard``
skips is measured too, so its norm shows what was wrong (inf or NaN).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field

import kit

if TYPE_CHECKING:
    from kit import Trainer

__all__ = ["GradNorm"]


def group_norms(optimizer: torch.optim.Optimizer, norm_type: float, *, per_group: bool) -> torch.Tensor:
    """``[total, group0, group1, …]`` (``[total]`` without ``per_group``), on the device."""
    groups = [[p.grad for p in group["params"] if p.grad is not None] for group in optimizer.param_groups]
    if not per_group:
        return torch.nn.utils.get_total_norm([g for grads in groups for g in grads], norm_type).reshape(1)
    device = next((grads[0].device for grads in groups if grads), torch.device("cpu"))
    norms = torch.stack([torch.nn.utils.get_total_norm(grads, norm_type).to(device) for grads in groups])
    return torch.cat([torch.linalg.vector_norm(norms, norm_type).reshape(1), norms])


class GradNorm:
    """Records ``grad_norm/total`` and ``grad_norm/group<i>`` every ``every_n_steps`` steps."""

    autoload: ClassVar[bool] = False

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        every_n_steps: int | None = Field(
            None, ge=1, description="record every N optimizer steps; default: training.log_every_n_steps")
        norm_type: float = Field(2.0, gt=0, description="the p of the p-norm; .inf: the largest |gradient|")
        per_group: bool = Field(True, description="also record each parameter group's norm")

    def __init__(self, options: Options | None = None) -> None:
        self.options = options or self.Options()

    @kit.hookimpl
    def kit_before_optimizer_step(self, trainer: Trainer, optimizer: torch.optim.Optimizer) -> None:
        step = trainer.global_step + 1  # the step under way: counted once the optimizer has stepped
        if step % (self.options.every_n_steps or trainer.config.training.log_every_n_steps) \
                or not trainer.is_global_zero:  # only rank zero records
            return
        norms = group_norms(optimizer, self.options.norm_type, per_group=self.options.per_group)
        total, *groups = norms.tolist()  # the one host read
        trainer.record("grad_norm/total", total, split="train", step=step)
        for i, value in enumerate(groups):
            trainer.record(f"grad_norm/group{i}", value, split="train", step=step)
