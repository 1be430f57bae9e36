"""Per-step cost of each logger, as a ratio to no logger, at log_every_n_steps 1 and 50.

    python benchmarks/logger_overhead.py [--epochs 6] [--repeats 5]

Same model, data and timing as loop_overhead.py (epochs 2..N timed one by one, the best
epoch of alternating runs). Loggers whose optional dependency is missing are skipped with a note.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loop_overhead import kit_loop

import kit

LOGGERS = ["console", "jsonl", "csv", "tensorboard", "mlflow"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    registry = kit.Registry.from_environment()
    available = [name for name in LOGGERS if not registry.find("kit.loggers", name).problems()]
    for name in sorted(set(LOGGERS) - set(available)):
        print(f"skipped {name}: {'; '.join(registry.find('kit.loggers', name).problems())}")
    print(f"64-64-10 MLP, batch 32, CPU ({args.threads} thread(s)); best epoch of {args.repeats} runs")
    with tempfile.TemporaryDirectory() as tmp:
        for every in (1, 50):
            times: dict[str, list[float]] = {name: [] for name in ["none", *available]}
            for _ in range(args.repeats):
                for name in times:
                    loggers: list[object] = [] if name == "none" else [name]
                    times[name] += kit_loop(args.epochs, loggers, Path(tmp), log_every=every)
            base = min(times["none"])
            print(f"log_every_n_steps={every}")
            for name, values in times.items():
                best = min(values)
                print(f"  {name:<12} {best:8.2f} µs/step   {best / base:6.3f}x no logger")


if __name__ == "__main__":
    main()
