"""A flow-matching decoder for any autoencoder arm (``model.decoder.kind: flow``): trained with
its own loss from the clean target, sampled at evaluation, rebuilt from a checkpoint."""

from __future__ import annotations

from pathlib import Path

import sys

import torch

from speechae.models import build_model
from speechae.models.flow_decoder import FlowDecoder
from speechae.train.ae_task import forward_losses
from speechae.train.checkpoint import load_model_from_checkpoint
from speechae.train.config import experiment_config_from_dict
from speechae.train.run import run_training

FLOW = {"kind": "flow", "options": {"dim": 32, "num_blocks": 1, "ff_dim": 64, "nfe": 2}}
MODEL = {"preset": "tiny", "encoder": {"dims": [32, 32, 48, 48, 48, 32], "ff_dims": [64, 64, 96, 96, 96, 64],
                                       "pos_dim": 8},
         "bottleneck": {"kind": "deterministic", "latent_dim": 8, "norm": "none"}, "decoder": FLOW}


def test_training_uses_the_flow_loss_and_evaluation_samples() -> None:
    torch.manual_seed(0)
    model = build_model(MODEL)
    assert isinstance(model.decoder, FlowDecoder)
    x, lens = torch.randn(2, 48, 80), torch.tensor([48, 40])
    out = model(x, lens, target=x)
    assert out.decoder_loss is not None and out.decoder_loss.requires_grad
    assert not out.recon.any()  # no sampling in training
    enc = next(p for n, p in model.named_parameters() if n.startswith("encoder."))
    (g,) = torch.autograd.grad(out.decoder_loss, enc, allow_unused=True)
    assert g is not None and g.abs().sum() > 0  # the flow loss trains the encoder through z
    model.eval()
    sample = model(x, lens).recon
    assert sample.shape == x.shape and sample[1, 40:].abs().sum() == 0 and sample[:, :40].abs().sum() > 0
    torch.testing.assert_close(model(x, lens).recon, sample)  # repeatable sampling noise


def test_the_arm_loss_is_the_decoder_loss_of_the_clean_rows() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "losses"))
    from losses_testkit import random_batch

    from speechae.losses import LossConfig, build_losses
    from speechae.config import from_dict

    torch.manual_seed(0)
    model = build_model(MODEL)
    comp = build_losses(from_dict(LossConfig, {"regularizer": "sigreg", "semantic": ["latent_prediction"]}), 8)
    batch = random_batch(b=2, t=48, f=80)
    torch.manual_seed(1)
    total, metrics = forward_losses(model, comp, batch, 0)
    # the same draw of noise and times on the clean rows alone gives the same loss
    torch.manual_seed(1)
    plan = comp.plan(batch, 0)
    feats, lens, mask = comp.model_inputs(batch, plan)
    assert plan.double and feats.shape[0] == 4
    out = model(feats, lens, input_mask=mask, target=batch["features"], target_rows=slice(2, 4))
    assert metrics["loss/recon"] == float(out.decoder_loss)


def test_a_flow_arm_trains_and_is_rebuilt_for_evaluation(tmp_path: Path, make_config) -> None:
    data = make_config(train={"max_steps": 4, "valid_every": 2, "tensorboard": False})
    data["model"] = MODEL  # replaced, not merged: the zipformer decoder's keys do not apply
    cfg = experiment_config_from_dict(data)
    exp = tmp_path / "exp"
    assert run_training(cfg, exp) == 0
    records = [r for r in map(__import__("json").loads, (exp / "log" / "metrics.jsonl").read_text().splitlines())]
    assert all("loss/recon" in r for r in records if "split" not in r)
    assert any("valid/recon/sampled_l1" in r for r in records)
    model, _ = load_model_from_checkpoint(exp)
    assert isinstance(model.decoder, FlowDecoder) and not model.training
