"""Test dummies for training (shipped in the package so tests and benchmarks share them)."""

from __future__ import annotations

from typing import Any

from speechae.config import deep_merge

# A ~0.5M-parameter variant of the tiny preset: a training step on ~10 s of audio takes about
# 0.3 s on one CPU thread.
SMALL_MODEL: dict[str, Any] = {
    "preset": "tiny",
    "encoder": {"dims": [32, 32, 48, 48, 48, 32], "ff_dims": [64, 64, 96, 96, 96, 64], "pos_dim": 8},
    "decoder": {"dim": 48, "ff_dim": 96, "up_dim": 32},
    "bottleneck": {"kind": "deterministic", "latent_dim": 8, "norm": "none"},
}


def small_experiment(train_cuts: str, dev_cuts: str, lang_dir: str, num_units: int = 8,
                     **overrides: Any) -> dict[str, Any]:
    """A fast experiment config (plain dict) on a tiny corpus; ``overrides`` are merged per block."""
    base = {
        "model": SMALL_MODEL,
        "losses": {"regularizer": "sigreg", "semantic": ["masked_units"],
                   "masked_units": {"num_classes": num_units, "proj_dim": 16},
                   "sigreg": {"num_directions": 32, "num_frames": 256},
                   "weights": {"recon": 1.0, "sigreg": 0.05, "masked_units": 0.5}},
        "optim": {"name": "adamw", "lr": 2e-3, "scheduler": "warmup_cosine", "warmup_batches": 2,
                  "total_batches": 50},
        "data": {"train_cuts": str(train_cuts), "dev_cuts": str(dev_cuts), "lang_dir": str(lang_dir),
                 "max_duration": 10.0, "num_buckets": 2},
        "train": {"max_steps": 6, "log_every": 1, "valid_every": 3, "save_every": 3, "keep_last_k": 2,
                  "average_every": 2, "valid_max_batches": 2, "num_threads": 1, "seed": 7},
    }
    return deep_merge(base, overrides)


def equal_length_batches(loader: Any, num_batches: int, batch_size: int) -> list[dict[str, Any]]:
    """``num_batches`` batches of ``batch_size`` utterances from ``loader``, all cropped to one
    common length (features/feature_lens only), so that any split of a batch by rows has
    exactly proportional frames: per-frame losses of the halves then average exactly."""
    import torch

    utts = []
    for batch in loader:
        for x, n in zip(batch["features"], batch["feature_lens"].tolist()):
            utts.append(x[:n])
        if len(utts) >= num_batches * batch_size:
            break
    need = num_batches * batch_size
    if len(utts) < need:
        raise ValueError(f"loader has {len(utts)} utterances, need {need}")
    n = min(len(u) for u in utts[:need])
    feats = torch.stack([u[:n] for u in utts[:need]]).view(num_batches, batch_size, n, -1)
    lens = torch.full((batch_size,), n, dtype=torch.int64)
    return [{"features": f.clone(), "feature_lens": lens.clone()} for f in feats]


def ddp_equivalence_worker(rank: int, world_size: int, port: int, cfg_dict: dict[str, Any],
                           batches: list[dict[str, Any]], out_path: str) -> None:
    """Train on ``batches`` (global batches, split by rows across ranks) and save the per-step
    mean loss over ranks, the first step's gradients and the final weights to ``out_path``.  Used with
    ``torch.multiprocessing.spawn`` (gloo) and directly with ``world_size=1``."""
    import os

    import torch
    import torch.distributed as dist

    from speechae.models.scaling import iter_scheduled_floats
    from speechae.models.testing import no_skipping
    from speechae.train.config import experiment_config_from_dict
    from speechae.train.distributed import DistEnv
    from speechae.train.trainer import Trainer

    torch.set_num_threads(1)
    if world_size > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        cfg = experiment_config_from_dict(cfg_dict)
        trainer = Trainer(cfg, os.path.dirname(out_path), DistEnv(rank=rank, world_size=world_size))
        no_skipping(trainer.model)
        # Balancer / Whiten act on per-rank batch statistics and random draws (as in icefall), so
        # their gradients legitimately differ between a half and a whole batch: switch them off.
        for sf in iter_scheduled_floats(trainer.model):
            if sf.name.endswith(".prob"):
                sf.override = 0.0
        losses, grads = [], {}
        for b in batches:
            rows = slice(rank * len(b["features"]) // world_size, (rank + 1) * len(b["features"]) // world_size)
            metrics = trainer.train_step({k: v[rows] for k, v in b.items()})
            value = torch.tensor([metrics["loss/recon"], metrics["loss/sigreg"]], dtype=torch.float64)
            if world_size > 1:
                dist.all_reduce(value)
                value /= world_size
            losses.append(value.tolist())
            if not grads:  # gradients of the first step (after DDP's averaging)
                grads = {n: p.grad.clone() for n, p in trainer.module.named_parameters() if p.grad is not None}
        if rank == 0:
            torch.save({"losses": losses, "grads": grads, "model": trainer.model.state_dict()}, out_path)
    finally:
        if world_size > 1:
            dist.destroy_process_group()
