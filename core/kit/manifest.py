"""The ``manifest.json`` of a checkpoint: its one schema, and the check of its folder against it.

A manifest is trusted for nothing it does not prove. It is valid only when it has
exactly the shape of :class:`Manifest` (checked field by field, types included), and
its folder holds exactly the files it lists: every one a regular file under a plain
name, no symlink, no subfolder, nothing unlisted, each of the listed size (the sha256s
are checked while the format loads, see :mod:`kit.checkpoint`). Anything else is a
corrupt checkpoint, reported as a :class:`~kit.errors.CheckpointError` naming its folder.

Reading a manifest needs neither torch nor pydantic, so ``kit runs list`` stays fast.
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

__all__ = [
    "MANIFEST",
    "FileEntry",
    "Manifest",
    "Monitor",
    "check_files",
    "is_committed",
    "parse_manifest",
    "read_manifest",
    "show_name",
]

MANIFEST = "manifest.json"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


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
    metrics: dict[str, float]
    monitor: Monitor | None
    files: dict[str, FileEntry]


class Manifest(_Required, total=False):
    """What kit writes as ``manifest.json``, last, when a checkpoint commits."""

    converted_from: str
    """The checkpoint ``kit ckpt convert`` made this one from."""


def show_name(name: str) -> str:
    """A file name as it can appear in a one-line message (quoted when it is not printable)."""
    return name if name.isprintable() else repr(name)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


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
    "progress": (lambda v: isinstance(v, dict), "an object"),
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


def _check_files_field(files: dict[str, Any], folder: Path) -> None:
    for name, entry in files.items():
        if not _plain_name(name):
            raise CheckpointError(f"checkpoint {folder} has a malformed manifest: it lists "
                                  f"{name!r}, which is not a plain file name inside the checkpoint folder")
        if not (isinstance(entry, dict) and _count(entry.get("size"))
                and isinstance(entry.get("sha256"), str) and _SHA256.match(entry["sha256"])):
            raise CheckpointError(f"checkpoint {folder} has a malformed manifest: files[{name!r}] must be "
                                  f'{{"size": bytes, "sha256": 64 hex digits}}, not {entry!r:.60}')


def parse_manifest(data: Any, folder: Path) -> Manifest:
    """``data`` (a manifest's parsed JSON) checked against :class:`Manifest`; CheckpointError if not."""
    if not isinstance(data, dict):
        raise CheckpointError(f"checkpoint {folder} has a malformed manifest: "
                              f"it is a JSON {_type_name(data)}, not an object")
    for key, (valid, expected) in _FIELDS.items():
        if key not in data:
            raise CheckpointError(f"checkpoint {folder} has a malformed manifest: {key} is missing")
        if not valid(data[key]):
            raise CheckpointError(f"checkpoint {folder} has a malformed manifest: {key} must be {expected}, "
                                  f"not {_type_name(data[key])}")
    for key, (valid, expected) in _OPTIONAL.items():
        if key in data and not valid(data[key]):
            raise CheckpointError(f"checkpoint {folder} has a malformed manifest: {key} must be {expected}")
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
    or its manifest is unreadable or malformed."""
    path = folder / MANIFEST
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint {folder} not found", hint="check the path")
    if not os.path.lexists(path):
        raise CheckpointError(f"checkpoint {folder} has no manifest: its write never finished")
    if not _is_regular(path):
        raise CheckpointError(f"checkpoint {folder} has a malformed manifest: "
                              f"{MANIFEST} is not a regular file")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as fh:
            data = json.loads(fh.read().decode("utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"checkpoint {folder} has an unreadable manifest: {detail}") from None
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
    listed = manifest["files"]
    seen: set[str] = set()
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name == MANIFEST:
                    continue
                name = show_name(entry.name)
                if not entry.is_file(follow_symlinks=False):
                    raise CheckpointError(f"checkpoint {folder}: {name} is {_kind(entry)}, "
                                          "but a checkpoint holds only regular files")
                if entry.name not in listed:
                    raise CheckpointError(f"checkpoint {folder} holds {name}, "
                                          "which its manifest does not list")
                size, expected = entry.stat(follow_symlinks=False).st_size, listed[entry.name]["size"]
                if size != expected:
                    raise CheckpointError(f"checkpoint {folder}: {name} is {size} bytes, the manifest says "
                                          f"{expected} ({'truncated' if size < expected else 'changed'})")
                seen.add(entry.name)
    except OSError as exc:
        raise CheckpointError(f"checkpoint {folder} cannot be read: {exc.strerror or exc}") from None
    missing = sorted(set(listed) - seen)
    if missing:
        raise CheckpointError(f"checkpoint {folder} is missing {show_name(missing[0])}")
