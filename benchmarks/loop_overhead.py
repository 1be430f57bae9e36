"""Per-step cost of kit's loop against a raw PyTorch loop, in one run, on the same data.

    python benchmarks/loop_overhead.py [--epochs 12] [--repeats 5] [--threads 1] [--clock wall|cpu]
                                       [--json out.json]

Both train the same 64-64-10 MLP with Adam at batch 32 on CPU from the same
DataLoader setup. Timing covers epochs 2..N (epoch 1 is warm-up) and stops at the
end of the last pass over the loader, so kit's final checkpoint and run summary are
not counted. Runs alternate raw/kit, in an order that rotates each repeat, to spread
machine noise; medians are reported.
Target: kit with its default loggers <= 1.05x raw, and with the built-in plugins
grad_norm (every log_every_n_steps = 50 steps) and nan_guard (one check and one host
read per step) on top of them, too.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import kit

N_SAMPLES = 4096
BATCH = 32
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
now = CLOCKS["wall"]
"""What the timings read: wall time, or with ``--clock cpu`` this process's CPU time, which
a machine shared with other work (a busy CI runner) disturbs far less."""


def build_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def build_data() -> kit.Data:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N_SAMPLES, 64, generator=g)
    y = torch.randint(0, 10, (N_SAMPLES,), generator=g)
    return kit.Data(train=TensorDataset(x, y))


def raw_loop(epochs: int) -> float:
    """The loop a user would write by hand; returns µs per step over epochs 2..N."""
    model = build_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(build_data().train, batch_size=BATCH, shuffle=True)
    device = torch.device("cpu")
    steps, start = 0, 0.0
    for epoch in range(epochs):
        if epoch == 1:
            start, steps = now(), 0
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
    return (now() - start) / steps * 1e6


class EpochClock:
    """Times epochs 2..N from inside kit; fires once per epoch, never per step."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs
        self.start = self.end = 0.0
        self.steps = 0

    @kit.hookimpl
    def kit_iteration_begin(self, trainer: kit.Trainer, iteration: int) -> None:
        if iteration == 2:
            self.start, self.steps = now(), trainer.global_step

    @kit.hookimpl
    def kit_loader_exhausted(self, trainer: kit.Trainer, iteration: int) -> None:
        if iteration == self.epochs:
            self.end = now()
            self.steps = trainer.global_step - self.steps


def kit_loop(epochs: int, loggers: list[object], runs_dir: Path, *, log_every: int = 50,
             plugins: list[object] | None = None) -> float:
    config = kit.KitConfig.model_validate({
        "experiment": "bench",
        "runs_dir": str(runs_dir),
        "model": {"target": "loop_overhead:build_model"},
        "data": {"target": "loop_overhead:build_data", "batch_size": BATCH},
        "task": {"metrics": []},
        "optimizer": {"name": "adam", "lr": 1e-3},
        "training": {"iterations": epochs, "save_frequency": epochs, "device": "cpu",
                     "log_every_n_steps": log_every},
        "loggers": loggers,
        "plugins": plugins or [],
    })
    config.base_dir = Path(__file__).resolve().parent
    clock = EpochClock(epochs)
    with contextlib.redirect_stdout(io.StringIO()):
        kit.Trainer(config, plugins=[clock], autoload=False).run()
    return (clock.end - clock.start) / clock.steps * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1 keeps tiny-op timings steady)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall time, or this process's CPU time (steadier on a busy machine)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    global now
    now = CLOCKS[args.clock]
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent))

    default: list[object] = ["console", "jsonl"]
    variants: dict[str, tuple[list[object], list[object]] | None] = {  # (loggers, plugins)
        "raw": None,
        "kit, no loggers": ([], []),
        "kit, default loggers (console, jsonl)": (default, []),
        "kit, console with progress bars": ([{"console": {"progress": True}}, "jsonl"], []),
        "kit, grad_norm + nan_guard": (default, ["grad_norm", "nan_guard"]),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        names = list(variants)
        for repeat in range(args.repeats):
            turn = repeat % len(names)  # each variant takes each place in the order in turn
            for name in names[turn:] + names[:turn]:
                variant = variants[name]
                if variant is None:
                    times[name].append(raw_loop(args.epochs))
                else:
                    loggers, plugins = variant
                    times[name].append(kit_loop(args.epochs, loggers, Path(tmp), plugins=plugins))

    raw = statistics.median(times["raw"])
    steps = (args.epochs - 1) * (N_SAMPLES // BATCH)
    print(f"64-64-10 MLP, batch {BATCH}, Adam, CPU ({torch.get_num_threads()} threads), "
          f"torch {torch.__version__}; {steps} timed steps x {args.repeats} repeats, median {args.clock} "
          "time")
    figures = {}
    for name, values in times.items():
        median = statistics.median(values)
        figures[name] = {"us_per_step": round(median, 2), "ratio": round(median / raw, 4)}
        print(f"  {name:<40} {median:8.2f} µs/step   {median / raw:6.3f}x raw")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
