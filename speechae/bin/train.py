"""``speechae train`` and ``speechae average``: thin wrappers over speechae.train."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import click

_COMMAND_ENV = "SPEECHAE_TRAIN_COMMAND"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--exp-dir", required=True, type=click.Path(file_okay=False), help="experiment directory")
@click.option("--world-size", type=int, default=None,
              help="processes on this node: re-executes under torchrun (CPU: gloo, GPU: nccl)")
@click.option("--allow-config-change", is_flag=True,
              help="resume even if the config differs from the stored one in more than run-length and "
                   "logging settings (train.max_steps, log/valid/save intervals, num_threads, ...)")
@click.option("--print-config", is_flag=True, help="print the resolved config and exit")
def train(config: str, overrides: tuple[str, ...], exp_dir: str, world_size: int | None,
          allow_config_change: bool, print_config: bool) -> None:
    """Train CONFIG.yaml with optional key=value OVERRIDES (e.g. train.max_steps=100).

    Re-running the same command resumes from the newest valid checkpoint in EXP_DIR; one run
    at a time may use EXP_DIR (it is locked).  Multi-node: launch with torchrun yourself (see
    tools/slurm_train.sbatch).  Exit codes: 0 done, 1 error, 2 bad config or input / EXP_DIR in
    use, 3 too many non-finite steps, 75 stopped by SIGTERM/SIGINT (re-run to resume).
    """
    # First, before the heavy imports: a pre-empted job must exit 75 ("try again") at any moment.
    from speechae.train.faults import exit_on_signal_during_startup

    exit_on_signal_during_startup()
    from speechae.train.config import dump_config, load_experiment_config

    cfg = load_experiment_config(config, overrides)
    if print_config:
        click.echo(dump_config(cfg), nl=False)
        return
    command = os.environ.get(_COMMAND_ENV) or shlex.join(["speechae", "train", *sys.argv[2:]])
    if world_size is not None and world_size > 1 and "WORLD_SIZE" not in os.environ:
        from speechae.train.distributed import torchrun_argv

        argv = ["train", config, *overrides, "--exp-dir", exp_dir]
        if allow_config_change:
            argv.append("--allow-config-change")
        os.environ[_COMMAND_ENV] = command
        cmd = torchrun_argv(world_size, argv)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(cmd[0], cmd)  # torchrun forwards SIGTERM/SIGINT to the workers
    from speechae.train.run import run_training

    code = run_training(cfg, exp_dir, shlex.split(command), allow_config_change=allow_config_change)
    sys.exit(code)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--last", type=int, default=5, show_default=True,
              help="with an experiment/checkpoints directory: average its newest N checkpoints")
@click.option("--use-averaged/--plain", default=True, show_default=True,
              help="use the running averages stored at the first and last checkpoint (icefall "
                   "--use-averaged-model) instead of a plain mean of the checkpoints' weights")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="output .pt file")
def average(inputs: tuple[str, ...], last: int, use_averaged: bool, out_path: str) -> None:
    """Average model weights of checkpoints (files, or the newest --last of an exp dir)."""
    from speechae.train.checkpoint import average_checkpoints, list_checkpoints, save_checkpoint

    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            inner = item / "checkpoints" if (item / "checkpoints").is_dir() else item
            paths += [p for _, p in list_checkpoints(inner)[-last:]]
        else:
            paths.append(item)
    if not paths:
        raise click.ClickException(f"no checkpoints found in {', '.join(inputs)}")
    if use_averaged and len(paths) < 2:
        raise click.ClickException("--use-averaged needs at least two checkpoints (or pass --plain)")
    result = average_checkpoints(paths, use_averaged=use_averaged)
    save_checkpoint(out_path, result)
    click.echo(f"averaged {len(paths)} checkpoints ({'running averages' if use_averaged else 'plain'}) "
               f"-> {out_path}")
