"""KL regularizer: closed form vs Monte Carlo, zero at the prior, free bits, diagnostics."""

import torch

from speechae.losses import KLRegularizer, gaussian_kl


def test_closed_form_equals_monte_carlo():
    g = torch.Generator().manual_seed(0)
    mean = torch.tensor([0.5, -1.0, 2.0])
    logvar = torch.tensor([0.0, -1.0, 0.7])
    std = (0.5 * logvar).exp()
    z = mean + std * torch.randn(400_000, 3, generator=g)
    log_q = torch.distributions.Normal(mean, std).log_prob(z)
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z)
    mc = (log_q - log_p).mean(0)
    assert torch.allclose(gaussian_kl(mean, logvar), mc, atol=0.02)


def test_zero_at_the_prior_and_per_valid_frame_mean():
    reg = KLRegularizer()
    mean, logvar = torch.zeros(2, 6, 4), torch.zeros(2, 6, 4)
    loss, metrics = reg(mean, logvar, torch.tensor([6, 3]))
    assert float(loss) == 0.0 and float(metrics["kl/nats"]) == 0.0
    # padding never counts: garbage after the lengths changes nothing
    mean[1, 3:] = 5.0
    mean[0, :, 0] = 1.0  # 0.5 nat per frame on dim 0 of utterance 0 only
    loss, metrics = reg(mean, logvar, torch.tensor([6, 3]))
    assert abs(float(loss) - 0.5 * 6 / 9) < 1e-6
    assert abs(float(metrics["kl/dim_00"]) - 0.5 * 6 / 9) < 1e-6 and float(metrics["kl/dim_01"]) == 0.0


def test_free_bits_clamp_per_dimension():
    lam = 0.25
    reg = KLRegularizer(free_bits=lam)
    mean = torch.zeros(1, 10, 3)
    mean[..., 0] = 1.0  # KL 0.5 > lam: optimised normally
    mean[..., 1] = 0.5  # KL 0.125 < lam: clamped, no gradient
    mean.requires_grad_(True)
    logvar = torch.zeros(1, 10, 3)
    loss, metrics = reg(mean, logvar, torch.tensor([10]))
    assert abs(loss.item() - (0.5 + lam + lam)) < 1e-6
    assert abs(float(metrics["kl/nats"]) - 0.625) < 1e-6  # unclamped value is reported
    loss.backward()
    assert mean.grad[..., 0].abs().sum() > 0
    assert mean.grad[..., 1:].abs().sum() == 0


def test_active_units():
    g = torch.Generator().manual_seed(1)
    mean = torch.zeros(2, 50, 4)
    mean[..., 0] = torch.randn(2, 50, generator=g)  # Var[E[z|x]] ~ 1: active
    mean[..., 1] = 0.05 * torch.randn(2, 50, generator=g)  # variance 0.0025: collapsed
    _, metrics = KLRegularizer()(mean, torch.zeros_like(mean), torch.tensor([50, 50]))
    assert float(metrics["kl/active_units"]) == 1.0
