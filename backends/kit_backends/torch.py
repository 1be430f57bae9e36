"""``torch``: one process on one device (cpu, cuda or mps).

Everything a single process needs is the :class:`kit.Backend` default (mixed precision,
a grad scaler for fp16, ``torch.compile``, clipping); this names it. kit's loop does the
rest, the same loop every backend runs under.
"""

from __future__ import annotations

from typing import ClassVar

import kit

__all__ = ["TorchBackend"]


class TorchBackend(kit.Backend):
    """Single process on cpu, cuda or mps; epoch- or step-based; AMP, accumulation, clipping."""

    name: ClassVar[str] = "torch"
