"""Per-step cost of kit's Lightning backends against hand-written Lightning code, in one run.

    python benchmarks/lightning_overhead.py [--epochs 12] [--repeats 5] [--threads 1]
                                            [--clock wall|cpu] [--json out.json]

Five variants train the same 64-64-10 MLP with Adam at batch 32 on CPU, on the data of
``loop_overhead.py``: the raw PyTorch loop from there; the loop a Fabric user writes by
hand (``fabric.setup``, ``fabric.backward``, a plain DataLoader so the sampler matches
the raw loop's); kit on ``backend: {lightning: {accelerator: cpu}}``; a bare
``lightning.pytorch.Trainer`` on a LightningModule; and kit on
``backend: lightning-trainer``, skipped where no such backend is installed. None logs.

As in ``loop_overhead.py``, each epoch from the second on (epoch 1 is warm-up) is timed
on its own, from its start to the end of its pass over the loader; runs alternate in an
order that rotates each repeat; the figure judged is each variant's best epoch over all
repeats (a shared machine's noise only ever adds time), the median is printed beside it.
Targets: kit on lightning <= 1.05x the bare Fabric loop; kit on lightning-trainer <= 1.05x
the bare Lightning Trainer. Raw PyTorch is shown for scale only: Lightning's own cost is
not kit's to remove.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import lightning.pytorch as pl
import loop_overhead  # type: ignore[import-not-found, unused-ignore]  # a sibling script, not a package
import torch
from loop_overhead import (  # type: ignore[import-not-found, unused-ignore]  # the same model, data, clock
    BATCH,
    N_SAMPLES,
    arguments,
    build_data,
    build_model,
    figure,
    raw_loop,
    run_kit,
)
from torch.nn import functional as F
from torch.utils.data import DataLoader

import kit

__all__ = ["main"]

LR = 1e-3
TARGET = 1.05
TRAINER_BACKEND = "lightning-trainer"
SKIPPED = f"skipped: backend {TRAINER_BACKEND} not installed"
Loop = Callable[[int, Path], list[float]]
"""A variant: (epochs, a temporary folder) -> µs per step of each of epochs 2..N."""


def fabric_loop(epochs: int, tmp: Path) -> list[float]:
    """The Fabric loop a user writes by hand; µs per step of each of epochs 2..N."""
    fabric = L.Fabric(accelerator="cpu", devices=1, precision="32-true")
    model = build_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    model, optimizer = fabric.setup(model, optimizer)
    loader = DataLoader(build_data().train, batch_size=BATCH, shuffle=True)
    per_epoch = []
    for epoch in range(epochs):
        start, steps = loop_overhead.now(), 0
        for x, y in loader:
            x, y = x.to(fabric.device), y.to(fabric.device)
            loss = F.cross_entropy(model(x), y)
            fabric.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
        if epoch >= 1:
            per_epoch.append((loop_overhead.now() - start) / steps * 1e6)
    return per_epoch


class MLPModule(pl.LightningModule):
    """The MLP as a Lightning user writes it: the loss from training_step, Adam from here."""

    def __init__(self) -> None:
        super().__init__()
        self.net = build_model()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=LR)


class TrainerClock(pl.Callback):
    """Times epochs 2..N from inside Lightning's Trainer, as ``EpochClock`` does in kit."""

    def __init__(self) -> None:
        self.per_epoch: list[float] = []
        self._epochs = 0
        self._epoch = (0.0, 0)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epochs += 1
        self._epoch = (loop_overhead.now(), trainer.global_step)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        end = loop_overhead.now()
        if self._epochs >= 2:
            start, step0 = self._epoch
            self.per_epoch.append((end - start) / (trainer.global_step - step0) * 1e6)


def trainer_loop(epochs: int, tmp: Path) -> list[float]:
    """A bare ``lightning.pytorch.Trainer``, nothing written; µs per step of epochs 2..N."""
    clock = TrainerClock()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                         callbacks=[clock], default_root_dir=tmp)
    loader = DataLoader(build_data().train, batch_size=BATCH, shuffle=True)
    trainer.fit(MLPModule(), train_dataloaders=loader)
    return clock.per_epoch


