"""Checkpoints that a crash, a kill or a full disk cannot corrupt.

A checkpoint is a folder ``<run>/checkpoints/step-00000480/`` holding a format's
files and a ``manifest.json``. It is committed in this order: the format writes into
a staging folder next to the final one; kit fsyncs and hashes every file (both at
once: fsync waits on the disk, sha256 on the CPU), fsyncs the folder, renames it into
place, fsyncs the parent, and writes the manifest (names, sizes, sha256, progress,
monitored metric) last. A folder without a manifest was never committed; one whose
files do not match their manifest is corrupt. Either is skipped with a warning and
the previous valid checkpoint is used. Nothing is ever unpickled beyond what
``torch.load(weights_only=True)`` accepts.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from kit._version import __version__
from kit.errors import CheckpointError
from kit.interfaces import CheckpointFormat
from kit.rundir import fsync_dir, read_json, write_json
from kit.runlock import pid_alive

__all__ = [
    "MANIFEST",
    "CheckpointStore",
    "Retention",
    "TorchFormat",
    "checkpoint_folder",
    "commit",
    "committed_checkpoints",
    "load_torch_file",
    "read_manifest",
]

MANIFEST = "manifest.json"
_NAME = re.compile(r"^step-(\d+)(?:-(\d+))?$")
_STAGING = re.compile(r"^\.staging-.*-(\d+)$")
_CHUNK = 8 << 20


def load_torch_file(path: Path, *, map_location: Any = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True``; any refusal or corruption is a CheckpointError."""
    import torch  # here: reading manifests (``kit runs list``) must not import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # unpickling refusals and corrupt files alike
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot load checkpoint {path}: {first}",
                              hint="it holds objects that are not plain data, or it is corrupt") from exc


class TorchFormat(CheckpointFormat):
    """One ``checkpoint.pt`` of tensors and plain data; loaded with ``weights_only=True``."""

    name: ClassVar[str] = "torch"
    filename: ClassVar[str] = "checkpoint.pt"

    def save(self, checkpoint: dict[str, Any], folder: Path) -> None:
        import torch

        torch.save(checkpoint, folder / self.filename)

    def load(self, folder: Path, *, map_location: Any = "cpu") -> dict[str, Any]:
        data = load_torch_file(folder / self.filename, map_location=map_location)
        if not isinstance(data, dict):
            raise CheckpointError(f"{folder} holds a {type(data).__name__}, not a kit checkpoint")
        return data


@dataclass(frozen=True)
class Retention:
    """Which committed checkpoints survive a new one: the newest N and the best K."""

    keep_last: int = 2
    keep_best: int = 1
    monitor: str | None = None
    mode: Literal["min", "max"] = "min"


def checkpoint_folder(path: Path) -> Path:
    """Accept a checkpoint folder or any file inside it (``…/checkpoint.pt``)."""
    return path.parent if path.is_file() else path


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of a committed checkpoint; CheckpointError if it never committed."""
    manifest = folder / MANIFEST
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint {folder} not found", hint="check the path")
    if not manifest.is_file():
        raise CheckpointError(f"checkpoint {folder} has no manifest: its write never finished")
    try:
        data = read_json(manifest)
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {folder} has an unreadable manifest: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        raise CheckpointError(f"checkpoint {folder} has a malformed manifest")
    return data


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as fh:
        while n := fh.readinto(buffer):
            digest.update(view[:n])  # releases the GIL: runs beside the fsyncs
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _seal(folder: Path) -> dict[str, dict[str, Any]]:
    """fsync and hash every file of ``folder`` concurrently; returns the manifest's ``files``."""
    files = sorted(p for p in folder.iterdir() if p.is_file())
    with ThreadPoolExecutor(max_workers=max(2, 2 * len(files))) as pool:
        synced = [pool.submit(_fsync, p) for p in files]
        hashed = {p.name: pool.submit(_sha256, p) for p in files}
        for future in synced:
            future.result()
        return {name: {"size": (folder / name).stat().st_size, "sha256": f.result()}
                for name, f in hashed.items()}


