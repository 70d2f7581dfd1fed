"""The uniwav task in the generic loop: its config parses (and every recipe's uniwav arm), the
masked-prediction loss falls in a short run, resume is bit-identical (student, heads and
codebooks, EMA teacher, running average), and evaluation rebuilds the model from a checkpoint
with the interface ModelEncoder uses."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from speechae.config import ConfigError, deep_merge
from speechae.eval.encoders import ModelEncoder, Utterance
from speechae.models.uniwav import UniWav
from speechae.train.checkpoint import load_checkpoint, load_model_from_checkpoint
from speechae.train.config import experiment_config_from_dict, load_experiment_config
from speechae.train.distributed import DistEnv
from speechae.train.faults import EXIT_OK
from speechae.train.trainer import Trainer, build_dataloaders
from speechae.train.uniwav_task import UniWavExperimentConfig, UniWavTask

REPO = Path(__file__).resolve().parents[2]
SMALL = {"preset": "tiny",
         "encoder": {"dims": [32, 32, 48, 48, 48, 32], "ff_dims": [64, 64, 96, 96, 96, 64], "pos_dim": 8},
         "decoder": {"dim": 32, "num_blocks": 2, "ff_dim": 64, "nfe": 2}}


def _config(make_config, **blocks: Any) -> UniWavExperimentConfig:
    base = make_config()
    cfg = {"task": "uniwav", "model": SMALL,
           "losses": {"masked_units": {"num_classes": 8, "top_k": 2},
                      "teacher": {"decay_start": 0.9, "decay_end": 0.99, "decay_steps": 10}},
           "optim": {"name": "adamw", "lr": 2e-3, "scheduler": "warmup_cosine", "warmup_batches": 2,
                     "total_batches": 60},
           "data": base["data"],
           "train": {"max_steps": 6, "save_every": 3, "valid_every": 3, "log_every": 1, "average_every": 2,
                     "tensorboard": False, "num_threads": 1, "seed": 3, "valid_max_batches": 1}}
    return experiment_config_from_dict(deep_merge(cfg, blocks))


def _trainer(cfg: UniWavExperimentConfig, exp: Path) -> Trainer:
    env = DistEnv()
    train_dl, valid_dl, _ = build_dataloaders(cfg, env)
    return Trainer(cfg, exp, env, train_dl, valid_dl)


@pytest.mark.parametrize("recipe", ["mini", "librispeech", "bengali", "hindi"])
def test_every_recipe_has_a_uniwav_arm_that_parses(recipe: str) -> None:
    cfg = load_experiment_config(REPO / f"egs/{recipe}/ae/conf/arms/uniwav.yaml",
                                 ["model.preset=tiny", "losses.masked_units.num_classes=50", "train.seed=1"])
    assert isinstance(cfg, UniWavExperimentConfig) and cfg.losses.masked_units.num_classes == 50


def test_config_rejects_unknown_weight_terms(make_config) -> None:
    with pytest.raises(ConfigError, match="recon"):
        _config(make_config, losses={"weights": {"recon": 1.0}})


def test_tiny_parameter_count_matches_the_autoencoder_arms() -> None:
    from speechae.models import build_model
    from speechae.models.uniwav import build_uniwav

    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    ae = n(build_model({"preset": "tiny", "bottleneck": {"kind": "deterministic", "latent_dim": 32}}))
    assert abs(n(build_uniwav({"preset": "tiny"})) - ae) / ae < 0.01


def test_masked_prediction_loss_falls_in_a_short_run(tmp_path: Path, make_config) -> None:
    cfg = _config(make_config, train={"max_steps": 36, "valid_every": 0, "save_every": 36}, optim={"lr": 5e-3})
    trainer = _trainer(cfg, tmp_path / "exp")
    units, flows = [], []
    for _ in range(cfg.train.max_steps):
        m = trainer.train_step(trainer.next_batch())
        units.append(m["loss/masked_units"])
        flows.append(m["loss/flow"])
        assert m["train/skipped"] == 0
    # starts near log(V) (uniform over 8 codewords); falls below it as the heads learn the codes
    first, last = np.mean(units[:6]), np.mean(units[-6:])
    assert first > math.log(8) - 0.2 and last < first - 0.15, (first, last)
    assert np.mean(flows[-6:]) < np.mean(flows[:6])
    assert 0.9 < m["train/teacher_decay"] <= 0.99


def test_teacher_follows_the_student_by_ema(tmp_path: Path, make_config) -> None:
    cfg = _config(make_config, train={"max_steps": 1, "valid_every": 0})
    trainer = _trainer(cfg, tmp_path / "exp")
    task: UniWavTask = trainer.task
    before_t = {k: v.clone() for k, v in task.teacher.state_dict().items()}
    trainer.train_step(trainer.next_batch())
    d = 0.9 + (0.99 - 0.9) * 1 / 10  # teacher_decay(step 1)
    after_s = task.model.encoder.state_dict()
    for k, v in task.teacher.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, d * before_t[k] + (1 - d) * after_s[k], msg=k)
    assert not any(p.requires_grad for p in task.teacher.parameters())
    assert "teacher" not in task.optimizers


def test_resume_is_exact(tmp_path: Path, make_config) -> None:
    cfg = _config(make_config)
    straight = _trainer(cfg, tmp_path / "straight")
    assert straight.fit() == EXIT_OK
    half = _trainer(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_steps=3)), tmp_path / "resumed")
    assert half.fit() == EXIT_OK
    resumed = _trainer(cfg, tmp_path / "resumed")
    assert resumed.fit() == EXIT_OK and resumed.step == 6
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "resumed")
    assert a["task"] == "uniwav" and set(a["modules"]) == {"model", "losses", "teacher"}
    for name in ("model", "losses", "teacher"):
        for k, v in a["modules"][name].items():
            torch.testing.assert_close(b["modules"][name][k], v, atol=0, rtol=0, msg=f"{name}.{k}")
    for k, v in a["model_avg"].items():
        torch.testing.assert_close(b["model_avg"][k], v, atol=0, rtol=0)


def test_evaluation_rebuilds_the_model_from_a_checkpoint(tmp_path: Path, make_config, tiny_data) -> None:
    cfg = _config(make_config, train={"max_steps": 2, "save_every": 2, "valid_every": 2})
    assert _trainer(cfg, tmp_path / "exp").fit() == EXIT_OK
    model, config = load_model_from_checkpoint(tmp_path / "exp")
    assert isinstance(model, UniWav) and config["task"] == "uniwav" and not model.training
    rng = np.random.default_rng(0)
    utts = [Utterance(f"u{i}", rng.standard_normal((n, 80)).astype(np.float32) - 5) for i, n in enumerate((97, 60))]
    enc = ModelEncoder(model, stacks=True).encode(utts, with_recon=True)
    assert enc.frame_rate == 25.0 and [f.shape for f in enc.feats] == [(25, 48), (15, 48)]
    assert [r.shape for r in enc.recon] == [(97, 80), (60, 80)] and all(np.isfinite(r).all() for r in enc.recon)
    assert len(enc.stacks) == 6
    # the probe features are the same through encode() and through forward()
    plain = ModelEncoder(model).encode(utts)
    np.testing.assert_allclose(plain.feats[0], enc.feats[0], atol=1e-5)
    from speechae.eval.pipeline import make_baseline

    base = make_baseline("random_init", config["model"], 0, "cpu", config["task"])
    assert isinstance(base.model, UniWav)
