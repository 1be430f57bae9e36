"""A real third-party package, pip-installed into a fresh virtual environment.

The venv sees the current environment's packages (kit, torch) through a .pth file,
so nothing is downloaded; the example plugin is built and installed offline.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=False).create(root)  # the parent's pip installs into it (--python)
    python = root / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # addsitedir (not a bare path) so the parent's own .pth files, editable installs
    # included, are processed too
    parents = dict.fromkeys([sysconfig.get_paths()["purelib"], *site.getsitepackages()])
    (Path(purelib) / "_parent_env.pth").write_text(
        "".join(f"import site; site.addsitedir({p!r})\n" for p in parents))
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
         "--no-build-isolation", "--no-index", str(HERE / "example_plugin")],
        check=True, capture_output=True, text=True,
    )
    return python


def kit(python: Path, *args: str, cwd: Path, **extra_env: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KIT_DISABLE_PLUGIN_AUTOLOAD"}
    env.update(COLUMNS="200", PYTHONPATH=str(TESTS), **extra_env)
    return subprocess.run([str(python), "-m", "kit", *args], capture_output=True, text=True,
                          cwd=cwd, env=env)


def test_plugins_list_finds_the_installed_package(env_python: Path, tmp_path: Path) -> None:
    result = kit(env_python, "plugins", "list", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {(r["group"], r["name"]): r for r in map(json.loads, result.stdout.splitlines())}
    for key in (("kit.loggers", "lines"), ("kit.plugins", "step-counter"), ("kit.states", "finetune")):
        assert rows[key]["package"] == "kit-example-plugin"
        assert rows[key]["version"] == "0.3.0"
        assert rows[key]["status"] == "ok"
    assert rows[("kit.states", "new")]["package"] == "kit-trainer"


def test_kit_run_uses_the_plugin_and_its_logger(env_python: Path, tmp_path: Path) -> None:
    sys.path.insert(0, str(TESTS))
    from conftest import base_config

    config = base_config(tmp_path, loggers=["jsonl", {"lines": {"filename": "out.txt"}}])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = kit(env_python, "run", "config.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "runs" / "tiny").iterdir()
    lines = (run_dir / "out.txt").read_text().splitlines()
    assert any(line.startswith("val/accuracy ") for line in lines)
    assert lines[-1] == "example/steps_counted 8 8"  # 2 epochs x 4 batches, autoloaded
    assert json.loads((run_dir / "step-counter.json").read_text()) == {"steps": 8}


def test_the_plugin_resumes_its_state_and_adds_a_mode(env_python: Path, tmp_path: Path) -> None:
    sys.path.insert(0, str(TESTS))
    from conftest import base_config

    (tmp_path / "config.yaml").write_text(yaml.safe_dump(base_config(tmp_path)))
    assert kit(env_python, "run", "config.yaml", cwd=tmp_path).returncode == 0
    (run_dir,) = (tmp_path / "runs" / "tiny").iterdir()
    more = kit(env_python, "run", "config.yaml", "--mode", "continue", "--set", "training.iterations=3",
               cwd=tmp_path)
    assert more.returncode == 0, more.stderr
    assert json.loads((run_dir / "step-counter.json").read_text()) == {"steps": 12}  # 8 restored + 4

    source = run_dir / "checkpoints" / "step-00000012"
    tuned = kit(env_python, "run", "config.yaml", "--mode", "finetune", "--checkpoint", str(source),
                cwd=tmp_path)
    assert tuned.returncode == 0, tuned.stderr
    assert f"finetuning from {source}" in tuned.stderr
    new_run = max((tmp_path / "runs" / "tiny").iterdir())
    assert new_run != run_dir
    assert json.loads((new_run / "summary.json").read_text())["mode"] == "finetune"
    refused = kit(env_python, "run", "config.yaml", "--mode", "finetune", cwd=tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.startswith("Error: --checkpoint: finetune needs a checkpoint folder")
    assert len(list((tmp_path / "runs" / "tiny").iterdir())) == 2  # no run directory left behind


@pytest.mark.parametrize(("flags", "env", "loaded"), [
    (["-p", "no:step-counter"], {}, False),
    ([], {"KIT_DISABLE_PLUGIN_AUTOLOAD": "1"}, False),
    (["-p", "step-counter"], {"KIT_DISABLE_PLUGIN_AUTOLOAD": "1"}, True),
])
def test_autoload_can_be_blocked_or_disabled(
    env_python: Path, tmp_path: Path, flags: list[str], env: dict[str, str], loaded: bool
) -> None:
    sys.path.insert(0, str(TESTS))
    from conftest import base_config

    (tmp_path / "config.yaml").write_text(yaml.safe_dump(base_config(tmp_path)))
    result = kit(env_python, *flags, "run", "config.yaml", cwd=tmp_path, **env)
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "runs" / "tiny").iterdir()
    assert (run_dir / "step-counter.json").exists() == loaded
