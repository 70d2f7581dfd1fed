"""Closed forms (Swoosh, BiasNorm), schedules, and the gradient-only constraints."""

from __future__ import annotations

import math

import pytest
import torch

from speechae.models.scaling import (
    Balancer,
    BiasNorm,
    ScheduledFloat,
    Whiten,
    limit_param_value,
    swoosh_l,
    swoosh_r,
    whitening_metric,
    whitening_metric_and_grad,
)


def test_swoosh_closed_forms_and_gradients() -> None:
    x = torch.linspace(-8, 8, 101, dtype=torch.float64, requires_grad=True)
    ref_r = torch.log1p(torch.exp(x - 1)) - 0.08 * x - 0.313261687
    ref_l = torch.log1p(torch.exp(x - 4)) - 0.08 * x - 0.035
    torch.testing.assert_close(swoosh_r(x), ref_r)
    torch.testing.assert_close(swoosh_l(x), ref_l)
    assert abs(swoosh_r(torch.zeros(1)).item()) < 1e-6  # the constant makes SwooshR(0) = 0
    assert torch.autograd.gradcheck(swoosh_r, (x[:20],))
    assert torch.autograd.gradcheck(swoosh_l, (x[:20],))


def test_biasnorm_closed_form() -> None:
    torch.manual_seed(0)
    norm = BiasNorm(16)
    with torch.no_grad():
        norm.bias.normal_()
        norm.log_scale.fill_(0.3)
    x = torch.randn(4, 7, 16)
    ref = x * ((x - norm.bias) ** 2).mean(-1, keepdim=True) ** -0.5 * math.exp(0.3)
    torch.testing.assert_close(norm(x), ref, rtol=1e-5, atol=1e-6)


def test_scheduled_float_piecewise_linear() -> None:
    sf = ScheduledFloat((0.0, 0.5), (100.0, 0.1), (200.0, 0.0))
    for bc, want in [(-5, 0.5), (0, 0.5), (50, 0.3), (100, 0.1), (150, 0.05), (1e9, 0.0)]:
        sf.batch_count = bc
        assert float(sf) == pytest.approx(want)
    sf.override = 0.7
    assert float(sf) == 0.7


def _grad_through(module: torch.nn.Module, x: torch.Tensor, g: torch.Tensor):
    x = x.clone().requires_grad_(True)
    y = module(x)
    y.backward(g)
    return y.detach(), x.grad


def test_balancer_identity_and_gradient_only_when_violated() -> None:
    torch.manual_seed(0)
    bal = Balancer(8, min_positive=0.3, max_positive=0.7, min_abs=0.5, max_abs=2.0, prob=1.0).train()
    g = torch.randn(64, 8)
    ok = torch.randn(64, 8)  # ~50% positive, rms ~1: satisfied
    y, grad = _grad_through(bal, ok, g)
    assert torch.equal(y, ok) and torch.equal(grad, g)

    bad = ok.clone()
    bad[:, 0] = ok[:, 0].abs() + 1.0  # channel 0 all positive (too many)
    bad[:, 1] = ok[:, 1] * 10.0  # channel 1 too large
    y, grad = _grad_through(bal, bad, g)
    assert torch.equal(y, bad)  # forward still the identity
    torch.testing.assert_close(grad[:, 2:], g[:, 2:])  # satisfied channels untouched
    assert (grad[:, 0] - g[:, 0] > 0).all()  # descent pushes channel 0 down
    # descent shrinks the magnitudes of channel 1: the extra gradient has the sign of x
    assert ((grad[:, 1] - g[:, 1]) * bad[:, 1].sign() > 0).all()


def test_whiten_identity_and_gradient_only_when_violated() -> None:
    torch.manual_seed(0)
    wh = Whiten(whitening_limit=2.0, grad_scale=0.1, prob=1.0).train()
    g = torch.randn(256, 16)
    white = torch.randn(256, 16)
    assert whitening_metric(white, 1) < 2.0
    y, grad = _grad_through(wh, white, g)
    assert torch.equal(y, white) and torch.equal(grad, g)

    skewed = white.clone()
    skewed[:, 0] *= 20.0  # one dominant direction
    assert whitening_metric(skewed, 1) > 2.0
    y, grad = _grad_through(wh, skewed, g)
    assert torch.equal(y, skewed) and not torch.equal(grad, g)
    # a small step along -extra gradient makes the covariance whiter
    extra = grad - g
    assert whitening_metric(skewed - 1e-3 * extra / extra.norm() * skewed.norm(), 1) < whitening_metric(skewed, 1)


@pytest.mark.parametrize("groups", [1, 4])
def test_whitening_gradient_closed_form_equals_autograd(groups: int) -> None:
    torch.manual_seed(0)
    x = (torch.randn(200, 16) * torch.linspace(0.1, 5.0, 16)).double().requires_grad_(True)
    metric, grad = whitening_metric_and_grad(x.detach(), groups)
    (auto,) = torch.autograd.grad(whitening_metric(x, groups), x)
    torch.testing.assert_close(metric, whitening_metric(x.detach(), groups))
    torch.testing.assert_close(grad, auto)


