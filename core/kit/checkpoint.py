"""Checkpoints that a crash, a kill or a full disk cannot corrupt, and that a forged one cannot fool.

A checkpoint is a folder ``<run>/checkpoints/step-00000480/`` holding a format's
files and a ``manifest.json``. It is committed in this order: the format writes into
a staging folder next to the final one; kit fsyncs and hashes every file (both at
once: fsync waits on the disk, sha256 on the CPU), fsyncs the folder, renames it into
place, fsyncs the parent, and writes the manifest (names, sizes, sha256, progress,
monitored metric) last. A folder without a manifest was never committed. One whose
manifest is malformed (:mod:`kit.manifest`), whose files are not exactly the listed
regular files with their sizes and sha256s, whose format is not installed, or whose
content is not a kit checkpoint is corrupt. Either is skipped with one warning line and
the previous valid checkpoint is used. Nothing is ever unpickled beyond what
``torch.load(weights_only=True)`` accepts.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import stat
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from kit._version import __version__
from kit.errors import CheckpointError, ConfigError, PluginLoadError, PluginNotFoundError, disk_full
from kit.interfaces import CheckpointFormat
from kit.manifest import MANIFEST, Manifest, check_files, is_committed, read_manifest, show_name
from kit.report import warn
from kit.rundir import fsync_dir, write_json
from kit.runlock import pid_alive

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
]

TRUST_DOCS = "docs/concepts.md#trusting-a-checkpoint"
_NAME = re.compile(r"^step-(\d+)(?:-(\d+))?$")
_STAGING = re.compile(r"^\.staging-.*-(\d+)$")
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_CHUNK = 8 << 20

Check = Callable[[Any, Path], object]
"""What a loaded checkpoint must satisfy, e.g. :func:`check_kit_checkpoint`; raises CheckpointError."""


def _printable(text: str) -> str:
    """``text`` safe to put in a one-line message, whatever a file made it contain."""
    return "".join(c if c.isprintable() else "?" for c in text.strip())


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return _printable(lines[0]) if lines else type(exc).__name__


def _refusal(path: Path, exc: BaseException) -> CheckpointError:
    """torch's weights-only refusal, without its advice to load with ``weights_only=False``."""
    found = _GLOBAL.search(str(exc))
    lines = [line for line in str(exc).splitlines()[1:] if line.strip()]
    detail = next((line for line in lines if "weights_only" not in line and "torch.load" not in line), "")
    hint = f"if you TRUST its source, convert it to plain data as {TRUST_DOCS} shows"
    if found:
        return CheckpointError(f"cannot load checkpoint {path}: it holds pickled objects that are not plain "
                               f"data ({found.group(1)}), which may be unsafe: loading them could run code",
                               hint=hint)
    return CheckpointError(f"cannot load checkpoint {path}: it is corrupt, or holds pickled data that is not "
                           f"plain ({_printable(detail) or 'refused by weights-only loading'})", hint=hint)


