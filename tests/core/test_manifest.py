"""A manifest is verified against exactly the files in its folder, and a bad one is only ever
"corrupt, skipped": forged file lists, paths that leave the folder, symlinks, special files and
every malformed manifest fall back to the previous checkpoint with one warning line."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from blocking import in_thread

import kit
import kit.checkpoint
from kit.checkpoint import MANIFEST, CheckpointStore, Retention, TorchFormat, check_kit_checkpoint
from kit.errors import CheckpointError, ConfigError, PluginLoadError, PluginNotFoundError
from kit.manifest import parse_manifest, read_manifest
from kit.plugins import EntryPointSpec, Registry
from kit.seed import rng_state

Forge = Callable[[Path, Path], None]
"""Damages the checkpoint folder (first argument); the second is a scratch folder outside the store."""


def kit_state(step: int) -> dict[str, Any]:
    """The smallest dict that has the shape of a kit checkpoint."""
    return {"model": {"w": torch.full((3,), float(step))}, "optimizer": {"state": {}, "param_groups": []},
            "progress": {"iteration": step, "global_step": step, "epoch": step}, "rng": rng_state()}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest_of(folder: Path) -> dict[str, Any]:
    return dict(json.loads((folder / MANIFEST).read_text()))


def write_manifest(folder: Path, manifest: Any) -> None:
    (folder / MANIFEST).write_text(json.dumps(manifest))


def edit(**changes: Any) -> Forge:
    """Set top-level manifest fields (``...`` deletes one)."""
    def forge(folder: Path, outside: Path) -> None:
        manifest = manifest_of(folder)
        for key, value in changes.items():
            if value is ...:
                del manifest[key]
            else:
                manifest[key] = value
        write_manifest(folder, manifest)
    return forge


def list_honestly(folder: Path, files: dict[str, Path]) -> None:
    """Make the manifest list ``files`` (name -> the file whose size and sha256 to record)."""
    manifest = manifest_of(folder)
    manifest["files"] = {name: {"size": p.stat().st_size, "sha256": sha256(p)} for name, p in files.items()}
    write_manifest(folder, manifest)


def reseal(folder: Path) -> None:
    """Rewrite the manifest honestly for whatever regular files the folder now holds."""
    list_honestly(folder, {p.name: p for p in folder.iterdir() if p.name != MANIFEST})


def _unlisted_data_file(folder: Path, outside: Path) -> None:
    (folder / "notes.txt").write_text("hello")
    list_honestly(folder, {"notes.txt": folder / "notes.txt"})


def _missing_data_file(folder: Path, outside: Path) -> None:
    (folder / "checkpoint.pt").unlink()


def _extra_file(folder: Path, outside: Path) -> None:
    (folder / "extra.bin").write_bytes(b"x")


def _listed_outside(name: Callable[[Path, Path], str]) -> Forge:
    """List a file outside the folder (a copy of the real data, honestly hashed) under ``name``."""
    def forge(folder: Path, outside: Path) -> None:
        stolen = outside / "stolen.pt"
        shutil.copy(folder / "checkpoint.pt", stolen)
        list_honestly(folder, {name(folder, outside): stolen})
    return forge


def _slash_name(folder: Path, outside: Path) -> None:
    (folder / "sub").mkdir()
    os.replace(folder / "checkpoint.pt", folder / "sub" / "checkpoint.pt")
    list_honestly(folder, {"sub/checkpoint.pt": folder / "sub" / "checkpoint.pt"})


def _symlink_outside(folder: Path, outside: Path) -> None:
    """The data file becomes a link to an identical copy outside: sizes and hashes all match."""
    shutil.copy(folder / "checkpoint.pt", outside / "stolen.pt")
    (folder / "checkpoint.pt").unlink()
    (folder / "checkpoint.pt").symlink_to(outside / "stolen.pt")


def _symlink_inside(folder: Path, outside: Path) -> None:
    (folder / "alias.pt").symlink_to("checkpoint.pt")
    list_honestly(folder, {"checkpoint.pt": folder / "checkpoint.pt", "alias.pt": folder / "checkpoint.pt"})


def _subfolder(folder: Path, outside: Path) -> None:
    (folder / "extra").mkdir()


def _fifo(folder: Path, outside: Path) -> None:
    """A listed FIFO (empty, as its stat says): opening it to hash it would block forever."""
    os.mkfifo(folder / "pipe")
    manifest = manifest_of(folder)
    manifest["files"]["pipe"] = {"size": 0, "sha256": hashlib.sha256(b"").hexdigest()}
    write_manifest(folder, manifest)


def _wrong_size(folder: Path, outside: Path) -> None:
    manifest = manifest_of(folder)
    manifest["files"]["checkpoint.pt"]["size"] += 1
    write_manifest(folder, manifest)


def _wrong_hash(folder: Path, outside: Path) -> None:
    manifest = manifest_of(folder)
    manifest["files"]["checkpoint.pt"]["sha256"] = "0" * 64
    write_manifest(folder, manifest)


def _manifest_symlink(folder: Path, outside: Path) -> None:
    shutil.copy(folder / MANIFEST, outside / "manifest.json")
    (folder / MANIFEST).unlink()
    (folder / MANIFEST).symlink_to(outside / "manifest.json")


def _raw_manifest(raw: bytes) -> Forge:
    def forge(folder: Path, outside: Path) -> None:
        (folder / MANIFEST).write_bytes(raw)
    return forge


def _manifest_directory(folder: Path, outside: Path) -> None:
    (folder / MANIFEST).unlink()
    (folder / MANIFEST / "nested").mkdir(parents=True)


def _file_entry(entry: Any) -> Forge:
    def forge(folder: Path, outside: Path) -> None:
        manifest = manifest_of(folder)
        manifest["files"]["checkpoint.pt"] = entry
        write_manifest(folder, manifest)
    return forge


GOOD_SHA = "a" * 64
FORGED: dict[str, Forge] = {
    "data file unlisted": _unlisted_data_file,
    "data file missing": _missing_data_file,
    "extra unlisted file": _extra_file,
    "../ path": _listed_outside(lambda folder, outside: "../step-00000001/checkpoint.pt"),
    "../../etc/passwd": _listed_outside(lambda folder, outside: "../../../../../../../etc/passwd"),
    "absolute path": _listed_outside(lambda folder, outside: str(outside / "stolen.pt")),
    "name with a slash": _slash_name,
    "symlink pointing outside": _symlink_outside,
    "symlink pointing inside": _symlink_inside,
    "subfolder": _subfolder,
    "fifo": _fifo,
    "wrong size": _wrong_size,
    "wrong sha256": _wrong_hash,
    "manifest.json a symlink": _manifest_symlink,
}
MALFORMED: dict[str, Forge] = {
    "not json": _raw_manifest(b'{"files": '),
    "empty file": _raw_manifest(b""),
    "not utf-8": _raw_manifest(b'{"format": "\xff\xfe"}'),
    "nested too deep": _raw_manifest(b"[" * 100_000),
    "a list": _raw_manifest(b"[]"),
    "a string": _raw_manifest(b'"manifest"'),
    "null": _raw_manifest(b"null"),
    "manifest.json a directory": _manifest_directory,
    "files entry a number": _file_entry(5),
    "files entry size a string": _file_entry({"size": "10", "sha256": GOOD_SHA}),
    "files entry size negative": _file_entry({"size": -1, "sha256": GOOD_SHA}),
    "files entry size a bool": _file_entry({"size": True, "sha256": GOOD_SHA}),
    "files entry sha256 not hex": _file_entry({"size": 1, "sha256": "xyz"}),
    "files entry sha256 missing": _file_entry({"size": 1}),
    "files a list": edit(files=[]),
    "files empty": edit(files={}),
    "files missing": edit(files=...),
    "step a string": edit(step="x"),
    "step negative": edit(step=-1),
    "step a bool": edit(step=True),
    "metrics a list": edit(metrics=[]),
    "metrics not numbers": edit(metrics={"val/loss": "low"}),
    "monitor a number": edit(monitor=3),
    "monitor without name": edit(monitor={"mode": "min"}),
    "monitor mode unknown": edit(monitor={"name": "val/loss", "mode": "up"}),
    "progress null": edit(progress=None),
    "progress a list": edit(progress=[]),
    "format a number": edit(format=3),
    "format missing": edit(format=...),
    "kit_version a number": edit(kit_version=1),
    "created a string": edit(created="today"),
    "converted_from a number": edit(converted_from=3),
}
HASH_ONLY = {"wrong sha256"}
"""Cases only a sha256 reveals: retention, which never hashes, still ranks them by their manifest."""


def make_store(folder: Path, keep_last: int = 5) -> CheckpointStore:
    return CheckpointStore(folder, TorchFormat(), retention=Retention(keep_last=keep_last, keep_best=1,
                                                                      monitor="val/loss"))


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every path kit hashes from now on."""
    seen: list[Path] = []
    real = kit.checkpoint._sha256

    def recorder(path: Path) -> str:
        seen.append(path)
        return real(path)

    monkeypatch.setattr(kit.checkpoint, "_sha256", recorder)
    return seen


def warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line]


@pytest.mark.parametrize("case", [*FORGED, *MALFORMED])
def test_a_forged_or_malformed_checkpoint_falls_back_with_one_warning(
    case: str, tmp_path: Path, hashed: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    store_dir, outside = tmp_path / "checkpoints", tmp_path / "outside"
    outside.mkdir()
    s = make_store(store_dir)
    good = s.save(kit_state(1), step=1, progress={"iteration": 1}, metrics={"val/loss": 0.5})
    bad = s.save(kit_state(2), step=2, progress={"iteration": 2}, metrics={"val/loss": 0.1})
    {**FORGED, **MALFORMED}[case](bad, outside)
    capsys.readouterr()
    hashed.clear()

    found = in_thread(s.latest)
    assert found is not None and found[0] == good and torch.equal(found[1]["model"]["w"], torch.ones(3))
    lines = warnings(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith(f"kit: warning: skipping checkpoint {bad}"), lines
    assert all(p.parent in (good, bad) and not p.is_symlink() for p in hashed), hashed  # never outside
    assert not any(p.is_relative_to(outside) for p in hashed)
    with pytest.raises(CheckpointError, match=str(bad)):
        in_thread(lambda: s.load(bad))
    best = in_thread(s.best)
    if case not in HASH_ONLY:
        assert best == good  # a malformed or visibly forged manifest never counts as best

    newest = in_thread(lambda: make_store(store_dir, keep_last=1).save(kit_state(3), step=3))
    assert in_thread(s.latest)[0] == newest
    if case not in HASH_ONLY:
        assert not bad.exists()  # pruned, even with a manifest.json that is a folder
        assert good.exists()  # the best by val/loss among the sound ones


@pytest.mark.parametrize("case", ["a FIFO listed as the data file", "a FIFO outside, listed by path"])
def test_a_fifo_is_never_opened(case: str, tmp_path: Path) -> None:
    s = make_store(tmp_path / "checkpoints")
    s.save(kit_state(1), step=1)
    bad = s.save(kit_state(2), step=2)
    if case.startswith("a FIFO listed"):
        (bad / "checkpoint.pt").unlink()
        os.mkfifo(bad / "checkpoint.pt")
    else:
        os.mkfifo(tmp_path / "pipe")
        manifest = manifest_of(bad)
        manifest["files"] = {str(tmp_path / "pipe"): {"size": 0, "sha256": GOOD_SHA}}
        write_manifest(bad, manifest)
    with pytest.raises(CheckpointError):
        in_thread(lambda: s.load(bad, verify=False))
    with pytest.raises(CheckpointError):
        in_thread(lambda: s.verify(bad))
    assert in_thread(s.latest)[0].name == "step-00000001"


def test_a_valid_manifest_parses_and_names_its_problem_exactly(tmp_path: Path) -> None:
    folder = make_store(tmp_path).save(kit_state(1), step=1, metrics={"val/loss": 0.5})
    manifest = read_manifest(folder)
    assert manifest["files"]["checkpoint.pt"]["size"] == (folder / "checkpoint.pt").stat().st_size
    assert manifest["monitor"] == {"name": "val/loss", "mode": "min"}
    with pytest.raises(CheckpointError, match=r"step must be a whole number >= 0, not str"):
        parse_manifest({**manifest, "step": "x"}, folder)
    with pytest.raises(CheckpointError, match=r"files\['checkpoint.pt'\] must be"):
        parse_manifest({**manifest, "files": {"checkpoint.pt": 5}}, folder)
    with pytest.raises(CheckpointError, match=r"lists '\.\./x', which is not a plain file name"):
        parse_manifest({**manifest, "files": {"../x": {"size": 1, "sha256": GOOD_SHA}}}, folder)
    with pytest.raises(CheckpointError, match=r"it is a JSON list, not an object"):
        parse_manifest([], folder)


def test_an_unlisted_file_is_named_on_one_line_whatever_its_name(tmp_path: Path) -> None:
    s = make_store(tmp_path)
    bad = s.save(kit_state(1), step=1)
    (bad / "evil\nname\x1b[31m").write_bytes(b"x")
    with pytest.raises(CheckpointError) as info:
        s.load(bad)
    assert "\n" not in str(info.value) and "\x1b" not in str(info.value)
    assert "'evil\\nname\\x1b[31m'" in str(info.value)


# -- formats that are not installed, content that is not a kit checkpoint ----------------


def resolver(error: Exception) -> Callable[[str], Any]:
    def resolve(name: str) -> Any:
        raise error
    return resolve


@pytest.mark.parametrize("error", [
    PluginNotFoundError("unknown checkpoint format 'onnx'", hint="available: torch"),
    ConfigError("unknown checkpoint format 'onnx'", key="checkpoint.format", hint="available: torch"),
    None,  # a store that cannot resolve other formats at all
], ids=["PluginNotFoundError", "ConfigError", "no resolver"])
def test_an_unknown_format_is_a_corrupt_checkpoint(
    error: Exception | None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s = CheckpointStore(tmp_path, TorchFormat(), resolve=resolver(error) if error else None)
    s.save(kit_state(1), step=1)
    bad = s.save(kit_state(2), step=2)
    edit(format="onnx")(bad, tmp_path)
    capsys.readouterr()
    assert s.latest()[0].name == "step-00000001"  # type: ignore[index]
    (line,) = warnings(capsys.readouterr().err)
    assert f"skipping checkpoint {bad}" in line and "'onnx'" in line and "checkpoint.format:" not in line
    with pytest.raises(CheckpointError, match=f"checkpoint {bad}"):
        s.load(bad)


def test_a_format_that_is_installed_but_does_not_import_is_not_corruption(tmp_path: Path) -> None:
    broken = PluginLoadError("acme[onnx]", ModuleNotFoundError("No module named 'onnx'"))
    s = CheckpointStore(tmp_path, TorchFormat(), resolve=resolver(broken))
    s.save(kit_state(1), step=1)
    edit(format="onnx")(s.save(kit_state(2), step=2), tmp_path)
    with pytest.raises(PluginLoadError, match=r"acme\[onnx\] failed to load: ModuleNotFoundError"):
        s.latest()


NOT_KIT: dict[str, Any] = {
    "a dict of other things": {"a": 1},
    "a list": [1, 2],
    "a tensor": torch.ones(2),
    "progress without iteration": {**kit_state(2), "progress": {"global_step": 2, "epoch": 0}},
    "progress without epoch": {**kit_state(2), "progress": {"iteration": 2, "global_step": 2}},
    "progress iteration a string": {**kit_state(2), "progress": {"iteration": "2", "global_step": 2,
                                                                 "epoch": 0}},
    "model not a dict": {**kit_state(2), "model": [torch.ones(1)]},
    "model not tensors": {**kit_state(2), "model": {"w": 1.0}},
    "no optimizer": {k: v for k, v in kit_state(2).items() if k != "optimizer"},
    "rng not a dict": {**kit_state(2), "rng": [1]},
}


@pytest.mark.parametrize("content", NOT_KIT.values(), ids=NOT_KIT.keys())
def test_a_verified_checkpoint_that_is_not_kits_falls_back(
    content: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s = make_store(tmp_path)
    s.save(kit_state(1), step=1)
    bad = s.save(kit_state(2), step=2)
    torch.save(content, bad / "checkpoint.pt")
    reseal(bad)  # its manifest is honest: only its content is wrong
    capsys.readouterr()
    assert s.latest()[0].name == "step-00000001"  # type: ignore[index]
    (line,) = warnings(capsys.readouterr().err)
    assert line.startswith(f"kit: warning: skipping checkpoint {bad}")
    with pytest.raises(CheckpointError, match=f"checkpoint {bad}"):
        s.load(bad, check=check_kit_checkpoint)


class Exploding(TorchFormat):
    """A format whose load was not written for hostile files: it fails in its own way."""

    error: Exception = KeyError("state_dict")

    def load(self, folder: Path, *, map_location: Any = "cpu") -> dict[str, Any]:
        raise self.error


def test_any_failure_of_a_formats_load_is_a_checkpoint_error(tmp_path: Path) -> None:
    s = CheckpointStore(tmp_path, Exploding())
    folder = s.save(kit_state(1), step=1)
    with pytest.raises(CheckpointError, match=r"cannot be loaded as 'torch': KeyError: 'state_dict'"):
        s.load(folder)
    (folder / "checkpoint.pt").write_bytes(b"\0" * (folder / "checkpoint.pt").stat().st_size)
    with pytest.raises(CheckpointError, match="does not match its sha256"):  # corruption explains best
        s.load(folder)
    Exploding.error = ModuleNotFoundError("No module named 'safetensors'")
    try:
        with pytest.raises(PluginLoadError, match="No module named 'safetensors'"):
            s.load(s.save(kit_state(2), step=2))
    finally:
        Exploding.error = KeyError("state_dict")


class Writes(TorchFormat):
    """A format that writes something besides regular files at the top of its folder."""

    extra: Callable[[Path], None] = staticmethod(lambda folder: None)

    def save(self, checkpoint: dict[str, Any], folder: Path) -> None:
        super().save(checkpoint, folder)
        type(self).extra(folder)


@pytest.mark.parametrize("extra, what", [
    (lambda folder: (folder / "shards").mkdir(), "a folder shards"),
    (lambda folder: (folder / "link").symlink_to("checkpoint.pt"), "a symlink link"),
    (lambda folder: os.mkfifo(folder / "pipe"), "a special file pipe"),
    (lambda folder: (folder / MANIFEST).write_text("{}"), "the reserved name manifest.json"),
], ids=["folder", "symlink", "fifo", "manifest.json"])
def test_a_format_that_writes_more_than_regular_files_fails_the_save(
    extra: Callable[[Path], None], what: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = make_store(tmp_path)
    previous = s.save(kit_state(1), step=1)
    monkeypatch.setattr(Writes, "extra", staticmethod(extra))
    with pytest.raises(CheckpointError, match=f"checkpoint format 'torch' wrote {what} into its folder"):
        CheckpointStore(tmp_path, Writes()).save(kit_state(2), step=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [previous.name]  # nothing else left behind
    assert s.latest()[0] == previous  # type: ignore[index]


# -- through a real run, and torch's refusals ------------------------------------------


def test_a_garbled_file_is_refused_without_advice_to_unpickle_it(tmp_path: Path) -> None:
    s = make_store(tmp_path)
    folder = s.save(kit_state(1), step=1)
    (folder / "checkpoint.pt").write_bytes(b"garbage")
    reseal(folder)
    with pytest.raises(CheckpointError, match=r"it is corrupt, or holds pickled data that is not plain "
                                              r"\(Unsupported operand 103\)") as info:
        s.load(folder)
    assert "weights_only" not in str(info.value)


def trained_run(kit_config: Any) -> Path:
    """A finished two-iteration run with checkpoints step-00000004 and step-00000008."""
    trainer = kit.Trainer(kit_config(training={"iterations": 2}), autoload=False)
    trainer.run()
    assert trainer.checkpoints is not None
    assert [p.name for p in trainer.checkpoints.list()] == ["step-00000004", "step-00000008"]
    return trainer.checkpoints.folder


def not_kit(content: Any) -> Callable[[Path], None]:
    def forge(folder: Path) -> None:
        torch.save(content, folder / "checkpoint.pt")
        reseal(folder)
    return forge


def no_iteration(folder: Path) -> None:
    data = torch.load(folder / "checkpoint.pt", weights_only=True)
    del data["progress"]["iteration"]
    not_kit(data)(folder)


@pytest.mark.parametrize("forge", [
    lambda folder: edit(format="onnx")(folder, folder),
    not_kit({"a": 1}),
    not_kit([1, 2, 3]),
    no_iteration,
    not_kit({"model": [1.0], "progress": {"iteration": 2, "global_step": 8, "epoch": 2}}),
], ids=["unknown format", "a dict of other things", "a list", "progress without iteration",
        "model not a dict of tensors"])
def test_continue_falls_back_past_a_checkpoint_that_is_not_a_usable_kit_checkpoint(
    forge: Callable[[Path], None], kit_config: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoints = trained_run(kit_config)
    newest = checkpoints / "step-00000008"
    forge(newest)
    capsys.readouterr()
    resumed = kit.Trainer(kit_config(training={"iterations": 3}), mode="continue", autoload=False)
    resumed.run()
    assert resumed.status == "finished" and resumed.iteration == 3 and resumed.global_step == 12
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("kit: warning:")]
    assert line.startswith(f"kit: warning: skipping checkpoint {newest}")
    assert "checkpoint.format:" not in err  # the checkpoint is at fault, not the config
    assert "from step-00000004 (iteration 1, step 4)" in err


def test_a_format_that_is_registered_but_does_not_import_stops_the_run(kit_config: Any) -> None:
    checkpoints = trained_run(kit_config)
    edit(format="broken")(checkpoints / "step-00000008", checkpoints)
    broken = EntryPointSpec(group="kit.checkpoint_formats", name="broken", package="acme",
                            value="broken_plugin_mod:Format")
    registry = Registry([*Registry.from_environment().specs, broken])
    resumed = kit.Trainer(kit_config(training={"iterations": 3}), mode="continue", autoload=False,
                          registry=registry)
    with pytest.raises(PluginLoadError, match=r"plugin acme\[broken\] failed to load: ModuleNotFoundError"):
        resumed.run()
    assert [p.name for p in CheckpointStore(checkpoints, TorchFormat()).list()] == [
        "step-00000004", "step-00000008"]  # nothing was skipped, nothing was pruned
