"""``kit run CFG --nproc-per-node N``: hand the run to torchrun, checked first.

kit has no launcher of its own: this builds the ``python -m torch.distributed.run`` line
that starts ``kit run`` in every process, after checking what torchrun would otherwise
report with a traceback or a ten-minute wait (a process count of 0, a node rank out of
range, an endpoint nobody answers on).
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from kit.errors import ConfigError

__all__ = ["Launch", "torchrun_argv"]

LAUNCH_FLAGS = ("--nproc-per-node", "--nnodes", "--node-rank", "--rdzv-endpoint", "--rdzv-timeout")


@dataclass(frozen=True)
class Launch:
    """What ``kit run`` was asked to start."""

    nproc_per_node: int
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str | None = None
    rdzv_timeout: float = 120.0

    def check(self) -> tuple[str, int] | None:
        """Refuse what torchrun would fail on; the endpoint as (host, port), when one is given."""
        if os.environ.get("TORCHELASTIC_RUN_ID") or os.environ.get("LOCAL_RANK"):
            raise ConfigError("this process was started by torchrun already", key="--nproc-per-node",
                              hint="drop --nproc-per-node: torchrun's own options decide the processes")
        if self.nproc_per_node < 1:
            raise ConfigError(f"{self.nproc_per_node} processes per node", key="--nproc-per-node",
                              hint="give 1 or more")
        if self.nnodes < 1:
            raise ConfigError(f"{self.nnodes} nodes", key="--nnodes", hint="give 1 or more")
        if not 0 <= self.node_rank < self.nnodes:
            raise ConfigError(f"node rank {self.node_rank} with {self.nnodes} node(s)", key="--node-rank",
                              hint=f"give 0 to {self.nnodes - 1}")
        if self.rdzv_timeout <= 0:
            raise ConfigError(f"{self.rdzv_timeout} seconds", key="--rdzv-timeout", hint="give more than 0")
        if self.rdzv_endpoint is None:
            if self.nnodes > 1:
                raise ConfigError(
                    f"{self.nnodes} nodes need a rendezvous endpoint", key="--rdzv-endpoint",
                    hint="pass --rdzv-endpoint HOST:PORT, the same on every node (node 0's address)")
            return None
        host, sep, port = self.rdzv_endpoint.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{self.rdzv_endpoint!r} is not HOST:PORT", key="--rdzv-endpoint",
                              hint="e.g. --rdzv-endpoint node0.cluster:29500")
        try:
            socket.getaddrinfo(host, int(port))
        except OSError as exc:
            raise ConfigError(f"cannot resolve {host!r}: {exc.strerror or exc}", key="--rdzv-endpoint",
                              hint="check the host name") from None
        return host.strip("[]"), int(port)

    def wait_for_endpoint(self, host: str, port: int) -> None:
        """On a node other than 0: wait (bounded) until node 0's rendezvous answers."""
        deadline = time.monotonic() + self.rdzv_timeout
        while True:
            try:
                with socket.create_connection((host, port), timeout=min(5.0, self.rdzv_timeout)):
                    return
            except OSError as exc:
                if time.monotonic() >= deadline:
                    raise ConfigError(
                        f"nothing answers at {host}:{port} after {self.rdzv_timeout:g} s "
                        f"({exc.strerror or exc})", key="--rdzv-endpoint",
                        hint="start node rank 0 first, and check the host, the port and the firewall "
                             "(--rdzv-timeout sets the wait)") from None
                time.sleep(0.5)


def torchrun_argv(launch: Launch, kit_args: Sequence[str]) -> list[str]:
    """The command that starts ``kit <kit_args>`` in every process of ``launch``."""
    argv = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={launch.nproc_per_node}",
            f"--nnodes={launch.nnodes}"]
    if launch.rdzv_endpoint is None:
        argv.append("--standalone")  # one node: a free local port, nothing to configure
    else:
        argv += [f"--node-rank={launch.node_rank}", f"--rdzv-endpoint={launch.rdzv_endpoint}",
                 f"--rdzv-conf=timeout={int(launch.rdzv_timeout)}"]
    return [*argv, "-m", "kit", *kit_args]


def strip_launch_flags(args: Sequence[str]) -> list[str]:
    """``args`` without kit's launch options (``--nproc-per-node 2`` and ``--nproc-per-node=2``)."""
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in LAUNCH_FLAGS:
            skip = "=" not in arg
            continue
        out.append(arg)
    return out
