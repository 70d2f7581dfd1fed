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
