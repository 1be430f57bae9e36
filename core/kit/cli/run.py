"""``kit run``: train, resume or evaluate, as the mode says."""

from __future__ import annotations

from pathlib import Path

import click

from kit.cli import CliState

__all__ = ["run"]


@click.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--mode", default="new", show_default=True,
              help="The trainer state to run: an entry point in kit.states.")
@click.option("--backend", default=None, help="Override the config's backend.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set training.iterations=5. Repeatable.")
@click.option("--run-dir", type=click.Path(path_type=Path), default=None,
              help="continue/auto/evaluate: the run to use (default: the experiment's latest).")
@click.option("--checkpoint", default=None, metavar="best|last|PATH",
              help="evaluate: the checkpoint to load (default: best if one was monitored, else last).")
@click.option("--allow-config-change", is_flag=True,
              help="continue: accept config changes that can break an exact resume.")
@click.option("--nproc-per-node", type=int, default=None, metavar="N",
              help="Start N processes on this machine through torchrun (backend ddp).")
@click.option("--nnodes", type=int, default=1, show_default=True, help="With --nproc-per-node: machines.")
@click.option("--node-rank", type=int, default=0, show_default=True,
              help="With --nnodes: this machine's rank, 0 to nnodes-1.")
@click.option("--rdzv-endpoint", default=None, metavar="HOST:PORT",
              help="With --nnodes: node 0's address, the same on every machine.")
@click.option("--rdzv-timeout", type=float, default=120.0, show_default=True, metavar="SECONDS",
              help="With --rdzv-endpoint: how long to wait for the other machines.")
@click.pass_obj
def run(state: CliState, config: Path, mode: str, backend: str | None,
        overrides: tuple[str, ...], run_dir: Path | None, checkpoint: str | None,
        allow_config_change: bool, nproc_per_node: int | None, nnodes: int, node_rank: int,
        rdzv_endpoint: str | None, rdzv_timeout: float) -> None:
    """Run CONFIG (YAML or TOML) in the given mode: new, continue, auto, evaluate, or a plugin's.

    SIGTERM, SIGINT and SIGUSR1 stop a run after the current step with a checkpoint saved
    (exit code 128+signal); `--mode continue` picks it up exactly there. `--mode auto`
    continues the latest run unless it finished, else starts a new one: the same command
    line for a job's first start and every requeue.

    `--nproc-per-node N` (with `backend: ddp`) hands the same command to torchrun, which
    starts N processes; `torchrun --nproc-per-node N -m kit run CONFIG` is the same.
    """
    from kit.errors import ConfigError

    if nproc_per_node is None and (nnodes != 1 or node_rank != 0 or rdzv_endpoint is not None):
        raise ConfigError("--nnodes, --node-rank and --rdzv-endpoint need --nproc-per-node",
                          key="--nproc-per-node", hint="add --nproc-per-node N (processes on this machine)")
    from kit.config import PluginConfig, load_config

    cfg = load_config(config, overrides)
    if nproc_per_node is not None:
        if (backend or cfg.backend.name) == "torch":
            raise ConfigError("backend torch runs one process", key="--nproc-per-node",
                              hint="set backend: ddp (or --set backend=ddp) to train on several")
        _hand_to_torchrun(nproc_per_node, nnodes, node_rank, rdzv_endpoint, rdzv_timeout)
    from kit.plugins import blame
    from kit.trainer import Trainer

    listed = {p.name for p in cfg.plugins}
    cfg.plugins = [*cfg.plugins, *(PluginConfig(name=n) for n in state.enabled if n not in listed)]
    blocked = [*state.blocked, "console"] if state.quiet else state.blocked
    trainer = Trainer(cfg, mode=mode, backend=backend, registry=state.registry,
                      blocked=blocked, run_dir=run_dir, checkpoint=checkpoint,
                      allow_config_change=allow_config_change)
    try:
        results = trainer.run()
    except Exception as exc:  # a plugin's failure is named with its hook, above its own frames
        blamed = blame(exc, trainer.pm)
        if blamed is None:
            raise
        raise blamed from exc
    if not trainer.trains and results and trainer.is_global_zero:  # evaluate: its results are its output
        from kit.states import format_results

        if trainer.last_checkpoint is not None:
            click.echo(f"{trainer.last_checkpoint.name} (iteration {trainer.iteration}, "
                       f"step {trainer.global_step})")
        click.echo(format_results(results))


def _hand_to_torchrun(nproc_per_node: int, nnodes: int, node_rank: int, rdzv_endpoint: str | None,
                      rdzv_timeout: float) -> None:
    """Check the launch, then replace this process with torchrun running the same command."""
    import os
    import sys

    from kit.launch import Launch, strip_launch_flags, torchrun_argv

    launch = Launch(nproc_per_node, nnodes, node_rank, rdzv_endpoint, rdzv_timeout)
    endpoint = launch.check()
    if endpoint is not None and node_rank != 0:
        launch.wait_for_endpoint(*endpoint)
    argv = torchrun_argv(launch, strip_launch_flags(sys.argv[1:]))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)
