"""Semantic objectives: masked-frame-only loss, CTC overfitting, distillation, Prism band split,
and latent prediction kept from collapsing by SIGReg."""

import torch
from losses_testkit import StandInAE, random_batch

from speechae.train.ae_task import forward_losses
from speechae.config import from_dict
from speechae.losses import (CTCObjective, Distillation, LossConfig, MaskedUnitPrediction,
                             SemanticInputs, build_losses, dct_matrix, lowpass_dct)
from speechae.losses.masking import lengths_to_mask
from speechae.losses.semantic import masked_unit_loss


def test_unmasked_frames_carry_no_loss():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 10, 7, generator=g)
    targets = torch.randint(0, 7, (2, 10), generator=g)
    select = torch.rand(2, 10, generator=g) < 0.5
    targets[0, 0] = -1  # unknown target: ignored even if selected
    select[0, 0] = True
    base, acc = masked_unit_loss(logits, targets, select)
    logits2, targets2 = logits.clone(), targets.clone()
    logits2[~select] = 100 * torch.randn_like(logits2[~select])
    targets2[~select] = (targets2[~select] + 3) % 7
    logits2[0, 0] = 50.0
    again, acc2 = masked_unit_loss(logits2, targets2, select)
    assert torch.equal(base, again) and torch.equal(acc, acc2)


def test_masked_units_module_uses_only_masked_latent_frames():
    batch = random_batch(b=2, t=40, seed=1)
    obj = MaskedUnitPrediction(latent_dim=8, num_classes=5, proj_dim=16)
    z = torch.randn(2, 10, 8, requires_grad=True)
    lat = torch.zeros(2, 10, dtype=torch.bool)
    lat[0, 2:5] = True
    lat[1, 8:] = True  # utterance 1 has 9 latent frames: frame 9 is padding
    inp = SemanticInputs(z, torch.tensor([10, 9]), batch, 4.0, latent_mask=lat)
    loss, metrics = obj(inp)
    loss.backward()
    touched = z.grad.abs().sum(-1) > 0
    assert torch.equal(touched, lat & lengths_to_mask(torch.tensor([10, 9]), 10))
    assert 0.0 <= float(metrics["masked_units/acc"]) <= 1.0