def kit_loop(backend: Any) -> Loop:
    """kit on ``backend`` with no loggers: ``loop_overhead.run_kit``, the run every benchmark times."""

    def run(epochs: int, tmp: Path) -> list[float]:
        per_epoch: list[float] = run_kit(epochs, tmp / "runs", backend=backend).per_epoch
        return per_epoch

    return run


def installed(backend: str) -> bool:
    """Whether kit can find ``backend`` among the installed entry points, without importing it."""
    try:
        spec = kit.Registry.from_environment().find("kit.backends", backend)
    except kit.KitError:
        return False
    return not spec.problems() and spec.unavailable() is None


def quiet() -> None:
    """Keep Lightning's console chatter (GPU available…, tips, worker advice) out of the table."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


def report(args: argparse.Namespace, times: dict[str, list[float] | None],
           targets: dict[str, str]) -> dict[str, Any]:
    """Print the table and the targets; return the same figures for ``--json``."""
    raw_times = times["raw PyTorch loop"] or []
    print(f"64-64-10 MLP, batch {BATCH}, Adam, CPU ({torch.get_num_threads()} threads), "
          f"torch {torch.__version__}, lightning {L.__version__}; {args.epochs - 1} timed epochs of "
          f"{N_SAMPLES // BATCH} steps x {args.repeats} repeats, {args.clock} time; "
          "best epoch (judged) and median epoch")
    figures: dict[str, Any] = {}
    for name, values in times.items():
        if values is None:
            figures[name] = None
            print(f"  {name:<34} {SKIPPED}")
            continue
        figures[name] = figure(name, values, raw_times, width=34)
    for kit_name, bare_name in targets.items():
        label = f"{kit_name} / {bare_name}"
        kit_times, bare_times = times[kit_name], times[bare_name]
        if kit_times is None or bare_times is None:
            figures[label] = None
            print(f"  target {label} <= {TARGET}x: {SKIPPED}")
            continue
        ratio = min(kit_times) / min(bare_times)
        median_ratio = statistics.median(kit_times) / statistics.median(bare_times)
        verdict = "ok" if ratio <= TARGET else "MISSED"
        figures[label] = {"ratio": round(ratio, 4), "median_ratio": round(median_ratio, 4),
                          "target": TARGET, "met": ratio <= TARGET}
        print(f"  target {label} <= {TARGET}x: {ratio:6.3f}x {verdict}   (median {median_ratio:6.3f}x)")
    return figures


def main() -> None:
    args = arguments(__doc__.splitlines()[0])  # also sets the clock EpochClock and raw_loop read
    quiet()

    def raw(epochs: int, tmp: Path) -> list[float]:
        per_epoch: list[float] = raw_loop(epochs)
        return per_epoch

    variants: dict[str, Loop | None] = {
        "raw PyTorch loop": raw,
        "bare Fabric loop": fabric_loop,
        "kit, backend lightning": kit_loop({"lightning": {"accelerator": "cpu"}}),
        "bare Lightning Trainer": trainer_loop,
        f"kit, backend {TRAINER_BACKEND}": kit_loop(TRAINER_BACKEND) if installed(TRAINER_BACKEND) else None,
    }
    targets = {"kit, backend lightning": "bare Fabric loop",
               f"kit, backend {TRAINER_BACKEND}": "bare Lightning Trainer"}
    runs = {name: run for name, run in variants.items() if run is not None}
    measured: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            turn = repeat % len(names)  # each variant takes each place in the order in turn
            for name in names[turn:] + names[:turn]:
                measured[name] += runs[name](args.epochs, Path(tmp))
    times: dict[str, list[float] | None] = {name: measured.get(name) for name in variants}
    figures = report(args, times, targets)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
