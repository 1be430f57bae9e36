"""``kit ckpt inspect`` and ``kit ckpt convert``: look inside a checkpoint, change its format."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from kit.cli import CliState
from kit.errors import CheckpointError, ConfigError, disk_full
from kit.manifest import Manifest, read_manifest, reason, show_name

__all__ = ["ckpt"]


@click.group()
def ckpt() -> None:
    """Inspect and convert checkpoints."""


def _format(state: CliState, name: str, key: str) -> Any:
    return state.registry.load("kit.checkpoint_formats", name, key=key)()


def _open(state: CliState, path: Path) -> tuple[Path, Manifest, dict[str, Any]]:
    """Verify and load a kit checkpoint folder (or a file in it, or a run directory's newest
    valid checkpoint) through its manifest's format.

    Any corruption (a malformed manifest, a forged file list, a format not installed, content
    that is not a kit checkpoint) is a CheckpointError: one line, exit code 2.
    """
    from kit.checkpoint import CheckpointStore, TorchFormat, check_kit_checkpoint, checkpoint_folder

    def resolve(name: str) -> Any:
        return _format(state, name, "format (in the manifest)")

    if os.path.isdir(path / "checkpoints") and os.path.isfile(path / "config.yaml"):  # a run: its newest
        found = CheckpointStore(path / "checkpoints", TorchFormat(), resolve=resolve).latest()
        if found is None:
            raise CheckpointError(f"run {show_name(path)} has no valid checkpoint",
                                  hint="pass a checkpoint folder")
        return found[0], read_manifest(found[0]), found[1]
    folder = checkpoint_folder(path)
    store = CheckpointStore(folder.parent, TorchFormat(), resolve=resolve)
    data = store.load(folder, check=check_kit_checkpoint)
    return folder, read_manifest(folder), data


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def _tensors(value: Any) -> tuple[int, int, int]:
    """(tensors, elements, bytes) anywhere inside ``value``, each distinct tensor counted once.

    Iterative, and every container is visited once, so no nesting or sharing in a forged
    checkpoint can make it recurse too deep or walk the same lists forever.
    """
    import torch

    seen: set[int] = set()
    count = elements = nbytes = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if not isinstance(item, torch.Tensor | dict | list | tuple) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, torch.Tensor):
            count, elements = count + 1, elements + item.numel()
            nbytes += item.numel() * item.element_size()
        else:
            stack.extend(item.values() if isinstance(item, dict) else item)
    return count, elements, nbytes


def _number(value: Any) -> str:
    """A number from a manifest as text; ``?`` for one that does not format (a 401-digit integer)."""
    try:
        return f"{float(value):.6g}"
    except (TypeError, ValueError, OverflowError):
        return "?"


def _shown(value: Any) -> str:
    """A progress field from a manifest as text that cannot split a line (``?`` if it is odd)."""
    if isinstance(value, str):
        return show_name(value)
    whole = isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**63
    return str(value) if whole else "?"


@ckpt.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of text.")
@click.pass_obj
def inspect(state: CliState, path: Path, as_json: bool) -> None:
    """Verify PATH against its manifest and show what it holds.

    PATH is a checkpoint folder (or a file in it), or a run directory for its newest valid
    checkpoint: `kit runs list` shows the runs.
    """
    folder, manifest, data = _open(state, path)
    sections: dict[str, dict[str, int]] = {}
    for key, value in data.items():
        n, elements, nbytes = _tensors(value)
        sections[str(key)] = {"tensors": n, "elements": elements, "bytes": nbytes,
                              "keys": len(value) if isinstance(value, dict) else -1}
    report = {"path": str(folder), "verified": True, **{k: manifest.get(k) for k in (
        "format", "kit_version", "step", "progress", "metrics", "files", "converted_from")},
        "sections": sections}
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    progress = manifest["progress"]  # every text below comes from the files: shown on one line each
    click.echo(f"checkpoint  {show_name(folder)}")
    click.echo(f"format      {show_name(manifest['format'])} (kit {show_name(manifest['kit_version'])}), "
               "verified against its manifest")
    if "converted_from" in manifest:
        click.echo(f"converted   from {show_name(manifest['converted_from'])}")
    click.echo("progress    " + ", ".join(f"{k} {_shown(progress[k])}" for k in (
        "iteration", "global_step", "epoch", "epoch_batches", "phase") if k in progress))
    if manifest["metrics"]:
        click.echo("metrics     " + ", ".join(f"{show_name(k)}={_number(v)}"
                                              for k, v in manifest["metrics"].items()))
    for name, entry in sorted(manifest["files"].items()):
        click.echo(f"file        {show_name(name)}  {_size(entry['size'])}  sha256 {entry['sha256'][:16]}…")
    for key, info in sections.items():
        detail = f"{_count(info['tensors'], 'tensor')}, {_count(info['elements'], 'value')}, " \
            f"{_size(info['bytes'])}" if info["tensors"] else \
            (_count(info["keys"], "key") if info["keys"] >= 0 else "")
        click.echo(f"{show_name(key):<11} {detail}".rstrip())


@ckpt.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--to", "target", required=True, metavar="FORMAT",
              help="An entry point in kit.checkpoint_formats: torch, safetensors, lightning, …")
@click.option("--output", type=click.Path(path_type=Path), default=None,
              help="The new checkpoint folder (default: PATH-FORMAT beside PATH).")
@click.pass_obj
def convert(state: CliState, path: Path, target: str, output: Path | None) -> None:
    """Write checkpoint PATH (or a run directory's newest) again in another format, verified
    and committed like any save."""
    from kit.checkpoint import commit

    folder, manifest, data = _open(state, path)
    fmt = _format(state, target, "--to")
    output = output or folder.with_name(f"{folder.name}-{target}")
    _check_output(output, folder)
    meta: dict[str, Any] = {"step": manifest["step"], "progress": manifest["progress"],
                            "metrics": manifest["metrics"], "monitor": manifest["monitor"]}
    # a folder it cannot write in is a CheckpointError
    commit(output, fmt, data, {**meta, "converted_from": str(folder)}, name=target)
    click.echo(f"wrote {show_name(output)} ({target})")


def _check_output(output: Path, source: Path) -> None:
    """Refuse ``--output`` before anything is written: a path that exists (a dangling symlink
    too), lies inside the checkpoint being converted, or cannot name a new folder; then make
    its parent. A full disk stays an ``OSError`` (exit 1)."""
    hint = "pass a new folder outside the checkpoint, e.g. beside it"
    try:
        os.lstat(output)
    except FileNotFoundError:
        pass
    except OSError as exc:  # a name too long, a path through a file (/dev/null/x), no permission
        raise ConfigError(f"{show_name(output)} cannot be a new folder: {reason(exc)}", key="--output",
                          hint=hint) from None
    else:
        raise CheckpointError(f"{show_name(output)} already exists",
                              hint="pass another --output, or delete it")
    inside = Path(os.path.realpath(output))
    if inside.is_relative_to(os.path.realpath(source)):
        raise ConfigError(f"{show_name(output)} is inside the checkpoint {show_name(source)} it converts",
                          key="--output", hint=hint)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if disk_full(exc) is not None:
            raise
        raise ConfigError(f"cannot create the folder {show_name(output.parent)}: {reason(exc)}",
                          key="--output", hint=hint) from None