def test_ctc_overfits_a_few_utterances():
    torch.manual_seed(0)
    batch = random_batch(b=3, t=48, seed=2, lens=[48, 44, 40])
    model = StandInAE(latent_dim=8)
    obj = CTCObjective(latent_dim=8, vocab_size=6)
    opt = torch.optim.Adam(list(model.parameters()) + list(obj.parameters()), lr=1e-2)
    losses = []
    for _ in range(40):
        out = model(batch["features"], batch["feature_lens"])
        loss, _ = obj(SemanticInputs(out.z, out.z_lengths, batch, 4.0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], losses[::10]


def test_ctc_phone_targets_with_offset():
    batch = {"phone_seq": torch.tensor([[0, 2, 1]]), "phone_seq_lens": torch.tensor([3]),
             "features": torch.zeros(1, 40, 4), "feature_lens": torch.tensor([40])}
    obj = CTCObjective(latent_dim=4, vocab_size=4, target_key="phone_seq", target_offset=1)
    loss, _ = obj(SemanticInputs(torch.randn(1, 10, 4), torch.tensor([10]), batch, 4.0))
    assert torch.isfinite(loss) and loss.item() > 0


def test_ctc_counts_infeasible_utterances():
    """Labels that cannot fit the latent frames are counted (they would be zeroed silently)."""
    from speechae.losses.semantic import ctc_min_frames

    toks = torch.tensor([[1, 1, 2, 2, 2], [1, 2, 3, 0, 0], [4, 4, 0, 0, 0]])
    lens = torch.tensor([5, 3, 2])
    # 5 labels + 3 repeats (1-1, 2-2, 2-2); 3 labels, no repeat (padding zeros not counted); 2 + 1
    assert ctc_min_frames(toks, lens).tolist() == [8, 3, 3]
    batch = {"tokens": toks, "token_lens": lens}
    obj = CTCObjective(latent_dim=4, vocab_size=6)
    z_lens = torch.tensor([7, 3, 3])  # first needs 8 frames: infeasible; others fit exactly
    loss, m = obj(SemanticInputs(torch.randn(3, 7, 4), z_lens, batch, 4.0))
    assert int(m["ctc/infeasible"]) == 1 and torch.isfinite(loss)


def test_distill_precomputed_and_torchscript_teacher(tmp_path):
    torch.manual_seed(0)
    feats = torch.randn(2, 40, 16)
    lens = torch.tensor([40, 28])

    class Teacher(torch.nn.Module):
        def forward(self, x: torch.Tensor, n: torch.Tensor):
            y = torch.nn.functional.avg_pool1d(x.transpose(1, 2), 2).transpose(1, 2)  # 50 Hz
            return y[..., :12], torch.div(n, 2, rounding_mode="floor")

    path = tmp_path / "teacher.pt"
    torch.jit.script(Teacher()).save(str(path))
    cfg = from_dict(LossConfig, {"regularizer": "none", "semantic": ["distill"],
                                 "distill": {"teacher_dim": 12, "teacher_path": str(path)}})
    comp = build_losses(cfg, latent_dim=8)
    obj = comp.objectives["distill"]
    assert not any(p is None for p in obj.parameters()) and len(list(obj.parameters())) == 2
    z = torch.randn(2, 10, 8)
    inp = SemanticInputs(z, torch.tensor([10, 7]), {"features": feats, "feature_lens": lens}, 4.0)
    loss_t, m = obj(inp)
    t_feats, t_lens = Teacher()(feats, lens)
    pre = {"features": feats, "feature_lens": lens, "teacher": t_feats, "teacher_lens": t_lens}
    loss_p, _ = Distillation(8, 12)(SemanticInputs(z, torch.tensor([10, 7]), pre, 4.0))
    obj2 = Distillation(8, 12)
    obj2.load_state_dict(obj.state_dict())
    assert torch.allclose(obj2(SemanticInputs(z, torch.tensor([10, 7]), pre, 4.0))[0], loss_t)
    assert torch.isfinite(loss_p) and {"distill/cos", "distill/l1"} <= set(m)


def test_dct_is_orthonormal_and_lowpass_keeps_low_bands():
    c = dct_matrix(13)
    assert torch.allclose(c @ c.t(), torch.eye(13), atol=1e-5)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 20, 4, generator=g)
    lens = torch.tensor([20, 13, 13])
    full = lowpass_dct(z, lens, 1.0)
    assert torch.allclose(full, z * lengths_to_mask(lens, 20).unsqueeze(-1), atol=1e-5)
    # a slow cosine (band 1) survives keep=0.25; a fast one (band 15) is removed
    t = torch.arange(20.0)
    slow = torch.cos(torch.pi * (t + 0.5) * 1 / 20).view(1, 20, 1)
    fast = torch.cos(torch.pi * (t + 0.5) * 15 / 20).view(1, 20, 1)
    one = torch.tensor([20])
    assert torch.allclose(lowpass_dct(slow + fast, one, 0.25), slow, atol=1e-5)
    low = lowpass_dct(z, lens, 0.25)
    assert low[1, 13:].abs().sum() == 0  # padding stays zero
    assert low[1, :13].norm() < z[1, :13].norm()


def _lp_run(sigreg_weight: float, steps: int = 25) -> tuple[float, float]:
    torch.manual_seed(0)
    model = StandInAE(latent_dim=8, hidden=16)
    weights = {"recon": 0, "latent_prediction": 1.0}
    if sigreg_weight:
        weights["sigreg"] = sigreg_weight
    cfg = from_dict(LossConfig, {"regularizer": "none", "semantic": ["latent_prediction"], "weights": weights,
                                 "sigreg": {"num_directions": 32, "num_frames": 128},
                                 "masking": {"mask_prob": 0.5, "span": 4}})
    comp = build_losses(cfg, 8)
    opt = torch.optim.Adam(list(model.parameters()) + list(comp.parameters()), lr=1e-2)
    first = None
    for step in range(steps):
        loss, metrics = forward_losses(model, comp, random_batch(b=2, t=48, seed=step), step)
        first = metrics["z/std"] if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        batch = random_batch(b=2, t=48, seed=999)
        out = model(batch["features"], batch["feature_lens"])
    z = out.z[lengths_to_mask(out.z_lengths, out.z.shape[1])]
    return first, z.std(0).mean().item()


def test_latent_prediction_collapses_without_sigreg_and_not_with_it():
    start, without = _lp_run(0.0)
    _, with_sigreg = _lp_run(0.5)
    assert without < 0.5 * start  # the trivial solution: shrink z towards a constant
    assert with_sigreg > 0.5 and with_sigreg > 10 * without
