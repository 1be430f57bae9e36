"""Per-step cost of kit's loop against a raw PyTorch loop, in one run, on the same data.

    python benchmarks/loop_overhead.py [--epochs 12] [--repeats 5] [--threads 1] [--clock wall|cpu]
                                       [--json out.json]

Both train the same 64-64-10 MLP with Adam at batch 32 on CPU from the same
DataLoader setup. Each epoch from the second on (epoch 1 is warm-up) is timed on its
own, from its first batch to the end of its pass over the loader, so validation, kit's
checkpoints and run summary are not counted. Runs alternate raw/kit, in an order that
rotates each repeat. The figure judged against the targets is each variant's best
epoch over all repeats, as ``timeit`` advises: noise from a shared machine only ever
adds time, and on a small VM it moves a whole run by 10-20%, more than the margin
measured. The median epoch is printed beside it.
Target: kit with its default loggers <= 1.05x raw, and with the built-in plugins
grad_norm (every log_every_n_steps = 50 steps) and nan_guard (one check and one host
read per step) on top of them, too. A raw loop doing those checks by hand is timed as
well, so the plugins' row also reads against the same work done without kit.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
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


def raw_loop(epochs: int, *, checks: bool = False) -> list[float]:
    """The loop a user would write by hand; returns µs per step of each of epochs 2..N.

    ``checks`` adds, by hand and with the primitives the plugins use, what ``nan_guard``
    and ``grad_norm`` do: skip a step whose loss or gradients are not finite (one fused
    check, one host read), and every 50 steps read the gradients' total norm. Against it,
    the plugins' row shows kit's own cost of running them, apart from the checks' cost.
    """
    model = build_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(build_data().train, batch_size=BATCH, shuffle=True)
    device = torch.device("cpu")
    found, one = torch.zeros(1), torch.ones(1)
    norms: list[float] = []
    per_epoch = []
    for epoch in range(epochs):
        start, steps = now(), 0
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            loss.backward()  # type: ignore[no-untyped-call]
            steps += 1
            if checks:
                grads = [p.grad for p in model.parameters() if p.grad is not None]
                if steps % 50 == 0:
                    norms.append(torch.nn.utils.get_total_norm(grads).item())
                torch._amp_foreach_non_finite_check_and_unscale_(grads, found, one)
                if not math.isfinite(loss.item()) or found.item():
                    found.zero_()
                    optimizer.zero_grad(set_to_none=True)
                    continue
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if epoch >= 1:
            per_epoch.append((now() - start) / steps * 1e6)
    return per_epoch


class EpochClock:
    """Times epochs 2..N from inside kit; fires once per epoch, never per step."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs
        self.start = self.end = 0.0
        self.steps = 0
        self.per_epoch: list[float] = []  # µs per step of each of epochs 2..N
        self._epoch = (0.0, 0)

    @kit.hookimpl
    def kit_iteration_begin(self, trainer: kit.Trainer, iteration: int) -> None:
        self._epoch = (now(), trainer.global_step)
        if iteration == 2:
            self.start, self.steps = self._epoch

    @kit.hookimpl
    def kit_loader_exhausted(self, trainer: kit.Trainer, iteration: int) -> None:
        end = now()
        if iteration >= 2:
            start, step0 = self._epoch
            self.per_epoch.append((end - start) / (trainer.global_step - step0) * 1e6)
        if iteration == self.epochs:
            self.end = end
            self.steps = trainer.global_step - self.steps


def run_kit(epochs: int, runs_dir: Path, *, backend: object = "torch", loggers: list[object] | None = None,
            plugins: list[object] | None = None, log_every: int = 50) -> EpochClock:
    """kit's loop on the same model and data, on ``backend``; the clock that timed it. Every
    benchmark that runs kit runs it through here, so they time the same run."""
    config = kit.KitConfig.model_validate({
        "experiment": "bench",
        "runs_dir": str(runs_dir),
        "backend": backend,
        "model": {"target": "loop_overhead:build_model"},
        "data": {"target": "loop_overhead:build_data", "batch_size": BATCH},
        "task": {"metrics": []},
        "optimizer": {"name": "adam", "lr": 1e-3},
        "training": {"iterations": epochs, "save_frequency": epochs, "device": "cpu",
                     "log_every_n_steps": log_every},
        "loggers": loggers or [],
        "plugins": plugins or [],
    })
    config.base_dir = Path(__file__).resolve().parent
    clock = EpochClock(epochs)
    with contextlib.redirect_stdout(io.StringIO()):
        kit.Trainer(config, plugins=[clock], autoload=False).run()
    return clock


def kit_loop(epochs: int, loggers: list[object], runs_dir: Path, *, log_every: int = 50,
             plugins: list[object] | None = None) -> list[float]:
    """kit's loop on the same model and data; returns µs per step of each of epochs 2..N."""
    return run_kit(epochs, runs_dir, loggers=loggers, plugins=plugins, log_every=log_every).per_epoch


def figure(name: str, values: list[float], raw: list[float], *, width: int) -> dict[str, float]:
    """One variant's row against the raw loop's epochs: best epoch (judged) and median, in
    µs per step and as a ratio; printed, and returned for ``--json``."""
    best, median = min(values), statistics.median(values)
    raw_best, raw_median = min(raw), statistics.median(raw)
    print(f"  {name:<{width}} {best:8.2f} µs/step {best / raw_best:6.3f}x raw   "
          f"(median {median:8.2f}, {median / raw_median:6.3f}x)")
    return {"us_per_step": round(best, 2), "ratio": round(best / raw_best, 4),
            "median_us_per_step": round(median, 2), "median_ratio": round(median / raw_median, 4)}


def arguments(description: str) -> argparse.Namespace:
    """The options every single-process benchmark takes, parsed and applied: the clock that
    ``EpochClock`` and ``raw_loop`` read, torch's threads, and this folder on ``sys.path``
    (kit imports the model and data targets from it)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1 keeps tiny-op timings steady)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall time, or this process's CPU time (steadier on a busy machine)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.epochs < 2 or args.repeats < 1:
        parser.error("--epochs needs 2 or more (epoch 1 is warm-up); --repeats 1 or more")
    global now
    now = CLOCKS[args.clock]
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    return args


def main() -> None:
    args = arguments(__doc__.splitlines()[0])

    default: list[object] = ["console", "jsonl"]
    variants: dict[str, tuple[list[object], list[object]] | str | None] = {  # (loggers, plugins)
        "raw": None,
        "raw, NaN skip + grad norm by hand": "checks",
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
                if variant is None or isinstance(variant, str):
                    times[name] += raw_loop(args.epochs, checks=variant == "checks")
                else:
                    loggers, plugins = variant
                    times[name] += kit_loop(args.epochs, loggers, Path(tmp), plugins=plugins)

    print(f"64-64-10 MLP, batch {BATCH}, Adam, CPU ({torch.get_num_threads()} threads), "
          f"torch {torch.__version__}; {args.epochs - 1} timed epochs of {N_SAMPLES // BATCH} steps x "
          f"{args.repeats} repeats, {args.clock} time; best epoch (judged) and median epoch")
    figures: dict[str, dict[str, float]] = {
        name: figure(name, values, times["raw"], width=40) for name, values in times.items()}
    plugins = min(times["kit, grad_norm + nan_guard"])
    by_hand = min(times["raw, NaN skip + grad norm by hand"])
    figures["kit, grad_norm + nan_guard"]["ratio_to_same_checks_by_hand"] = round(plugins / by_hand, 4)
    print(f"  kit, grad_norm + nan_guard against the same checks by hand: {plugins / by_hand:6.3f}x")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
