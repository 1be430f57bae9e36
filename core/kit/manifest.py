"""The ``manifest.json`` of a checkpoint: its one schema, and the check of its folder against it.

A manifest is trusted for nothing it does not prove. It is valid only when it has
exactly the shape of :class:`Manifest` (checked field by field, types included), and
its folder holds exactly the files it lists: every one a regular file under a plain
name, no symlink, no subfolder, nothing unlisted, each of the listed size (the sha256s
are checked while the format loads, see :mod:`kit.checkpoint`). In a store, the folder's
name (``step-`` and ASCII digits) must also be the manifest's step: a renamed copy would
otherwise be taken for the newest checkpoint. Anything else is a corrupt checkpoint,
reported as a :class:`~kit.errors.CheckpointError` naming its folder. The manifest itself is
read as a regular file of at most a few MiB, never through a link, never blocking.

Reading a manifest needs neither torch nor pydantic, so ``kit runs list`` stays fast.
Every name from disk in a message goes through :func:`show_name`, so none splits a line.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypedDict, cast

from kit.errors import CheckpointError
from kit.rundir import read_regular

__all__ = [
    "MANIFEST",
    "MAX_DEPTH",
    "FileEntry",
    "Manifest",
    "Monitor",
    "check_files",
    "checked_manifest",
    "committed_checkpoints",
    "is_committed",
    "nesting_problem",
    "parse_manifest",
    "read_manifest",
    "reason",
    "show_name",
    "sound_manifests",
    "step_folders",
    "step_order",
]

MANIFEST = "manifest.json"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_STEP = re.compile(r"step-([0-9]{1,20})(?:-([0-9]{1,9}))?")  # fullmatch only: ASCII digits, no "\n"
_INT64 = 2**63 - 1
_PROGRESS_DEPTH = 16
MAX_DEPTH = 64
"""How deep plain data from a file may nest: far beyond kit's own, far below a RecursionError."""
_MAX_VALUES = 50_000_000
_CONTAINERS = (dict, list, tuple, set, frozenset)


class FileEntry(TypedDict):
    size: int
    sha256: str


class Monitor(TypedDict):
    name: str
    mode: Literal["min", "max"]


class _Required(TypedDict):
    format: str
    kit_version: str
    created: float
    step: int
    progress: dict[str, Any]
    """The checkpoint's :class:`~kit.runstate.Progress` as written; read back, it is only
    checked to be an object of limited nesting, so its values are untrusted."""
    metrics: dict[str, float]
    monitor: Monitor | None
    files: dict[str, FileEntry]


class Manifest(_Required, total=False):
    """What kit writes as ``manifest.json``, last, when a checkpoint commits."""

    converted_from: str
    """The checkpoint ``kit ckpt convert`` made this one from."""


def show_name(name: str | os.PathLike[str]) -> str:
    """A file name or path as it can appear in a one-line message: quoted, with escapes, when a
    file made it hold a newline, a terminal escape or anything else unprintable."""
    text = os.fspath(name)
    return text if text.isprintable() else repr(text)


def reason(exc: BaseException) -> str:
    """Why ``exc`` happened, in one printable line: an OS error's reason, else its first line."""
    if isinstance(exc, OSError) and exc.strerror:
        return show_name(exc.strerror)
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return show_name(lines[0]) if lines else type(exc).__name__


def _number(value: Any) -> bool:
    """A float, or an int that converts to one (a 401-digit integer cannot be formatted)."""
    return isinstance(value, float) or (isinstance(value, int) and not isinstance(value, bool)
                                        and -_INT64 - 1 <= value <= _INT64)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _INT64


def nesting_problem(root: Any, max_depth: int = MAX_DEPTH) -> str | None:
    """Why ``root`` is not safe to walk recursively (``None`` if it is).

    Plain data from a pickle can nest 100000 deep (the next save dies with RecursionError),
    hold itself, or share one list from two places at each of 60 levels (2**60 values to a
    walker that follows every reference). One iterative pass finds each container's height
    and its size as a tree, visiting every container once; tensors are leaves.
    """
    done: dict[int, tuple[int, int]] = {}  # id -> (height, values when walked as a tree)
    opened: set[int] = set()
    stack = [root]
    while stack:
        node = stack[-1]
        if id(node) in done or not isinstance(node, _CONTAINERS):
            stack.pop()
            continue
        items = [*node.keys(), *node.values()] if isinstance(node, dict) else list(node)
        inner = [item for item in items if isinstance(item, _CONTAINERS)]
        if id(node) not in opened:  # first visit: its children first
            opened.add(id(node))
            if any(id(item) in opened and id(item) not in done for item in inner):
                return "its data holds a container that contains itself"
            stack.extend(inner)
            continue
        stack.pop()
        height = 1 + max((done[id(item)][0] for item in inner), default=0)
        values = 1 + len(items) - len(inner) + sum(done[id(item)][1] for item in inner)
        if height > max_depth:
            return f"its data is nested more than {max_depth} levels deep"
        if values > _MAX_VALUES:
            return f"its data expands to more than {_MAX_VALUES:,} values through shared references"
        done[id(node)] = (height, values)
    return None


