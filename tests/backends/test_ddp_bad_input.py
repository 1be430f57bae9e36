"""Bad input around ddp and the launch options: one ``Error:`` line, exit 2, nothing started."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest
from clitools import kit, kit_process, one_error_line


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(("args", "expected"), [
    (["--nproc-per-node", "0"], "--nproc-per-node: 0 processes per node (give 1 or more)"),
    (["--nproc-per-node", "1", "--nnodes", "0"], "--nnodes: 0 nodes"),
    (["--nproc-per-node", "1", "--nnodes", "2"], "--rdzv-endpoint: 2 nodes need a rendezvous endpoint"),
    (["--nproc-per-node", "1", "--nnodes", "2", "--node-rank", "2", "--rdzv-endpoint", "127.0.0.1:29500"],
     "--node-rank: node rank 2 with 2 node(s) (give 0 to 1)"),
    (["--nproc-per-node", "1", "--nnodes", "2", "--rdzv-endpoint", "no-port"], "is not HOST:PORT"),
    (["--nproc-per-node", "1", "--nnodes", "2", "--rdzv-endpoint", "127.0.0.1:99999"], "is not HOST:PORT"),
    (["--nproc-per-node", "1", "--nnodes", "2", "--rdzv-endpoint", "no.such.host.invalid:29500"],
     "cannot resolve 'no.such.host.invalid'"),
    (["--nproc-per-node", "1", "--rdzv-timeout", "0", "--nnodes", "2", "--rdzv-endpoint", "127.0.0.1:1"],
     "--rdzv-timeout: 0"),
    (["--nnodes", "2"], "need --nproc-per-node"),
    (["--rdzv-endpoint", "127.0.0.1:29500"], "need --nproc-per-node"),
])
def test_launch_options(write_config: Any, args: list[str], expected: str) -> None:
    result = kit("run", str(write_config(backend="ddp")), *args)
    one_error_line(result, expected)


def test_launching_several_processes_of_a_one_process_backend(write_config: Any) -> None:
    result = kit("run", str(write_config()), "--nproc-per-node", "2")
    one_error_line(result, "--nproc-per-node: backend torch runs one process (set backend: ddp")


def test_an_endpoint_nobody_answers_on_is_one_line_after_the_wait(write_config: Any, tmp_path: Path) -> None:
    started = time.monotonic()
    result = kit_process("run", str(write_config(backend="ddp")), "--nproc-per-node", "1", "--nnodes", "2",
                         "--node-rank", "1", "--rdzv-endpoint", f"127.0.0.1:{free_port()}",
                         "--rdzv-timeout", "1.5", cwd=tmp_path)
    one_error_line(result, "--rdzv-endpoint: nothing answers at 127.0.0.1:")
    assert 1.5 <= time.monotonic() - started < 30
    assert not (tmp_path / "runs").exists()


def test_already_under_torchrun(write_config: Any, tmp_path: Path) -> None:
    result = kit_process("run", str(write_config(backend="ddp")), "--nproc-per-node", "2", cwd=tmp_path,
                         env={"TORCHELASTIC_RUN_ID": "x"})
    one_error_line(result, "started by torchrun already")


@pytest.mark.parametrize(("backend", "expected"), [
    ({"ddp": {"timeout_s": -1}}, "backend.ddp.timeout_s: "),
    ({"ddp": {"bogus": 1}}, "backend.ddp.bogus: "),
    ({"ddp": {"process_group_backend": "mpi"}}, "backend.ddp.process_group_backend: "),
    ({"torch": {"timeout_s": 5}}, "backend.torch takes no options"),
    ({"jax": {}}, "backend: unknown backend 'jax'"),
])
def test_backend_options_are_validated(write_config: Any, tmp_path: Path, backend: Any,
                                       expected: str) -> None:
    result = kit("run", str(write_config(backend=backend)))
    one_error_line(result, expected)
    assert not (tmp_path / "runs").exists()


def test_a_one_process_backend_under_several_processes_is_refused(write_config: Any, tmp_path: Path) -> None:
    result = kit_process("run", str(write_config()), cwd=tmp_path, env={"WORLD_SIZE": "2", "RANK": "0"})
    one_error_line(result, "backend: backend torch runs one process, but 2 were started (torchrun) "
                           "(set backend: ddp, or launch one process)")
    assert not (tmp_path / "runs").exists()


def test_ddp_names_the_device_it_cannot_honour(write_config: Any, tmp_path: Path) -> None:
    result = kit_process("run", str(write_config(backend="ddp", training={"device": "cuda:1"})), cwd=tmp_path,
                         env={"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"})
    one_error_line(result, "training.device: under ddp each process trains on cuda:LOCAL_RANK")


def test_ddp_outside_torchrun_is_one_process_said_once(write_config: Any, tmp_path: Path) -> None:
    result = kit_process("run", str(write_config(backend="ddp")), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("backend ddp outside torchrun: one process") == 1
