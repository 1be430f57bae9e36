"""``kit ckpt inspect`` and ``kit ckpt convert``: look inside a checkpoint, change its format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from kit.cli import CliState
from kit.errors import CheckpointError, ConfigError, KitError
from kit.manifest import Manifest, read_manifest, show_name

__all__ = ["ckpt"]


@click.group()
def ckpt() -> None:
    """Inspect and convert checkpoints."""


def _format(state: CliState, name: str, key: str) -> Any:
    try:
        spec = state.registry.find("kit.checkpoint_formats", name)
    except KitError as exc:
        raise ConfigError(exc.message, key=key, hint=exc.hint) from None
    return spec.load()()


def _open(state: CliState, path: Path) -> tuple[Path, Manifest, dict[str, Any]]:
    """Verify and load a kit checkpoint folder (or a file in it, or a run directory's newest
    valid checkpoint) through its manifest's format.

    Any corruption (a malformed manifest, a forged file list, a format not installed, content
    that is not a kit checkpoint) is a CheckpointError: one line, exit code 2.
    """
    from kit.checkpoint import CheckpointStore, TorchFormat, check_kit_checkpoint, checkpoint_folder

    def resolve(name: str) -> Any:
        return _format(state, name, "format (in the manifest)")

    if (path / "checkpoints").is_dir() and (path / "config.yaml").is_file():  # a run: its newest
        found = CheckpointStore(path / "checkpoints", TorchFormat(), resolve=resolve).latest()
        if found is None:
            raise CheckpointError(f"run {path} has no valid checkpoint", hint="pass a checkpoint folder")
        return found[0], read_manifest(found[0]), found[1]
    folder = checkpoint_folder(path)
    store = CheckpointStore(folder.parent, TorchFormat(), resolve=resolve)
    data = store.load(folder, check=check_kit_checkpoint)
    return folder, read_manifest(folder), data


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def _tensors(value: Any) -> tuple[int, int, int]:
    """(tensors, elements, bytes) anywhere inside ``value``."""
    import torch

    if isinstance(value, torch.Tensor):
        return 1, value.numel(), value.numel() * value.element_size()
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list | tuple) else ()
    total = (0, 0, 0)
    for item in items:
        total = tuple(a + b for a, b in zip(total, _tensors(item), strict=True))  # type: ignore[assignment]
    return total


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
        sections[key] = {"tensors": n, "elements": elements, "bytes": nbytes,
                         "keys": len(value) if isinstance(value, dict) else -1}
    report = {"path": str(folder), "verified": True, **{k: manifest.get(k) for k in (
        "format", "kit_version", "step", "progress", "metrics", "files")}, "sections": sections}
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    progress = manifest["progress"]
    click.echo(f"checkpoint  {folder}")
    click.echo(f"format      {manifest.get('format')} (kit {manifest.get('kit_version')}), "
               "verified against its manifest")
    click.echo("progress    " + ", ".join(f"{k} {progress[k]}" for k in (
        "iteration", "global_step", "epoch", "epoch_batches", "phase") if k in progress))
    if manifest["metrics"]:
        click.echo("metrics     " + ", ".join(f"{k}={v:.6g}" for k, v in manifest["metrics"].items()))
    for name, entry in sorted(manifest["files"].items()):
        click.echo(f"file        {show_name(name)}  {_size(entry['size'])}  sha256 {entry['sha256'][:16]}…")
    for key, info in sections.items():
        detail = f"{info['tensors']} tensors, {info['elements']:,} values, {_size(info['bytes'])}" \
            if info["tensors"] else (f"{info['keys']} keys" if info["keys"] >= 0 else "")
        click.echo(f"{key:<11} {detail}".rstrip())


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
    if output.exists():
        raise CheckpointError(f"{output} already exists", hint="pass another --output, or delete it")
    output.parent.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {"step": manifest["step"], "progress": manifest["progress"],
                            "metrics": manifest["metrics"], "monitor": manifest["monitor"]}
    commit(output, fmt, data, {**meta, "converted_from": str(folder)})
    click.echo(f"wrote {output} ({target})")