def _monitor(value: Any) -> bool:
    return value is None or (isinstance(value, dict) and isinstance(value.get("name"), str)
                             and value.get("mode") in ("min", "max"))


def _metrics(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and _number(v) for k, v in value.items())


_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "format": (lambda v: isinstance(v, str) and v != "", "a format name"),
    "kit_version": (lambda v: isinstance(v, str), "a string"),
    "created": (_number, "a number"),
    "step": (_count, "a whole number >= 0"),
    "progress": (lambda v: isinstance(v, dict) and nesting_problem(v, _PROGRESS_DEPTH) is None,
                 f"an object nested at most {_PROGRESS_DEPTH} levels"),
    "metrics": (_metrics, "an object of numbers"),
    "monitor": (_monitor, 'null or {"name": ..., "mode": "min" or "max"}'),
    "files": (lambda v: isinstance(v, dict) and v != {}, "a non-empty object of files"),
}
_OPTIONAL: dict[str, tuple[Callable[[Any], bool], str]] = {
    "converted_from": (lambda v: isinstance(v, str), "a string"),
}


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _plain_name(name: str) -> bool:
    """A name that can only mean a file directly inside the folder (never ``..``, ``/x``, ``a/b``)."""
    return name not in ("", ".", "..", MANIFEST) and "/" not in name and "\0" not in name \
        and os.sep not in name and (os.altsep is None or os.altsep not in name)


