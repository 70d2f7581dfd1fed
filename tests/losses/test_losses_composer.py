"""LossComposer: metric keys, weight-0 terms, padding invariance, one (doubled) model call."""

import pytest
import torch
from losses_testkit import StandInAE, StandInOutput, random_batch, repad

from speechae.train.ae_task import forward_losses
from speechae.config import ConfigError, from_dict
from speechae.losses import LossComposer, LossConfig, build_losses


def _composer(latent_dim=8, **cfg) -> LossComposer:
    base = {"sigreg": {"num_directions": 16, "num_frames": 64}, "masked_units": {"num_classes": 5, "proj_dim": 8},
            "ctc": {"vocab_size": 6}, "masking": {"mask_prob": 0.5, "span": 4}}
    base.update(cfg)
    return build_losses(from_dict(LossConfig, base), latent_dim)


def test_metric_keys():
    comp = _composer(regularizer="kl", semantic=["masked_units", "ctc"], weights={"sigreg": 0})
    model = StandInAE(gaussian=True)
    total, m = forward_losses(model, comp, random_batch(), 10)
    for name in ("recon", "kl", "sigreg", "masked_units", "ctc"):
        assert f"loss/{name}" in m and f"weight/{name}" in m
    for key in ("loss/total", "sigreg/floor", "kl/active_units", "kl/nats", "kl/dim_00", "kl/dim_07",
                "masked_units/acc", "recon/l1", "recon/multires", "z/std", "standin/calls"):
        assert key in m, key
    assert all(isinstance(v, float) for v in m.values())
    assert m["weight/sigreg"] == 0.0 and abs(m["weight/kl"] - 5e-6) < 1e-12  # warm-up 10/2000 * 1e-3
    expected = sum(m[f"weight/{n}"] * m[f"loss/{n}"] for n in ("recon", "kl", "sigreg", "masked_units", "ctc"))
    assert abs(m["loss/total"] - expected) < 1e-5 and abs(total.item() - expected) < 1e-5


def test_weight_zero_sends_no_gradient():
    batch = random_batch()
    torch.manual_seed(0)
    model = StandInAE()
    ref = _composer(regularizer="none")
    forward_losses(model, ref, batch, 0)[0].backward()
    ref_grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    comp = _composer(regularizer="sigreg", semantic=["ctc"], weights={"sigreg": 0.0, "ctc": 0})
    total, m = forward_losses(model, comp, batch, 0)
    total.backward()
    assert m["loss/sigreg"] > 0 and m["loss/ctc"] > 0  # computed and logged ...
    for g, r in zip((p.grad for p in model.parameters()), ref_grads):
        assert (g is None and r is None) or torch.allclose(g, r)  # ... but no gradient reaches the model
    assert all(p.grad is None for p in comp.parameters())  # nor the head
    assert torch.allclose(total, torch.tensor(m["loss/recon"]))


