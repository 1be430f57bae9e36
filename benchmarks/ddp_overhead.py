"""Per-step cost of kit's ``ddp`` backend against a hand-written DDP loop, in one run.

    python benchmarks/ddp_overhead.py [--epochs 6] [--repeats 3] [--threads 1] [--nproc 2]
        [--timeout 300] [--json out.json]

Both train the same 64-64-10 MLP with Adam at batch 32 per rank on 4096 samples, in
``--nproc`` CPU processes under torchrun with gloo: the raw loop with
``DistributedDataParallel`` and a ``DistributedSampler``, kit with ``backend: ddp``.
Timing covers epochs 2..N on rank 0 (epoch 1 is warm-up) and stops at the end of the
last pass over the loader, so kit's final checkpoint and run summary are not counted;
kit's work between epochs (its stop agreement, the epoch loss) is.

Each repeat launches torchrun twice, once per variant, in an order that alternates
between repeats to spread machine noise; rank 0 writes its figures to a JSON file the
launcher reads, and medians are reported. One launch running both variants would save
the seconds torchrun and torch's import take, but it would have to destroy the default
process group and make another in the same processes, which PyTorch does not support
reliably (pytorch/pytorch#55967, #74666; here it hung 3 launches in 5), and sharing one
group would skip the ddp backend's own set-up. So each variant gets fresh processes and
its own group, as in a real run. Target: kit <= 1.05x raw.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from loop_overhead import BATCH, build_data, build_model, run_kit  # the same model, data and clock
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

__all__ = ["main"]

LR = 1e-3
VARIANTS = ("raw", "kit")
LABELS = {"raw": "raw DDP loop", "kit": "kit, backend ddp, no loggers"}


# -- in each torchrun worker -----------------------------------------------------------


def raw_loop(epochs: int) -> tuple[float, int]:
    """The DDP loop a user would write by hand; (µs per step, steps) over epochs 2..N."""
    dist.init_process_group("gloo")
    try:
        model = DistributedDataParallel(build_model())
        optimizer = torch.optim.Adam(model.parameters(), lr=LR)
        dataset = build_data().train
        sampler: DistributedSampler[int] = DistributedSampler(dataset, shuffle=True, seed=0)
        loader = DataLoader(dataset, batch_size=BATCH, sampler=sampler)
        steps, start = 0, 0.0
        for epoch in range(epochs):
            sampler.set_epoch(epoch)
            if epoch == 1:
                start, steps = time.perf_counter(), 0
            for x, y in loader:
                loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                steps += 1
        elapsed = time.perf_counter() - start
    finally:
        dist.destroy_process_group()
    return elapsed / steps * 1e6, steps


def kit_loop(epochs: int, runs_dir: Path) -> tuple[float, int]:
    """The same training through ``kit.Trainer`` with ``backend: ddp``; (µs per step, steps)."""
    clock = run_kit(epochs, runs_dir, backend="ddp")
    return (clock.end - clock.start) / clock.steps * 1e6, clock.steps


def worker(args: argparse.Namespace) -> None:
    """One variant in one torchrun process; rank 0 writes its figures to ``args.out``."""
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if args.worker == "raw":
        us_per_step, steps = raw_loop(args.epochs)
    else:
        us_per_step, steps = kit_loop(args.epochs, args.runs_dir)
    if os.environ.get("RANK", "0") == "0":
        args.out.write_text(json.dumps({"us_per_step": us_per_step, "steps": steps,
                                        "threads": torch.get_num_threads()}))


# -- the launcher ----------------------------------------------------------------------


def launch(args: argparse.Namespace, variant: str, out: Path) -> dict[str, Any]:
    """One torchrun launch of ``--nproc`` workers running ``variant``; rank 0's figures.

    A failure, or a launch that outlives ``--timeout``, ends the benchmark with torchrun's
    output; the launch runs in its own session so a timeout stops its workers too.
    """
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        "--nproc-per-node", str(args.nproc), str(Path(__file__).resolve()), "--worker", variant,
        "--epochs", str(args.epochs), "--threads", str(args.threads),
        "--runs-dir", str(out.parent / "runs"), "--out", str(out),
    ]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True) as proc:
        try:
            output, _ = proc.communicate(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            sys.exit(f"{variant}: torchrun still running after {args.timeout} s, stopped:\n{output[-4000:]}")
    if proc.returncode != 0 or not out.exists():
        sys.exit(f"{variant}: torchrun exited {proc.returncode}:\n{output[-4000:]}")
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def report(args: argparse.Namespace, results: list[dict[str, Any]]) -> None:
    """The table (and ``--json``): median µs/step per variant and the kit/raw ratio."""
    times = {v: [float(r[v]["us_per_step"]) for r in results] for v in VARIANTS}
    steps, threads = results[0]["raw"]["steps"], results[0]["raw"]["threads"]
    raw = statistics.median(times["raw"])
    print(f"64-64-10 MLP, batch {BATCH} per rank x {args.nproc} processes, Adam, CPU gloo "
          f"({threads} thread(s) each), torch {torch.__version__}; "
          f"{steps} timed steps per rank x {args.repeats} repeats, median")
    figures: dict[str, dict[str, Any]] = {}
    for variant, values in times.items():
        median = statistics.median(values)
        figures[LABELS[variant]] = {"us_per_step": round(median, 2), "ratio": round(median / raw, 4),
                                    "runs": [round(v, 2) for v in values]}
        print(f"  {LABELS[variant]:<32} {median:8.2f} µs/step   {median / raw:6.3f}x raw")
    print(f"  target: kit <= 1.05x raw ({'met' if figures[LABELS['kit']]['ratio'] <= 1.05 else 'missed'})")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads per process (1 keeps tiny-op timings steady)")
    parser.add_argument("--nproc", type=int, default=2, help="processes (ranks) per repeat")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--timeout", type=float, default=300,
                        help="seconds one torchrun launch may take before it is stopped")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--runs-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.epochs < 2 or args.repeats < 1 or args.nproc < 1:
        parser.error("--epochs needs 2 or more (epoch 1 is warm-up); --repeats and --nproc 1 or more")
    if args.worker:
        worker(args)
        return
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            order = VARIANTS if repeat % 2 == 0 else VARIANTS[::-1]
            results.append({v: launch(args, v, Path(tmp) / f"{repeat}-{v}.json") for v in order})
    report(args, results)


if __name__ == "__main__":
    main()
