"""Checkpoint save and load throughput per format, next to raw writes of the same bytes.

    python benchmarks/checkpoint_io.py [--size-mb 1024] [--repeats 3] [--dir PATH]

The state is ``--size-mb`` of float32 tensors (64 of them, like a model's weights).
"raw" writes the same bytes to one file and fsyncs it: the disk's ceiling. Each
format's save is the full commit kit does (format write, fsync and sha256 of every
file, rename, manifest); its load verifies the sha256s and loads. Loads read files
the save just wrote, so they come from the page cache for every format alike.
Target: torch and safetensors save at >= 80% of raw write throughput.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

import kit
from kit.checkpoint import CheckpointStore


def raw_write(tensors: dict[str, torch.Tensor], path: Path) -> None:
    with path.open("wb") as fh:
        for tensor in tensors.values():
            fh.write(memoryview(tensor.numpy()).cast("B"))
        fh.flush()
        os.fsync(fh.fileno())


def raw_read(path: Path) -> None:
    buffer = bytearray(8 << 20)
    with path.open("rb", buffering=0) as fh:
        while fh.readinto(buffer):
            pass


def timed(fn: Callable[[], object], repeats: int, before: Callable[[], object] = lambda: None) -> float:
    times = []
    for _ in range(repeats):
        before()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir)")
    args = parser.parse_args()
    n = 64
    per = args.size_mb * (1 << 20) // 4 // n
    tensors = {f"layer{i}.weight": torch.randn(per) for i in range(n)}
    size_mb = sum(t.numel() * 4 for t in tensors.values()) / (1 << 20)
    registry = kit.Registry.from_environment()
    formats = [s for s in registry.group("kit.checkpoint_formats") if not s.problems()]
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        raw = root / "raw.bin"
        t_write = timed(lambda: raw_write(tensors, raw), args.repeats, lambda: raw.unlink(missing_ok=True))
        t_read = timed(lambda: raw_read(raw), args.repeats)
        raw.unlink()
        print(f"state: {size_mb:.0f} MiB in {n} float32 tensors; median of {args.repeats}")
        print(f"{'':12}{'save MiB/s':>12}{'vs raw':>8}{'load MiB/s':>12}{'vs raw':>8}")
        print(f"{'raw':12}{size_mb / t_write:12.0f}{'1.00':>8}{size_mb / t_read:12.0f}{'1.00':>8}")
        for spec in formats:
            store = CheckpointStore(root / spec.name, spec.load()())
            state = {"model": tensors}

            def clear(folder: Path = root / spec.name) -> None:
                shutil.rmtree(folder, ignore_errors=True)

            t_save = timed(lambda: store.save(state, step=1), args.repeats, clear)  # noqa: B023
            saved = store.list()[-1]
            t_load = timed(lambda: store.load(saved), args.repeats)  # noqa: B023
            clear()
            print(f"{spec.name:12}{size_mb / t_save:12.0f}{t_write / t_save:8.2f}"
                  f"{size_mb / t_load:12.0f}{t_read / t_load:8.2f}")


if __name__ == "__main__":
    main()
