"""Checkpoints that a crash, a kill or a full disk cannot corrupt, and that a forged one cannot fool.

A checkpoint is a folder ``<run>/checkpoints/step-00000480/`` holding a format's
files and a ``manifest.json``. It is committed in this order: the format writes into
a staging folder next to the final one; kit fsyncs and hashes every file (both at
once: fsync waits on the disk, sha256 on the CPU), fsyncs the folder, renames it into
place, fsyncs the parent, and writes the manifest (names, sizes, sha256, progress,
monitored metric) last. A folder without a manifest was never committed. One whose
manifest is malformed or disagrees with its folder's name (:mod:`kit.manifest`), whose
files are not exactly the listed regular files with their sizes and sha256s, whose format
is not installed, or whose content is not a kit checkpoint (:func:`check_kit_checkpoint`)
is corrupt. Either is skipped with one warning line and the previous valid checkpoint is
used. Nothing is ever unpickled beyond what ``torch.load(weights_only=True)`` accepts, and
a torch zip that would expand beyond its size on disk is refused before torch reads it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kit._version import __version__
from kit.checkpoint_content import check_kit_checkpoint
from kit.errors import CheckpointError, ConfigError, PluginLoadError, PluginNotFoundError, disk_full
from kit.interfaces import CheckpointFormat
from kit.manifest import (
    MANIFEST,
    Manifest,
    checked_manifest,
    committed_checkpoints,
    read_manifest,
    reason,
    show_name,
    sound_manifests,
    step_folders,
    step_order,
)
from kit.report import warn
from kit.rundir import fsync, write_json
from kit.runlock import pid_alive
from kit.runstate import Progress
from kit.torchfile import TRUST_DOCS, TorchFormat, load_torch_file

__all__ = [
    "MANIFEST",
    "TRUST_DOCS",
    "Check",
    "CheckpointStore",
    "Retention",
    "TorchFormat",
    "check_kit_checkpoint",
    "checkpoint_folder",
    "commit",
    "committed_checkpoints",
    "load_torch_file",
    "read_manifest",
    "sound_manifests",
]

_STAGING = re.compile(r"\.staging-.*-([0-9]+)", re.DOTALL)
_CHUNK = 8 << 20

Check = Callable[[Any, Path], object]
"""What a loaded checkpoint must satisfy, e.g. :func:`check_kit_checkpoint`; raises CheckpointError."""


@dataclass(frozen=True)
class Retention:
    """Which committed checkpoints survive a new one: the newest N and the best K."""

    keep_last: int = 2
    keep_best: int = 1
    monitor: str | None = None
    mode: Literal["min", "max"] = "min"


def checkpoint_folder(path: Path) -> Path:
    """Accept a checkpoint folder or any file inside it (``…/checkpoint.pt``)."""
    return path.parent if os.path.isfile(path) else path


def _sha256(path: Path) -> str:
    """The file's sha256, read through a descriptor that is refused unless it is a regular file."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb", buffering=0) as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CheckpointError(f"{show_name(path)} is not a regular file")
        digest = hashlib.sha256()
        buffer = bytearray(_CHUNK)
        view = memoryview(buffer)
        while n := fh.readinto(buffer):
            digest.update(view[:n])  # releases the GIL: runs beside the fsyncs
    return digest.hexdigest()


def _written_files(folder: Path, name: str) -> list[Path]:
    """What format ``name`` wrote into ``folder``: regular files only, or a CheckpointError naming it."""
    files = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if not entry.is_file(follow_symlinks=False) or entry.name == MANIFEST:
                what = "the reserved name" if entry.name == MANIFEST else \
                    "a symlink" if entry.is_symlink() else "a folder" if entry.is_dir() else "a special file"
                raise CheckpointError(
                    f"checkpoint format {name!r} wrote {what} {show_name(entry.name)} into its folder; "
                    "a format may write only regular files, directly in its folder",
                    hint=f"fix the {name!r} format, or choose another with checkpoint.format")
            files.append(Path(entry.path))
    return sorted(files)


def _seal(folder: Path, name: str) -> dict[str, dict[str, Any]]:
    """fsync and hash every file of ``folder`` concurrently; returns the manifest's ``files``."""
    files = _written_files(folder, name)
    with ThreadPoolExecutor(max_workers=max(2, 2 * len(files))) as pool:
        synced = [pool.submit(fsync, p) for p in files]
        hashed = {p.name: pool.submit(_sha256, p) for p in files}
        for future in synced:
            future.result()
        return {name: {"size": (folder / name).stat().st_size, "sha256": f.result()}
                for name, f in hashed.items()}