def test_recon_of_identity_is_zero_and_padding_invariant():
    class Identity(torch.nn.Module):
        def forward(self, features, feature_lens, input_mask=None):
            z = features[:, ::4]
            return StandInOutput(features, feature_lens, z, None, None, (feature_lens + 3) // 4, z, 4)

    batch = random_batch()
    _, m = forward_losses(Identity(), _composer(regularizer="none"), batch, 0)
    assert m["loss/recon"] == 0.0
    model = StandInAE(gaussian=True).eval()  # eval: z = mean, deterministic
    comp = _composer(regularizer="kl", semantic=["masked_units", "ctc"], weights={"sigreg": 0.1})
    _, a = forward_losses(model, comp, batch, 3)
    _, b = forward_losses(model, comp, repad(batch, 9), 3)
    for k in a:
        if k != "standin/calls":
            assert abs(a[k] - b[k]) <= 1e-5 * max(1.0, abs(a[k])), (k, a[k], b[k])


def test_recon_target_is_the_clean_input_under_spec_augment():
    """A model that returns the clean input scores 0, whatever the augmentation did to
    ``features`` (issue 10: the augmented view was the target, 0.88 instead of 0)."""
    batch = random_batch()
    clean = batch["features"].clone()
    augmented = clean.clone()
    augmented[:, 5:15] = 0.0  # a time mask, as SpecAugment would apply
    augmented[:, :, 2:6] = 0.0  # and a frequency mask
    batch = dict(batch, features=augmented, target_features=clean)

    class ReturnsClean(torch.nn.Module):
        def forward(self, features, feature_lens, input_mask=None):
            z = features[:, ::4]
            return StandInOutput(clean, feature_lens, z, None, None, (feature_lens + 3) // 4, z, 4)

    _, m = forward_losses(ReturnsClean(), _composer(regularizer="none"), batch, 0)
    assert m["loss/recon"] == 0.0
    # without target_features the input itself is the target (no augmentation in the pipeline)
    _, m = forward_losses(ReturnsClean(), _composer(regularizer="none"), dict(batch, features=clean, target_features=None), 0)
    assert m["loss/recon"] == 0.0


def test_latent_prediction_doubles_the_batch_in_one_call():
    model = StandInAE().eval()
    comp = _composer(regularizer="sigreg", semantic=["latent_prediction"])
    batch = random_batch(b=3)
    _, m = forward_losses(model, comp, batch, 0)
    assert model.calls == 1 and model.last_batch_size == 6
    assert m["loss/latent_prediction"] > 0
    # reconstruction and regularizer are taken on the clean half
    _, clean = forward_losses(model, _composer(regularizer="sigreg"), batch, 0)
    assert abs(m["loss/recon"] - clean["loss/recon"]) < 1e-6
    assert abs(m["loss/sigreg"] - clean["loss/sigreg"]) < 1e-4


def test_log_only_mask_objective_does_not_mask_the_input():
    seen = []

    class Spy(StandInAE):
        def forward(self, features, feature_lens, input_mask=None):
            seen.append(input_mask)
            return super().forward(features, feature_lens, input_mask)

    _, m = forward_losses(Spy(), _composer(regularizer="none", weights={"masked_units": 0}), random_batch(), 0)
    assert seen == [None] and "loss/masked_units" not in m
    _, m = forward_losses(Spy(), _composer(regularizer="none", semantic=["masked_units"]), random_batch(), 0)
    assert seen[-1] is not None and seen[-1].any() and "loss/masked_units" in m


def test_prism_band_split_runs():
    comp = _composer(regularizer="none", semantic=["masked_units"], prism={"enabled": True, "keep": 0.5})
    total, m = forward_losses(StandInAE(), comp, random_batch(), 0)
    total.backward()
    assert m["loss/masked_units"] > 0


def test_config_errors():
    with pytest.raises(ConfigError):
        _composer(regularizer="vq")
    with pytest.raises(ConfigError):
        _composer(semantic=["wer"])
    with pytest.raises(ConfigError):
        _composer(weights={"sigreg2": 1.0})
    with pytest.raises(ConfigError):
        from_dict(LossConfig, {"sigreg": {"directions": 3}})
    with pytest.raises(ValueError):
        forward_losses(StandInAE(gaussian=False), _composer(regularizer="kl"), random_batch(), 0)


def test_regularizer_ramp_gives_every_arm_the_same_warmup_shape():
    ramp = {"type": "linear_warmup", "steps": 100}
    sig = _composer(regularizer="sigreg", weights={"sigreg": 0.05}, regularizer_ramp=ramp)
    kl = _composer(regularizer="kl", weights={"kl": 1e-3, "sigreg": 0}, regularizer_ramp=ramp)
    for step in (0, 25, 50, 100, 300):
        frac = min(step / 100, 1.0)
        assert abs(sig.weights(step)["sigreg"] - 0.05 * frac) < 1e-12
        assert abs(kl.weights(step)["kl"] - 1e-3 * frac) < 1e-15
        assert kl.weights(step)["sigreg"] == 0.0  # log-only monitor untouched
        assert sig.weights(step)["recon"] == 1.0  # not a regularizer: no ramp
    with pytest.raises(ConfigError):
        _composer(regularizer="sigreg", regularizer_ramp={"type": "linear_warmup", "end": 3})


def test_default_mask_span_is_200_ms():
    from speechae.losses import LossConfig as LC

    assert LC().masking.span * 10 == 200  # input frames at a 10 ms shift (HuBERT / k2SSL)
