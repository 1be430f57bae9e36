"""Loading torch files without running code: ``weights_only``, no zip bombs, one clear refusal.

``torch.load(weights_only=True)`` gives back tensors and plain data only. Before it reads
a file, a torch zip whose members are compressed, or claim more bytes than the file
holds, is refused (torch writes its members stored, so that is a decompression bomb).
A refusal names the global a pickle tried to import and points to the docs on trusting
a checkpoint, never to ``weights_only=False``.
"""

from __future__ import annotations

import os
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, ClassVar

from kit.errors import CheckpointError
from kit.interfaces import CheckpointFormat
from kit.manifest import reason, show_name

__all__ = ["TRUST_DOCS", "TorchFormat", "load_torch_file"]

TRUST_DOCS = "docs/concepts.md#trusting-a-checkpoint"
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def _refusal(path: Path, exc: BaseException) -> CheckpointError:
    """torch's weights-only refusal, without its advice to load with ``weights_only=False``."""
    found = _GLOBAL.search(str(exc))
    lines = [line for line in str(exc).splitlines()[1:] if line.strip()]
    detail = next((line for line in lines if "weights_only" not in line and "torch.load" not in line), "")
    hint = f"if you TRUST its source, convert it to plain data as {TRUST_DOCS} shows"
    where = show_name(path)
    if found:
        return CheckpointError(f"cannot load checkpoint {where}: it holds pickled objects that are not plain "
                               f"data ({found.group(1)}), which may be unsafe: loading them could run code",
                               hint=hint)
    detail = show_name(detail.strip()) or "refused by weights-only loading"
    return CheckpointError(f"cannot load checkpoint {where}: it is corrupt, or holds pickled data that is "
                           f"not plain ({detail})", hint=hint)


def _check_zip(path: Path) -> None:
    """Refuse a zip (torch's format) that could expand in memory beyond its size on disk.

    ``torch.save`` stores every member uncompressed. A deflated member is how a 2 MB file
    makes ``torch.load`` allocate gigabytes, so any compressed member, or members claiming
    more bytes than the file holds, is refused before torch reads a byte of it.
    """
    try:
        with path.open("rb") as fh:
            if fh.read(4) != b"PK\x03\x04":  # what torch takes for a zip; anything else is one pickle
                return
            size = os.fstat(fh.fileno()).st_size
            with zipfile.ZipFile(fh) as archive:
                members = archive.infolist()
    except Exception as exc:  # BadZipFile, OSError, and whatever a forged directory provokes
        raise CheckpointError(f"cannot load checkpoint {show_name(path)}: its zip directory is corrupt "
                              f"({type(exc).__name__}: {reason(exc)})") from None
    packed = next((m for m in members if m.compress_type != zipfile.ZIP_STORED), None)
    claimed = sum(m.file_size for m in members)
    if packed is not None or claimed > size:
        what = f"its member {show_name(packed.filename)} is compressed" if packed is not None else \
            f"its members claim {claimed:,} bytes, more than the file's {size:,}"
        raise CheckpointError(f"cannot load checkpoint {show_name(path)}: {what}, which torch.save never "
                              "writes (a decompression bomb?)", hint="it is corrupt or forged")


def load_torch_file(path: Path, *, map_location: Any = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True``; any refusal or corruption is a CheckpointError.

    A zip that would expand beyond its size is refused first (:func:`_check_zip`), and
    torch's own warnings (about pickle protocols, say) are kept out of the one-line refusal.
    """
    import torch  # here: reading manifests (``kit runs list``) must not import torch

    _check_zip(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # unpickling refusals and corrupt files alike
        if str(exc).startswith("Weights only load failed"):
            raise _refusal(path, exc) from exc
        raise CheckpointError(f"cannot load checkpoint {show_name(path)}: {reason(exc)}",
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
            raise CheckpointError(f"checkpoint {show_name(folder)} holds a {type(data).__name__}, "
                                  "not a kit checkpoint")
        return data