def _unwritable(folder: Path, exc: OSError) -> CheckpointError:
    """A folder kit cannot write a checkpoint in (permissions, a read-only or odd path), named."""
    return CheckpointError(f"cannot write a checkpoint in {show_name(folder)}: {reason(exc)}",
                           hint="make it a writable folder, or choose another")


def _clear(path: Path) -> None:
    """Remove ``path`` whatever it is (a folder is removed whole; a symlink, never followed)."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def commit(final: Path, fmt: CheckpointFormat, checkpoint: dict[str, Any], meta: dict[str, Any], *,
           name: str) -> Path:
    """Write ``checkpoint`` through ``fmt`` as the folder ``final``, crash-safe, manifest last.

    ``meta`` goes into the manifest beside ``format`` (``name``: the format's name as it
    was chosen, which is how a later load finds it again), ``kit_version``, ``created``
    and ``files``. ``final`` must not exist yet. The staging folder's name is new for every
    attempt (a random token and the pid), so a crashed writer's leftover, even one of a
    process that had the same pid (PID 1 in every container), never blocks a save. A
    folder that cannot be written (permissions, a read-only file system, a name too long)
    is a CheckpointError; a full disk stays an ``OSError``.
    """
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", final.name)[:64]
    staging = final.with_name(f".staging-{stem}-{secrets.token_hex(4)}-{os.getpid()}")
    try:
        if os.path.lexists(staging):
            _clear(staging)
        staging.mkdir()
    except OSError as exc:
        if disk_full(exc) is not None:
            raise
        raise _unwritable(final.parent, exc) from None
    try:
        fmt.save(checkpoint, staging)
        files = _seal(staging, name)
        fsync(staging)
        os.rename(staging, final)
    except Exception as exc:
        full = disk_full(exc) is None and _out_of_space(staging)
        shutil.rmtree(staging, ignore_errors=True)
        if full:  # a format whose writer hides the OSError (C++, Rust) on a disk now full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(staging)) from exc
        if isinstance(exc, OSError) and exc.filename == str(staging) and disk_full(exc) is None:
            raise CheckpointError(f"cannot commit checkpoint {show_name(final)}: {reason(exc)}") from None
        raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync(final.parent)
    write_json(final / MANIFEST, {**meta, "format": name, "kit_version": __version__,
                                  "created": time.time(), "files": files})
    return final


def _out_of_space(folder: Path) -> bool:
    """Whether the file system holding ``folder`` has (almost) no room left for anyone."""
    try:
        return shutil.disk_usage(folder).free < 1 << 20
    except OSError:
        return False


def _remove(folder: Path) -> None:
    """Delete a checkpoint, manifest first: a crash midway leaves it uncommitted, never half-valid."""
    with contextlib.suppress(OSError):  # a manifest.json that is a folder goes with the rmtree
        (folder / MANIFEST).unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)


def _leftover(pid: int) -> bool:
    """Whether a staging folder of ``pid`` is a leftover: its writer is dead, or is this process,
    whose own commit is finished (only the run lock's holder writes a run's checkpoints)."""
    try:
        return pid <= 0 or pid == os.getpid() or not pid_alive(pid)
    except (OverflowError, ValueError):  # not a pid at all
        return True


def _ranked(manifests: Mapping[Path, Manifest], monitor: Mapping[str, Any] | None = None) -> list[Path]:
    """The folders whose manifest recorded the monitored value, best first (ties: older first).

    ``monitor`` is ``{"name", "mode"}``; by default each manifest's own.
    """
    scored = []
    for folder, manifest in manifests.items():
        by = monitor or manifest["monitor"] or {}
        value = manifest["metrics"].get(str(by.get("name")))
        if value is not None and value == value:  # NaN never ranks
            scored.append((-value if by.get("mode") == "max" else value, step_order(folder), folder))
    return [folder for *_, folder in sorted(scored)]


class CheckpointStore:
    """The checkpoints of one run, in ``folder``, written through ``fmt``.

    :param resolve: the format for a name found in a manifest, so a run can switch
        formats and still load its older checkpoints. It may raise
        :class:`~kit.errors.PluginNotFoundError` or :class:`~kit.errors.ConfigError` for
        an unknown name (that checkpoint is then corrupt); a
        :class:`~kit.errors.PluginLoadError` (a format that is installed but does not
        import) is passed on, since no checkpoint is at fault.
    """

    def __init__(
        self,
        folder: Path,
        fmt: CheckpointFormat,
        *,
        name: str | None = None,
        retention: Retention | None = None,
        resolve: Callable[[str], CheckpointFormat] | None = None,
    ) -> None:
        self.folder = folder
        self.format = fmt
        self.format_name = name or fmt.name
        if not self.format_name:
            raise ValueError(f"{type(fmt).__qualname__} has no name: pass the name it was chosen by")
        self.retention = retention or Retention()
        self._resolve = resolve

    def format_named(self, name: str) -> CheckpointFormat:
        if name == self.format_name:
            return self.format
        if self._resolve is None:
            raise CheckpointError(f"checkpoint format {name!r} is not available here")
        return self._resolve(name)

    def _format_of(self, folder: Path, manifest: Manifest) -> CheckpointFormat:
        name = manifest["format"]
        try:
            return self.format_named(name)
        except CheckpointError as exc:
            raise CheckpointError(f"checkpoint {show_name(folder)}: {exc.message}", hint=exc.hint) from None
        except PluginLoadError:
            raise
        except (PluginNotFoundError, ConfigError) as exc:
            raise CheckpointError(f"checkpoint {show_name(folder)} names the checkpoint format {name!r:.80}, "
                                  "which is not installed here", hint=exc.hint) from None

    # -- reading ----------------------------------------------------------------------

    def folders(self) -> list[Path]:
        """Every checkpoint folder, committed or not, oldest first by name (``step-`` and ASCII
        digits only); a store folder that cannot be listed is a CheckpointError naming it."""
        return step_folders(self.folder)

    def list(self) -> list[Path]:
        """Committed checkpoints (a manifest exists), oldest first; not yet verified. Empty
        when nothing ever committed: whether there is anything that :meth:`valid` refused."""
        return committed_checkpoints(self.folder)

    @staticmethod
    def _check_hashes(folder: Path, manifest: Manifest) -> None:
        for name, entry in sorted(manifest["files"].items()):
            try:
                matches = _sha256(folder / name) == entry["sha256"]
            except OSError as exc:
                raise CheckpointError(f"checkpoint {show_name(folder)}: cannot read {show_name(name)}: "
                                      f"{reason(exc)}") from None
            if not matches:
                raise CheckpointError(f"checkpoint {show_name(folder)}: {show_name(name)} does not match "
                                      "its sha256 (corrupted)")

    def verify(self, folder: Path) -> Manifest:
        """Check the folder against its manifest, name, file set, sizes and hashes; returns the manifest."""
        manifest = checked_manifest(folder)
        self._check_hashes(folder, manifest)
        return manifest

    @staticmethod
    def _read(fmt: CheckpointFormat, name: str, folder: Path, map_location: Any) -> dict[str, Any]:
        """``fmt.load``; whatever it raises (a format is not written for hostile files) is a
        CheckpointError, except a missing import, which no checkpoint is at fault for."""
        try:
            return fmt.load(folder, map_location=map_location)
        except (CheckpointError, PluginLoadError):
            raise
        except ImportError as exc:
            raise PluginLoadError(f"checkpoint format {name!r}", exc) from exc
        except Exception as exc:
            raise CheckpointError(f"checkpoint {show_name(folder)} cannot be loaded as {name!r}: "
                                  f"{type(exc).__name__}: {reason(exc)}") from exc

    def load(self, folder: Path, *, map_location: Any = "cpu", verify: bool = True,
             check: Check | None = None) -> dict[str, Any]:
        """Load a committed checkpoint, verified against its manifest, then ``check``-ed.

        The manifest must agree with the folder's name, and the file set and sizes are checked
        first (one ``scandir``, always); hashing then runs
        beside the format's load (neither executes code from the file; ``verify=False`` skips
        it), and the result is only returned once every sha256 matched, so corruption is
        reported as corruption.
        """
        folder = checkpoint_folder(folder)
        manifest = read_manifest(folder)
        fmt = self._format_of(folder, manifest)
        manifest = checked_manifest(folder)
        if not verify:
            data = self._read(fmt, manifest["format"], folder, map_location)
        else:
            with ThreadPoolExecutor(max_workers=1) as pool:
                hashed = pool.submit(self._check_hashes, folder, manifest)
                try:
                    data = self._read(fmt, manifest["format"], folder, map_location)
                except CheckpointError:
                    hashed.result()  # corruption, when found, explains a failed load best
                    raise
                hashed.result()
        if check is not None:
            check(data, folder)
        return data

    def valid(self, *, map_location: Any = "cpu",
              check: Check | None = check_kit_checkpoint) -> Iterator[tuple[Path, dict[str, Any]]]:
        """Every checkpoint that verifies, loads and passes ``check`` (by default: it is a kit
        checkpoint to resume from), newest first, loaded one at a time as it is asked for.

        Each one skipped is reported in one warning line. A caller that finds a checkpoint
        unusable after all (it verifies, but does not fit the model) simply asks for the next.
        A folder that cannot be listed is a CheckpointError (see :meth:`list`).
        """
        for folder in reversed(self.folders()):
            try:
                data = self.load(folder, map_location=map_location, check=check)
            except CheckpointError as exc:
                warn(f"skipping {show_name(str(exc))}")  # a format's own message may hold anything
                continue
            yield folder, data

    def latest(self, *, map_location: Any = "cpu",
               check: Check | None = check_kit_checkpoint) -> tuple[Path, dict[str, Any]] | None:
        """The newest of :meth:`valid`, or ``None`` when no checkpoint is usable."""
        return next(iter(self.valid(map_location=map_location, check=check)), None)

    def best(self) -> Path | None:
        """The committed checkpoint with the best monitored value its manifest recorded; a malformed
        manifest, or a folder that visibly does not match its manifest, never counts."""
        ranked = _ranked(self._manifests())
        return ranked[0] if ranked else None

    def _manifests(self) -> dict[Path, Manifest]:
        """The sound manifests by folder, oldest first (names, file sets and sizes checked, not sha256s)."""
        return sound_manifests(self.folder)

    # -- writing ----------------------------------------------------------------------

    def _free_name(self, step: int) -> str:
        taken = set(os.listdir(self.folder))
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
        progress: Progress | None = None,
        metrics: Mapping[str, float] | None = None,
    ) -> Path:
        """Commit ``checkpoint`` as the newest one, then apply retention.

        A folder that cannot hold it (permissions, a read-only file system) is a
        CheckpointError naming the folder; a full disk stays an ``OSError``.
        """
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            name = self._free_name(step)
        except OSError as exc:
            if disk_full(exc) is not None:
                raise
            raise _unwritable(self.folder, exc) from None
        monitor = self.retention.monitor
        final = commit(self.folder / name, self.format, checkpoint, name=self.format_name, meta={
            "step": step,
            "progress": dict(progress or {}),
            "metrics": dict(metrics or {}),
            "monitor": {"name": monitor, "mode": self.retention.mode} if monitor else None,
        })
        self._prune(final)
        return final

    def _prune(self, newest: Path) -> None:
        """Keep the newest ``keep_last`` and best ``keep_best`` sound checkpoints (see ``_manifests``);
        clear older uncommitted, misnamed or visibly corrupt ones, and staging leftovers.

        Older means by name or, for a misnamed one, by the step its manifest claims.
        """
        manifests = self._manifests()
        valid = list(manifests)
        keep = set(valid[-self.retention.keep_last:] if self.retention.keep_last > 0 else ())
        keep.add(newest)
        if self.retention.monitor and self.retention.keep_best:
            monitor = {"name": self.retention.monitor, "mode": self.retention.mode}
            keep |= set(_ranked(manifests, monitor)[: self.retention.keep_best])
        for folder in self.folders():
            if folder not in keep and (folder in manifests or min(step_order(folder), _claimed(folder))
                                       < step_order(newest)):
                _remove(folder)
        for name in os.listdir(self.folder):
            match = _STAGING.fullmatch(name)
            if match and _leftover(int(match.group(1))):
                _clear(self.folder / name)


def _claimed(folder: Path) -> tuple[int, int]:
    """The order a folder's manifest claims for it (its name's, when it has no readable manifest)."""
    try:
        return read_manifest(folder)["step"], step_order(folder)[1]
    except CheckpointError:
        return step_order(folder)