def load_torch_file(path: Path, *, map_location: Any = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True``; any refusal or corruption is a CheckpointError."""
    import torch  # here: reading manifests (``kit runs list``) must not import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # unpickling refusals and corrupt files alike
        if str(exc).startswith("Weights only load failed"):
            raise _refusal(path, exc) from exc
        raise CheckpointError(f"cannot load checkpoint {path}: {_first_line(exc)}",
                              hint="it is corrupt or not a torch file") from exc


class TorchFormat(CheckpointFormat):
    """One ``checkpoint.pt`` of tensors and plain data; loaded with ``weights_only=True``."""

    name: ClassVar[str] = "torch"
    filename: ClassVar[str] = "checkpoint.pt"

    def save(self, checkpoint: dict[str, Any], folder: Path) -> None:
        import torch

        with (folder / self.filename).open("wb") as fh:  # a Python file: a full disk raises ENOSPC
            torch.save(checkpoint, fh)

    def load(self, folder: Path, *, map_location: Any = "cpu") -> dict[str, Any]:
        data = load_torch_file(folder / self.filename, map_location=map_location)
        if not isinstance(data, dict):
            raise CheckpointError(f"checkpoint {folder} holds a {type(data).__name__}, not a kit checkpoint")
        return data


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_kit_checkpoint(data: Any, folder: Path) -> dict[str, Any]:
    """``data`` if it has the shape of :meth:`kit.Trainer.state_dict`, else CheckpointError.

    A checkpoint can verify against its manifest and still not be kit's (a forged one,
    another program's): resuming from it must fall back like from a corrupt one, not fail
    halfway through restoring. Whether it fits *this* model is the trainer's check.
    """
    import torch

    def refuse(what: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {folder} is not a kit checkpoint: {what}")

    if not isinstance(data, dict):
        raise refuse(f"it holds a {type(data).__name__}, not a dict")
    model, progress = data.get("model"), data.get("progress")
    if not isinstance(model, dict) or not all(
        isinstance(k, str) and (isinstance(v, torch.Tensor) or k.endswith("_extra_state"))
        for k, v in model.items()
    ):
        raise refuse("'model' is not a dict of tensors")
    if not isinstance(progress, dict):
        raise refuse("it has no 'progress'")
    bad = [k for k in ("iteration", "global_step", "epoch") if not _whole(progress.get(k))]
    bad += [k for k in ("epoch_batches",) if k in progress and not _whole(progress[k])]
    if bad:
        raise refuse(f"progress[{bad[0]!r}] is not a whole number")
    for key in ("optimizer", "rng"):
        if not isinstance(data.get(key), dict):
            raise refuse(f"{key!r} is not a dict")
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


def _sha256(path: Path) -> str:
    """The file's sha256, read through a descriptor that is refused unless it is a regular file."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb", buffering=0) as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CheckpointError(f"{path} is not a regular file")
        digest = hashlib.sha256()
        buffer = bytearray(_CHUNK)
        view = memoryview(buffer)
        while n := fh.readinto(buffer):
            digest.update(view[:n])  # releases the GIL: runs beside the fsyncs
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _written_files(folder: Path, fmt: CheckpointFormat) -> list[Path]:
    """What ``fmt`` wrote into ``folder``: regular files only, or a CheckpointError naming the format."""
    files = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if not entry.is_file(follow_symlinks=False) or entry.name == MANIFEST:
                what = "the reserved name" if entry.name == MANIFEST else \
                    "a symlink" if entry.is_symlink() else "a folder" if entry.is_dir() else "a special file"
                raise CheckpointError(
                    f"checkpoint format {fmt.name!r} wrote {what} {show_name(entry.name)} into its folder; "
                    "a format may write only regular files, directly in its folder",
                    hint=f"fix the {fmt.name!r} format, or choose another with checkpoint.format")
            files.append(Path(entry.path))
    return sorted(files)


def _seal(folder: Path, fmt: CheckpointFormat) -> dict[str, dict[str, Any]]:
    """fsync and hash every file of ``folder`` concurrently; returns the manifest's ``files``."""
    files = _written_files(folder, fmt)
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
        files = _seal(staging, fmt)
        fsync_dir(staging)
        os.rename(staging, final)
    except Exception as exc:
        full = disk_full(exc) is None and _out_of_space(staging)
        shutil.rmtree(staging, ignore_errors=True)
        if full:  # a format whose writer hides the OSError (C++, Rust) on a disk now full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(staging)) from exc
        raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_dir(final.parent)
    write_json(final / MANIFEST, {**meta, "format": fmt.name, "kit_version": __version__,
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


def _dead_writer(pid: int) -> bool:
    """Whether the staging folder of ``pid`` is a dead writer's leftover (not ours, not alive)."""
    try:
        return pid != os.getpid() and not pid_alive(pid)
    except (OverflowError, ValueError):  # not a pid at all
        return True


def _order(path: Path) -> tuple[int, int]:
    match = _NAME.match(path.name)
    assert match is not None
    return int(match.group(1)), int(match.group(2) or 0)


def _step_folders(folder: Path) -> list[Path]:
    """Real folders named ``step-…`` (never a symlink to one), oldest first."""
    try:
        with os.scandir(folder) as entries:
            found = [Path(e.path) for e in entries if _NAME.match(e.name) and e.is_dir(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(found, key=_order)


def committed_checkpoints(folder: Path) -> list[Path]:
    """The committed checkpoint folders (a manifest exists) under ``folder``, oldest first."""
    return [p for p in _step_folders(folder) if is_committed(p)]


def _sound_manifest(folder: Path) -> Manifest | None:
    """The folder's manifest if it is well-formed and the folder holds exactly its files at their
    sizes (one ``scandir``, no hashing); ``None`` for an uncommitted or visibly corrupt one."""
    try:
        manifest = read_manifest(folder)
        check_files(folder, manifest)
    except CheckpointError:
        return None
    return manifest


def _ranked(manifests: Mapping[Path, Manifest], monitor: Mapping[str, Any] | None = None) -> list[Path]:
    """The folders whose manifest recorded the monitored value, best first (ties: older first).

    ``monitor`` is ``{"name", "mode"}``; by default each manifest's own.
    """
    scored = []
    for folder, manifest in manifests.items():
        by = monitor or manifest["monitor"] or {}
        value = manifest["metrics"].get(str(by.get("name")))
        if value is not None and value == value:  # NaN never ranks
            scored.append((-value if by.get("mode") == "max" else value, _order(folder), folder))
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

    def _format_of(self, folder: Path, manifest: Manifest) -> CheckpointFormat:
        name = manifest["format"]
        try:
            return self.format_named(name)
        except CheckpointError as exc:
            raise CheckpointError(f"checkpoint {folder}: {exc.message}", hint=exc.hint) from None
        except PluginLoadError:
            raise
        except (PluginNotFoundError, ConfigError) as exc:
            raise CheckpointError(f"checkpoint {folder} names the checkpoint format {name!r}, "
                                  "which is not installed here", hint=exc.hint) from None

    # -- reading ----------------------------------------------------------------------

    def folders(self) -> list[Path]:
        """Every checkpoint folder, committed or not, oldest first."""
        return _step_folders(self.folder)

    def list(self) -> list[Path]:
        """Committed checkpoints (a manifest exists), oldest first; not yet verified."""
        return committed_checkpoints(self.folder)

    @staticmethod
    def _check_hashes(folder: Path, manifest: Manifest) -> None:
        for name, entry in sorted(manifest["files"].items()):
            try:
                matches = _sha256(folder / name) == entry["sha256"]
            except OSError as exc:
                raise CheckpointError(f"checkpoint {folder}: cannot read {show_name(name)}: "
                                      f"{exc.strerror or exc}") from None
            if not matches:
                raise CheckpointError(f"checkpoint {folder}: {show_name(name)} does not match its sha256 "
                                      "(corrupted)")

    def verify(self, folder: Path) -> Manifest:
        """Check the folder against its manifest, file set, sizes and hashes; returns the manifest."""
        manifest = read_manifest(folder)
        check_files(folder, manifest)
        self._check_hashes(folder, manifest)
        return manifest

    @staticmethod
    def _read(fmt: CheckpointFormat, folder: Path, map_location: Any) -> dict[str, Any]:
        """``fmt.load``; whatever it raises (a format is not written for hostile files) is a
        CheckpointError, except a missing import, which no checkpoint is at fault for."""
        try:
            return fmt.load(folder, map_location=map_location)
        except (CheckpointError, PluginLoadError):
            raise
        except ImportError as exc:
            raise PluginLoadError(f"checkpoint format {fmt.name!r}", exc) from exc
        except Exception as exc:
            raise CheckpointError(f"checkpoint {folder} cannot be loaded as {fmt.name!r}: "
                                  f"{type(exc).__name__}: {_first_line(exc)}") from exc

    def load(self, folder: Path, *, map_location: Any = "cpu", verify: bool = True,
             check: Check | None = None) -> dict[str, Any]:
        """Load a committed checkpoint, verified against its manifest, then ``check``-ed.

        The file set and sizes are checked first (one ``scandir``, always); hashing then runs
        beside the format's load (neither executes code from the file; ``verify=False`` skips
        it), and the result is only returned once every sha256 matched, so corruption is
        reported as corruption.
        """
        folder = checkpoint_folder(folder)
        manifest = read_manifest(folder)
        fmt = self._format_of(folder, manifest)
        check_files(folder, manifest)
        if not verify:
            data = self._read(fmt, folder, map_location)
        else:
            with ThreadPoolExecutor(max_workers=1) as pool:
                hashed = pool.submit(self._check_hashes, folder, manifest)
                try:
                    data = self._read(fmt, folder, map_location)
                except CheckpointError:
                    hashed.result()  # corruption, when found, explains a failed load best
                    raise
                hashed.result()
        if check is not None:
            check(data, folder)
        return data

    def latest(self, *, map_location: Any = "cpu",
               check: Check | None = check_kit_checkpoint) -> tuple[Path, dict[str, Any]] | None:
        """The newest checkpoint that verifies, loads and passes ``check`` (by default: it is a
        kit checkpoint to resume from); broken newer ones are reported, one line each, and skipped."""
        for folder in reversed(self.folders()):
            try:
                return folder, self.load(folder, map_location=map_location, check=check)
            except CheckpointError as exc:
                warn(f"skipping {exc}")
        return None

    def best(self) -> Path | None:
        """The committed checkpoint with the best monitored value its manifest recorded; a malformed
        manifest, or a folder that visibly does not match its manifest, never counts."""
        ranked = _ranked(self._manifests())
        return ranked[0] if ranked else None

    def _manifests(self) -> dict[Path, Manifest]:
        """The sound manifests by folder, oldest first (file sets and sizes checked, not sha256s)."""
        found = {folder: _sound_manifest(folder) for folder in self.list()}
        return {folder: manifest for folder, manifest in found.items() if manifest is not None}

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
        """Keep the newest ``keep_last`` and best ``keep_best`` sound checkpoints (see ``_manifests``);
        clear older uncommitted or visibly corrupt ones and the leftovers of dead writers."""
        manifests = self._manifests()
        valid = list(manifests)
        keep = set(valid[-self.retention.keep_last:] if self.retention.keep_last > 0 else ())
        keep.add(newest)
        if self.retention.monitor and self.retention.keep_best:
            monitor = {"name": self.retention.monitor, "mode": self.retention.mode}
            keep |= set(_ranked(manifests, monitor)[: self.retention.keep_best])
        for folder in self.folders():
            if folder not in keep and (folder in manifests or _order(folder) < _order(newest)):
                _remove(folder)
        for path in self.folder.iterdir():
            match = _STAGING.match(path.name)
            if match and _dead_writer(int(match.group(1))):
                shutil.rmtree(path, ignore_errors=True)
