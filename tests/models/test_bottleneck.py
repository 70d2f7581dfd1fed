"""Gaussian / deterministic bottleneck behaviour in train and eval."""

from __future__ import annotations

import torch

from speechae.models.bottleneck import DeterministicBottleneck, GaussianBottleneck

LENS = torch.tensor([9, 5])


def _x() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(2, 9, 32)


def test_gaussian_samples_in_train_mean_in_eval() -> None:
    bn = GaussianBottleneck(32, 8)
    x = _x()
    bn.train()
    a, b = bn(x, LENS), bn(x, LENS)
    assert not torch.allclose(a.z, b.z)  # fresh noise each call
    torch.testing.assert_close(a.mean, b.mean)
    assert a.z[1, 5:].abs().sum() == 0  # padding stays zero
    bn.eval()
    c = bn(x, LENS)
    torch.testing.assert_close(c.z, c.mean)
    torch.testing.assert_close(c.mean, a.mean)


def test_gaussian_logvar_is_clamped() -> None:
    bn = GaussianBottleneck(32, 8, logvar_min=-3.0, logvar_max=2.0)
    with torch.no_grad():
        bn.proj.weight.mul_(1000.0)
    out = bn(_x(), LENS)
    valid = out.logvar[0]
    assert valid.min() >= -3.0 and valid.max() <= 2.0


def test_deterministic_noise_only_in_train() -> None:
    bn = DeterministicBottleneck(32, 8, norm="frame", noise_tau=0.8)
    x = _x()
    bn.train()
    out = bn(x, LENS)
    assert out.mean is None and out.logvar is None
    assert not torch.allclose(out.decoder_input, out.z)
    assert out.decoder_input[1, 5:].abs().sum() == 0
    bn.eval()
    out = bn(x, LENS)
    assert torch.equal(out.decoder_input, out.z)


def test_deterministic_norms() -> None:
    x = _x()
    frame = DeterministicBottleneck(32, 8, norm="frame").eval()(x, LENS).z
    torch.testing.assert_close(frame[0].mean(-1), torch.zeros(9), atol=1e-5, rtol=0)
    bn = DeterministicBottleneck(32, 8, norm="channel").train()
    z = bn(x * 5 + 3, LENS).z
    valid = torch.cat([z[0], z[1, :5]])
    torch.testing.assert_close(valid.mean(0), torch.zeros(8), atol=1e-5, rtol=0)
    torch.testing.assert_close(valid.var(0, unbiased=False), torch.ones(8), atol=1e-3, rtol=0)
    assert not torch.equal(bn.channel_norm.running_mean, torch.zeros(8))  # running stats moved


def test_arms_share_the_bottleneck_normalisation() -> None:
    """The default norm is none for both kinds; a gaussian posterior with a norm is refused
    (issue 10: the KL arm silently kept norm=frame while the SIGReg arm set none)."""
    import pytest

    from speechae.config import ConfigError
    from speechae.models.builder import BottleneckConfig, build_model

    assert BottleneckConfig().norm == "none" and DeterministicBottleneck(4, 2).norm_kind == "none"
    with pytest.raises(ConfigError, match="deterministic bottleneck only"):
        build_model({"preset": "tiny", "bottleneck": {"kind": "gaussian", "norm": "frame"}})
