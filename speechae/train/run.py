"""Entry point of one training process: experiment directory, logging, data, :class:`Trainer`.

``run_training`` is what ``speechae train`` calls in every process (one process, or each
torchrun worker).  It writes ``config.yaml`` and ``command.sh`` on the main rank, refuses to
resume an experiment whose stored config differs from the requested one (a silent change of
recipe half-way is the bug this prevents; pass ``allow_config_change`` to override), trains,
and returns the exit code documented in :mod:`speechae.train.faults`.
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import Sequence

import torch
import yaml

from speechae.config import ConfigError
from speechae.train.config import ExperimentConfig, dump_config
from speechae.train.distributed import DistEnv, barrier, cleanup_distributed, init_distributed
from speechae.train.logger import add_file_handler
from speechae.train.trainer import Trainer, build_dataloaders
from speechae.utils.io import atomic_path
from speechae.utils.logging import setup_logging

log = logging.getLogger("speechae.train")


def write_experiment_files(cfg: ExperimentConfig, exp_dir: Path, command: Sequence[str],
                           allow_config_change: bool = False) -> None:
    """Write ``config.yaml`` (resolved) and ``command.sh``; check a resumed config matches."""
    exp_dir.mkdir(parents=True, exist_ok=True)
    text = dump_config(cfg)
    cfg_path = exp_dir / "config.yaml"
    if cfg_path.is_file() and (exp_dir / "checkpoints").is_dir():
        old = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
        if old != yaml.safe_load(text):
            changed = sorted(_diff_keys(old, yaml.safe_load(text)))
            if not allow_config_change:
                raise ConfigError(f"{cfg_path}: the experiment exists with a different config (changed: "
                                  f"{', '.join(changed)}); use a new --exp-dir or --allow-config-change")
            log.warning("resuming with a changed config: %s", ", ".join(changed))
    with atomic_path(cfg_path) as tmp:
        tmp.write_text(text, encoding="utf-8")
        tmp.chmod(0o644)
    script = "#!/usr/bin/env bash\n# Re-runs (and resumes) this experiment.\ncd " + shlex.quote(str(Path.cwd())) + \
        "\n" + " ".join(shlex.quote(c) for c in command) + "\n"
    with atomic_path(exp_dir / "command.sh") as tmp:
        tmp.write_text(script, encoding="utf-8")
        tmp.chmod(0o755)


def _diff_keys(a: object, b: object, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in set(a) | set(b):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def run_training(cfg: ExperimentConfig, exp_dir: str | Path, command: Sequence[str] = (),
                 allow_config_change: bool = False, env: DistEnv | None = None) -> int:
    """Train ``cfg`` in ``exp_dir`` in this process (DDP when torchrun variables are set)."""
    setup_logging()
    exp_dir = Path(exp_dir)
    if cfg.train.num_threads > 0:
        torch.set_num_threads(cfg.train.num_threads)
    own_group = env is None
    env = env or init_distributed(cfg.train.device, cfg.train.ddp_backend)
    if not env.is_main:  # progress lines come from rank 0; other ranks report problems only
        logging.getLogger().setLevel(logging.WARNING)
    handler = None
    try:
        if env.is_main:
            write_experiment_files(cfg, exp_dir, command, allow_config_change)
            handler = add_file_handler(exp_dir / "log" / "train.log")
            log.info("experiment %s: world size %d, device %s", exp_dir, env.world_size, env.device)
        barrier(env)
        train_dl, valid_dl, _ = build_dataloaders(cfg, env)
        trainer = Trainer(cfg, exp_dir, env, train_dl, valid_dl)
        if env.is_main:
            n = sum(p.numel() for p in trainer.model.parameters())
            h = sum(p.numel() for p in trainer.composer.parameters())
            log.info("model: %.2fM parameters (+%.2fM in objective heads)", n / 1e6, h / 1e6)
        return trainer.fit()
    finally:
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()
        if own_group:
            cleanup_distributed()
