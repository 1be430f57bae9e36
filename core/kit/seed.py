"""Seeding and determinism for every RNG a training run draws from."""

from __future__ import annotations

import os
import random
from typing import Any

import torch

__all__ = ["rng_state", "seed_everything", "set_rng_state"]


def seed_everything(seed: int, *, deterministic: bool = False) -> None:
    """Seed python, numpy (when installed) and torch; optionally force deterministic kernels."""
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    try:
        import numpy as np
    except ImportError:
        pass
    else:
        np.random.seed(seed % 2**32)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def rng_state() -> dict[str, Any]:
    """Every global RNG's state, as tensors and plain data (``weights_only``-loadable)."""
    version, state, gauss = random.getstate()
    rng: dict[str, Any] = {
        "python": [version, list(state), gauss],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    try:
        import numpy as np
    except ImportError:
        return rng
    np_state: Any = np.random.get_state()
    name, keys, pos, has_gauss, cached = np_state
    rng["numpy"] = [name, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(cached)]
    return rng


def set_rng_state(rng: dict[str, Any]) -> None:
    """Restore :func:`rng_state`; CUDA states only when the device count matches."""
    version, state, gauss = rng["python"]
    random.setstate((int(version), tuple(int(x) for x in state), gauss))
    torch.set_rng_state(rng["torch"].cpu())
    cuda = list(rng.get("cuda") or [])
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
    if "numpy" in rng:
        try:
            import numpy as np
        except ImportError:
            return
        name, keys, pos, has_gauss, cached = rng["numpy"]
        np.random.set_state((str(name), keys.numpy().astype("uint32"), int(pos), int(has_gauss),
                             float(cached)))