def commit(final: Path, fmt: CheckpointFormat, checkpoint: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Write ``checkpoint`` through ``fmt`` as the folder ``final``, crash-safe, manifest last.

    ``meta`` goes into the manifest beside ``format``, ``kit_version``, ``created`` and
    ``files``. ``final`` must not exist yet.
    """
    staging = final.with_name(f".staging-{final.name}-{os.getpid()}")
    staging.mkdir()
    try:
        fmt.save(checkpoint, staging)
        files = _seal(staging)
        fsync_dir(staging)
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_dir(final.parent)
    write_json(final / MANIFEST, {**meta, "format": fmt.name, "kit_version": __version__,
                                  "created": time.time(), "files": files})
    return final


def _remove(folder: Path) -> None:
    """Delete a checkpoint, manifest first: a crash midway leaves it uncommitted, never half-valid."""
    (folder / MANIFEST).unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)


def _warn(message: str) -> None:
    print(f"kit: warning: {message}", file=sys.stderr)


def _order(path: Path) -> tuple[int, int]:
    match = _NAME.match(path.name)
    assert match is not None
    return int(match.group(1)), int(match.group(2) or 0)


def committed_checkpoints(folder: Path) -> list[Path]:
    """The committed checkpoint folders (a manifest exists) under ``folder``, oldest first."""
    if not folder.is_dir():
        return []
    found = (p for p in folder.iterdir() if _NAME.match(p.name) and (p / MANIFEST).is_file())
    return sorted(found, key=_order)


def _ranked(folders: list[Path], monitor: dict[str, Any] | None = None) -> list[Path]:
    """``folders`` whose manifest recorded the monitored value, best first (ties: older first).

    ``monitor`` is ``{"name", "mode"}``; by default each manifest's own.
    """
    scored = []
    for folder in folders:
        manifest = read_manifest(folder)
        by = monitor or manifest.get("monitor") or {}
        value = (manifest.get("metrics") or {}).get(by.get("name"))
        if isinstance(value, int | float):
            scored.append((-value if by.get("mode") == "max" else value, _order(folder), folder))
    return [folder for *_, folder in sorted(scored)]


class CheckpointStore:
    """The checkpoints of one run, in ``folder``, written through ``fmt``.

    :param resolve: the format for a name found in a manifest, so a run can switch
        formats and still load its older checkpoints.
    """

    def __init__(
        self,
        folder: Path,
        fmt: CheckpointFormat,
        *,
        retention: Retention | None = None,
        resolve: Callable[[str], CheckpointFormat] | None = None,
    ) -> None:
        self.folder = folder
        self.format = fmt
        self.retention = retention or Retention()
        self._resolve = resolve

    def format_named(self, name: str) -> CheckpointFormat:
        if name == self.format.name:
            return self.format
        if self._resolve is None:
            raise CheckpointError(f"checkpoint format {name!r} is not available here")
        return self._resolve(name)

    # -- reading ----------------------------------------------------------------------

    def folders(self) -> list[Path]:
        """Every checkpoint folder, committed or not, oldest first."""
        if not self.folder.is_dir():
            return []
        return sorted((p for p in self.folder.iterdir() if _NAME.match(p.name) and p.is_dir()), key=_order)

    def list(self) -> list[Path]:
        """Committed checkpoints (a manifest exists), oldest first; not yet verified."""
        return committed_checkpoints(self.folder)

    @staticmethod
    def _check_sizes(folder: Path, manifest: dict[str, Any]) -> None:
        for name, entry in sorted(manifest["files"].items()):
            path = folder / name
            if not path.is_file():
                raise CheckpointError(f"checkpoint {folder} is missing {name}")
            size = path.stat().st_size
            if size != entry.get("size"):
                raise CheckpointError(
                    f"checkpoint {folder}: {name} is {size} bytes, the manifest says {entry.get('size')} "
                    "(truncated)")

    @staticmethod
    def _check_hashes(folder: Path, manifest: dict[str, Any]) -> None:
        for name, entry in sorted(manifest["files"].items()):
            if _sha256(folder / name) != entry.get("sha256"):
                raise CheckpointError(f"checkpoint {folder}: {name} does not match its sha256 (corrupted)")

    def verify(self, folder: Path) -> dict[str, Any]:
        """Check every file against the manifest; returns the manifest."""
        manifest = read_manifest(folder)
        self._check_sizes(folder, manifest)
        self._check_hashes(folder, manifest)
        return manifest

    def load(self, folder: Path, *, map_location: Any = "cpu", verify: bool = True) -> dict[str, Any]:
        """Load a committed checkpoint, verified against its manifest.

        Hashing runs beside the format's load (neither executes code from the file), and
        the result is only returned once every sha256 matched.
        """
        folder = checkpoint_folder(folder)
        manifest = read_manifest(folder)
        fmt = self.format_named(str(manifest.get("format", self.format.name)))
        if not verify:
            return fmt.load(folder, map_location=map_location)
        self._check_sizes(folder, manifest)
        with ThreadPoolExecutor(max_workers=1) as pool:
            hashed = pool.submit(self._check_hashes, folder, manifest)
            try:
                data = fmt.load(folder, map_location=map_location)
            except CheckpointError:
                hashed.result()  # corruption, when found, explains a failed load best
                raise
            hashed.result()
        return data

    def latest(self, *, map_location: Any = "cpu") -> tuple[Path, dict[str, Any]] | None:
        """The newest checkpoint that verifies and loads; broken newer ones are reported and skipped."""
        for folder in reversed(self.folders()):
            try:
                return folder, self.load(folder, map_location=map_location)
            except CheckpointError as exc:
                _warn(f"skipping {exc.message}")
        return None

    def best(self) -> Path | None:
        """The committed checkpoint with the best monitored value its manifest recorded."""
        ranked = _ranked(self.list())
        return ranked[0] if ranked else None

    # -- writing ----------------------------------------------------------------------

    def _free_name(self, step: int) -> str:
        taken = {p.name for p in self.folder.iterdir()}
        name, n = f"step-{step:08d}", 0
        while name in taken:
            n += 1
            name = f"step-{step:08d}-{n}"
        return name

    def save(
        self,
        checkpoint: dict[str, Any],
        *,
        step: int,
        progress: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
    ) -> Path:
        """Commit ``checkpoint`` as the newest one, then apply retention."""
        self.folder.mkdir(parents=True, exist_ok=True)
        monitor = self.retention.monitor
        final = commit(self.folder / self._free_name(step), self.format, checkpoint, {
            "step": step,
            "progress": dict(progress or {}),
            "metrics": dict(metrics or {}),
            "monitor": {"name": monitor, "mode": self.retention.mode} if monitor else None,
        })
        self._prune(final)
        return final

    def _prune(self, newest: Path) -> None:
        """Keep the newest ``keep_last`` and best ``keep_best``; clear leftovers of dead writers."""
        committed = self.list()
        keep = set(committed[-self.retention.keep_last:]) | {newest}
        if self.retention.monitor and self.retention.keep_best:
            monitor = {"name": self.retention.monitor, "mode": self.retention.mode}
            keep |= set(_ranked(committed, monitor)[: self.retention.keep_best])
        for folder in self.folders():
            uncommitted = not (folder / MANIFEST).is_file()
            if folder not in keep and (not uncommitted or _order(folder) < _order(newest)):
                _remove(folder)
        for path in self.folder.iterdir():
            match = _STAGING.match(path.name)
            if match and int(match.group(1)) != os.getpid() and not pid_alive(int(match.group(1))):
                shutil.rmtree(path, ignore_errors=True)