def test_limit_param_value_accepts_a_tensor_bound() -> None:
    x = torch.tensor([0.1, 0.5, 1.5], requires_grad=True)
    y = limit_param_value(x, torch.tensor(0.2), 1.0)
    assert torch.equal(y, torch.tensor([0.2, 0.5, 1.0]))
    y.backward(torch.tensor([1.0, 1.0, 1.0]))  # first entry outward (below lo, grad pushes down)
    assert torch.equal(x.grad, torch.tensor([0.0, 1.0, 1.0]))


def test_constraints_are_inactive_in_eval() -> None:
    bal = Balancer(4, min_positive=0.9, prob=1.0).eval()
    x = -torch.ones(10, 4)
    g = torch.ones(10, 4)
    _, grad = _grad_through(bal, x, g)
    assert torch.equal(grad, g)


def test_limit_param_value_keeps_inward_gradients() -> None:
    x = torch.tensor([0.0, 0.5, 2.0], requires_grad=True)
    y = limit_param_value(x, 0.2, 1.0)
    assert torch.equal(y.detach(), torch.tensor([0.2, 0.5, 1.0]))
    y.backward(torch.tensor([-1.0, 1.0, 1.0]))  # entry 0: inward, entry 2: inward
    assert torch.equal(x.grad, torch.tensor([-1.0, 1.0, 1.0]))
    x.grad = None
    limit_param_value(x, 0.2, 1.0).backward(torch.tensor([1.0, 1.0, -1.0]))  # both outward
    assert torch.equal(x.grad, torch.tensor([0.0, 1.0, 0.0]))


def test_shared_dropout_mask_is_shared_over_time() -> None:
    from speechae.models.scaling import SharedDropout

    torch.manual_seed(0)
    drop = SharedDropout(0.5)
    x = torch.ones(3, 50, 16)
    y = drop(x)
    # every (sequence, channel) is either dropped for all frames or kept (scaled) for all
    assert torch.equal(y, y[:, :1].expand_as(y))
    assert set(y.unique().tolist()) <= {0.0, 2.0}
    assert torch.equal(drop.eval()(x), x)


def test_rel_shift_equals_gather_and_its_gradient() -> None:
    from speechae.models.zipformer import rel_shift

    for t in (1, 2, 9):
        _check_rel_shift(rel_shift, 2, 3, t)


def _check_rel_shift(rel_shift, b: int, h: int, t: int) -> None:  # noqa: ANN001
    scores = torch.randn(b, h, t, 2 * t - 1, requires_grad=True)
    idx = torch.arange(t)
    col = (idx[None, :] - idx[:, None] + t - 1).expand(b, h, t, t)  # offset j - i at column j - i + T - 1
    want = scores.gather(-1, col)
    got = rel_shift(scores)
    assert torch.equal(got, want)
    g = torch.randn_like(want)
    (ga,) = torch.autograd.grad(want, scores, g)
    (gb,) = torch.autograd.grad(got, scores, g)
    assert torch.equal(ga, gb)


def test_front_end_single_channel_conv_matches_conv2d() -> None:
    from speechae.models.zipformer import Conv2dSubsampling

    torch.manual_seed(0)
    m = Conv2dSubsampling(80, 32, channels=(8, 16, 32))
    h = torch.randn(2, 1, 23, 80, requires_grad=True)
    a, b = m._conv1(h), m.conv1(h)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(a)
    ga = torch.autograd.grad(a, [h, m.conv1.weight, m.conv1.bias], g)
    gb = torch.autograd.grad(b, [h, m.conv1.weight, m.conv1.bias], g)
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-4)


def test_fast_dropout_drops_iid_at_rate_p_and_scales_exactly() -> None:
    from speechae.models.scaling import Dropout

    torch.manual_seed(0)
    p, n = 0.1, 1_000_000
    drop = Dropout(p).train()
    x = torch.rand(n) + 0.5  # no zeros: a zero output means dropped
    x.requires_grad_(True)
    y = drop(x)
    kept = y != 0
    frac = 1.0 - kept.float().mean().item()
    assert abs(frac - p) < 0.002  # 3 sigma = 0.0009
    scale = 65536.0 / (65536 - round(p * 65536))
    torch.testing.assert_close(y[kept], x.detach()[kept] * scale)
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() * scale)  # the gradient sees the same mask
    # four 16-bit draws share one 64-bit word: neighbours must still be independent
    pair = (~kept[0::2] & ~kept[1::2]).float().mean().item()
    assert abs(pair - p * p) < 0.0015
    drop.eval()
    assert drop(x) is x
