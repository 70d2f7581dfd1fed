"""The EMA-teacher masked prediction (``ema_codebook``) as a semantic objective of an
autoencoder arm: the teacher is the arm's own encoder, moves by the hand-computed EMA after each
update, lives in the checkpoint, and only masked frames carry loss."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch

from speechae.config import from_dict
from speechae.losses import LossConfig, build_losses
from speechae.losses.semantic import SemanticInputs
from speechae.models import build_model
from speechae.train.checkpoint import load_checkpoint
from speechae.train.config import experiment_config_from_dict
from speechae.train.distributed import DistEnv
from speechae.train.faults import EXIT_OK
from speechae.train.trainer import Trainer, build_dataloaders

OPTS = {"codebook_size": 8, "top_k": 2, "decay_start": 0.9, "decay_end": 0.99, "decay_steps": 4}


def _objective(model):  # noqa: ANN001, ANN202
    comp = build_losses(from_dict(LossConfig, {"regularizer": "none", "semantic": ["ema_codebook"],
                                               "options": {"ema_codebook": OPTS}}), model.bottleneck.latent_dim)
    obj = comp.objectives["ema_codebook"]
    obj.attach(model)
    return comp, obj


def test_teacher_is_a_frozen_copy_that_moves_by_the_ema() -> None:
    torch.manual_seed(0)
    model = build_model({"preset": "tiny", "bottleneck": {"kind": "deterministic", "latent_dim": 8}})
    comp, obj = _objective(model)
    name, w = next(iter(model.encoder.named_parameters()))
    t0 = dict(obj.teacher.named_parameters())[name].detach().clone()
    assert torch.equal(t0, w) and not any(p.requires_grad for p in obj.teacher.parameters())
    assert any(k.startswith("objectives.ema_codebook.teacher.") for k in comp.state_dict())
    with torch.no_grad():
        w.add_(1.0)
    decay = obj.after_update(0, model)  # step 1 of a 4-step ramp from 0.9 to 0.99
    assert decay == 0.9 + (0.99 - 0.9) * 1 / 4
    torch.testing.assert_close(dict(obj.teacher.named_parameters())[name], decay * t0 + (1 - decay) * w)
    comp.train()
    assert comp.training and not obj.teacher.training  # the teacher always runs in eval mode


def test_only_masked_latent_frames_carry_loss() -> None:
    torch.manual_seed(0)
    model = build_model({"preset": "tiny", "bottleneck": {"kind": "deterministic", "latent_dim": 8}})
    _, obj = _objective(model)
    obj.eval()  # codebooks fixed
    feats, lens = torch.randn(2, 80, 80), torch.tensor([80, 64])
    z = torch.randn(2, 20, 8)
    mask = torch.zeros(2, 20, dtype=torch.bool)
    mask[:, 5:12] = True
    inp = SemanticInputs(z, torch.tensor([20, 16]), {"features": feats, "feature_lens": lens}, 4.0, mask)
    loss, metrics = obj(inp)
    z2 = z.clone()
    z2[~mask] = torch.randn(int((~mask).sum()), 8)  # unmasked frames changed
    loss2, _ = obj(dataclasses.replace(inp, z=z2))
    assert metrics["ema_codebook/masked_frames"] == 14 and torch.equal(loss, loss2)


def test_an_arm_with_the_objective_trains_and_resumes_exactly(tmp_path: Path, make_config) -> None:
    losses = {"semantic": ["ema_codebook"], "weights": {"masked_units": 0, "ema_codebook": 1.0},
              "options": {"ema_codebook": OPTS}}

    def trainer(exp: Path, steps: int) -> Trainer:
        cfg = experiment_config_from_dict(make_config(losses=losses, train={"max_steps": steps, "valid_every": 0,
                                                                            "tensorboard": False}))
        env = DistEnv()
        train_dl, _, _ = build_dataloaders(cfg, env)
        return Trainer(cfg, exp, env, train_dl, None)

    straight = trainer(tmp_path / "a", 6)
    teacher0 = {k: v.clone() for k, v in straight.composer.objectives["ema_codebook"].teacher.state_dict().items()}
    assert straight.fit() == EXIT_OK
    assert trainer(tmp_path / "b", 3).fit() == EXIT_OK
    assert trainer(tmp_path / "b", 6).fit() == EXIT_OK
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    teacher = {k: v for k, v in a["modules"]["losses"].items() if ".teacher." in k}
    assert teacher and any(not torch.equal(v, teacher0[k.split(".teacher.", 1)[1]]) for k, v in teacher.items())
    for k, v in a["modules"]["losses"].items():
        torch.testing.assert_close(b["modules"]["losses"][k], v, atol=0, rtol=0, msg=k)
