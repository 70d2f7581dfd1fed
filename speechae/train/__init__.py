"""Training: experiment config, the loop (:class:`Trainer`), checkpoints, DDP and logging.

Public API: :class:`ExperimentConfig` / :class:`TrainConfig` with
:func:`load_experiment_config`; :func:`run_training` (one process of ``speechae train``);
:class:`Trainer`; :func:`load_model_from_checkpoint` and :func:`average_checkpoints` for the
evaluation stage.  Importing this package is light: heavy modules load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ExperimentConfig": "speechae.train.config", "TrainConfig": "speechae.train.config",
    "load_experiment_config": "speechae.train.config", "experiment_config_from_dict": "speechae.train.config",
    "load_model_from_checkpoint": "speechae.train.checkpoint", "average_checkpoints": "speechae.train.checkpoint",
    "load_checkpoint": "speechae.train.checkpoint", "latest_checkpoint": "speechae.train.checkpoint",
    "Trainer": "speechae.train.trainer", "run_training": "speechae.train.run",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'speechae.train' has no attribute {name!r}")