def _malformed(folder: Path, what: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {show_name(folder)} has a malformed manifest: {what}")


def _check_files_field(files: dict[str, Any], folder: Path) -> None:
    for name, entry in files.items():
        if not _plain_name(name):
            raise _malformed(folder, f"it lists {name!r}, which is not a plain file name inside the "
                                     "checkpoint folder")
        if not (isinstance(entry, dict) and _count(entry.get("size"))
                and isinstance(entry.get("sha256"), str) and _SHA256.fullmatch(entry["sha256"])):
            raise _malformed(folder, f'files[{name!r}] must be {{"size": bytes, "sha256": 64 hex digits}}, '
                                     f"not {entry!r:.60}")


def parse_manifest(data: Any, folder: Path) -> Manifest:
    """``data`` (a manifest's parsed JSON) checked against :class:`Manifest`; CheckpointError if not."""
    if not isinstance(data, dict):
        raise _malformed(folder, f"it is a JSON {_type_name(data)}, not an object")
    for key, (valid, expected) in _FIELDS.items():
        if key not in data:
            raise _malformed(folder, f"{key} is missing")
        if not valid(data[key]):
            raise _malformed(folder, f"{key} must be {expected}, not {_type_name(data[key])}")
    for key, (valid, expected) in _OPTIONAL.items():
        if key in data and not valid(data[key]):
            raise _malformed(folder, f"{key} must be {expected}")
    _check_files_field(data["files"], folder)
    return cast(Manifest, data)


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def is_committed(folder: Path) -> bool:
    """Whether ``folder`` holds a manifest at all (a regular file; not yet parsed or verified)."""
    return _is_regular(folder / MANIFEST)


def read_manifest(folder: Path) -> Manifest:
    """The validated manifest of a committed checkpoint; CheckpointError if it never committed
    or its manifest is unreadable or malformed.

    It is read like any of kit's own files (:func:`kit.rundir.read_regular`): never through
    a symlink, never blocking on a FIFO, never more than a few MiB.
    """
    where = show_name(folder)
    if not os.path.isdir(folder):
        raise CheckpointError(f"checkpoint {where} not found", hint="check the path")
    try:
        regular = stat.S_ISREG(os.lstat(folder / MANIFEST).st_mode)
        if not regular:
            raise _malformed(folder, f"{MANIFEST} is not a regular file")
        data = json.loads(read_regular(folder / MANIFEST).decode("utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {where} has no manifest: its write never finished") from None
    except (OSError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"checkpoint {where} has an unreadable manifest: {reason(exc)}") from None
    return parse_manifest(data, folder)


def _kind(entry: os.DirEntry[str]) -> str:
    if entry.is_symlink():
        return "a symlink"
    if entry.is_dir(follow_symlinks=False):
        return "a folder"
    return "a special file"


def check_files(folder: Path, manifest: Manifest) -> None:
    """The folder holds exactly the manifest's files, each a regular file of the listed size.

    One ``os.scandir``; nothing is opened, and nothing outside ``folder`` is looked at.
    """
    listed, where = manifest["files"], show_name(folder)
    seen: set[str] = set()
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name == MANIFEST:
                    continue
                name = show_name(entry.name)
                if not entry.is_file(follow_symlinks=False):
                    raise CheckpointError(f"checkpoint {where}: {name} is {_kind(entry)}, "
                                          "but a checkpoint holds only regular files")
                if entry.name not in listed:
                    raise CheckpointError(f"checkpoint {where} holds {name}, "
                                          "which its manifest does not list")
                size, expected = entry.stat(follow_symlinks=False).st_size, listed[entry.name]["size"]
                if size != expected:
                    raise CheckpointError(f"checkpoint {where}: {name} is {size} bytes, the manifest says "
                                          f"{expected} ({'truncated' if size < expected else 'changed'})")
                seen.add(entry.name)
    except OSError as exc:
        raise CheckpointError(f"checkpoint {where} cannot be read: {reason(exc)}") from None
    missing = sorted(set(listed) - seen)
    if missing:
        raise CheckpointError(f"checkpoint {where} is missing {show_name(missing[0])}")


# -- a store's folders: ``step-00000480`` (``-N`` for a second save at one step) -------------


def step_order(path: Path) -> tuple[int, int]:
    """The (step, N) of a folder named ``step-…``, which sorts a store's checkpoints."""
    match = _STEP.fullmatch(path.name)
    assert match is not None
    return int(match.group(1)), int(match.group(2) or 0)


def step_folders(folder: Path) -> list[Path]:
    """Real folders named ``step-…`` (never a symlink to one), oldest first by name.

    A folder that cannot be listed (permissions) is a CheckpointError naming it; a missing
    one holds no checkpoints.
    """
    try:
        with os.scandir(folder) as entries:
            found = [Path(e.path) for e in entries
                     if _STEP.fullmatch(e.name) and e.is_dir(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise CheckpointError(f"cannot read the checkpoints in {show_name(folder)}: {reason(exc)}",
                              hint="make the folder readable by this user") from None
    return sorted(found, key=step_order)


def committed_checkpoints(folder: Path) -> list[Path]:
    """The committed checkpoint folders (a manifest exists) under ``folder``, oldest first."""
    return [p for p in step_folders(folder) if is_committed(p)]


def _misnamed(folder: Path, manifest: Manifest) -> CheckpointError | None:
    """A checkpoint whose folder name's step is not its manifest's: a copy or a forgery, which
    would otherwise be ordered (newest, pruning) by a name it does not deserve."""
    match = _STEP.fullmatch(folder.name)
    if match is None:  # not in a store's naming (``kit ckpt convert --output``): nothing to agree with
        return None
    step = int(match.group(1))
    recorded = manifest["progress"].get("global_step", step)
    if manifest["step"] == step and recorded == step:
        return None
    said = f"step {manifest['step']}" if manifest["step"] != step else f"global_step {recorded!r:.40}"
    return CheckpointError(f"checkpoint {show_name(folder)} is misnamed: its manifest says {said}",
                           hint="a renamed copy or a forgery; kit orders checkpoints by their step")


def checked_manifest(folder: Path) -> Manifest:
    """The manifest, well-formed, agreeing with the folder's name, and listing exactly the
    folder's files at their sizes (one ``scandir``, no hashing); else CheckpointError."""
    manifest = read_manifest(folder)
    misnamed = _misnamed(folder, manifest)
    if misnamed is not None:
        raise misnamed
    check_files(folder, manifest)
    return manifest


def _sound_manifest(folder: Path) -> Manifest | None:
    """:func:`checked_manifest`, or ``None`` for an uncommitted or visibly corrupt checkpoint."""
    try:
        return checked_manifest(folder)
    except CheckpointError:
        return None


def sound_manifests(folder: Path) -> dict[Path, Manifest]:
    """The sound manifests (see :func:`checked_manifest`) of the checkpoints in ``folder``, by
    checkpoint folder, oldest first; nothing is hashed, and torch is not imported."""
    found = {path: _sound_manifest(path) for path in committed_checkpoints(folder)}
    return {path: manifest for path, manifest in found.items() if manifest is not None}
