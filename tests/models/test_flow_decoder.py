"""The flow-matching decoder: the OT path and its loss in closed form, the ODE solvers on fields
they integrate exactly, padding invariance, and the sampler's contract."""

from __future__ import annotations

import pytest
import torch

from speechae.models.flow_decoder import FlowDecoder, flow_matching_loss, integrate, ot_path

SIGMA = 1e-4


def _pair(b: int = 3, t: int = 11, f: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, f, generator=g), torch.randn(b, t, f, generator=g) * 2 + 1


def test_ot_path_endpoints_and_velocity() -> None:
    x0, x1 = _pair()
    xt, u = ot_path(x0, x1, torch.zeros(3), SIGMA)
    torch.testing.assert_close(xt, x0)
    xt, u = ot_path(x0, x1, torch.ones(3), SIGMA)
    torch.testing.assert_close(xt, x1 + SIGMA * x0)
    torch.testing.assert_close(u, x1 - (1 - SIGMA) * x0)
    # u is the time derivative of x_t along the path
    t = torch.tensor([0.2, 0.5, 0.7])
    eps = 1e-3
    a, _ = ot_path(x0.double(), x1.double(), t.double() - eps, SIGMA)
    b, _ = ot_path(x0.double(), x1.double(), t.double() + eps, SIGMA)
    torch.testing.assert_close((b - a) / (2 * eps), u.double())


def test_flow_matching_loss_is_zero_for_the_exact_velocity_and_the_squared_error_otherwise() -> None:
    x0, x1 = _pair()
    t = torch.tensor([0.1, 0.5, 0.9])
    valid = torch.ones(3, 11, dtype=torch.bool)
    exact = lambda x, tt: x1 - (1 - SIGMA) * x0  # noqa: E731
    assert float(flow_matching_loss(exact, x1, valid, SIGMA, x0, t)) == pytest.approx(0.0, abs=1e-12)
    # the conditional OT field evaluated at x_t is the same target velocity
    field = lambda x, tt: (x1 - (1 - SIGMA) * x) / (1 - (1 - SIGMA) * tt.view(-1, 1, 1))  # noqa: E731
    assert float(flow_matching_loss(field, x1, valid, SIGMA, x0, t)) == pytest.approx(0.0, abs=1e-10)
    off = lambda x, tt: x1 - (1 - SIGMA) * x0 + 0.5  # noqa: E731
    assert float(flow_matching_loss(off, x1, valid, SIGMA, x0, t)) == pytest.approx(0.25)


def test_flow_matching_loss_ignores_padded_frames() -> None:
    x0, x1 = _pair()
    t = torch.full((3,), 0.3)
    valid = torch.arange(11)[None] < torch.tensor([11, 6, 3])[:, None]
    wrong_on_padding = lambda x, tt: torch.where(valid.unsqueeze(-1), x1 - (1 - SIGMA) * x0, 1e3)  # noqa: E731
    assert float(flow_matching_loss(wrong_on_padding, x1, valid, SIGMA, x0, t)) == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("nfe", [1, 2, 4, 8])
def test_euler_integrates_the_ot_field_exactly(nfe: int) -> None:
    """The conditional OT field's trajectories are straight lines at constant speed, so one
    Euler step (or any number) lands exactly on x1 + sigma_min x0."""
    x0, x1 = _pair()
    x0, x1 = x0.double(), x1.double()
    field = lambda x, t: (x1 - (1 - SIGMA) * x) / (1 - (1 - SIGMA) * t.view(-1, 1, 1))  # noqa: E731
    torch.testing.assert_close(integrate(field, x0, nfe, "euler"), x1 + SIGMA * x0)


def test_solvers_on_linear_in_time_fields() -> None:
    x0, _ = _pair()
    a = torch.randn(5)
    # constant field: every solver is exact
    for method, nfe in (("euler", 1), ("euler", 7), ("midpoint", 2), ("midpoint", 6)):
        torch.testing.assert_close(integrate(lambda x, t: a.expand_as(x), x0, nfe, method), x0 + a)
    # v = a + b t: x(1) = x0 + a + b/2; midpoint is exact, Euler with n steps is short by b/(2n)
    b = torch.randn(5)
    field = lambda x, t: a + b * t.view(-1, 1, 1)  # noqa: E731
    torch.testing.assert_close(integrate(field, x0, 4, "midpoint"), x0 + a + b / 2)
    torch.testing.assert_close(integrate(field, x0, 4, "euler"), x0 + a + b / 2 - b / 8)
    with pytest.raises(ValueError, match="even"):
        integrate(field, x0, 3, "midpoint")


def _decoder(**kw) -> FlowDecoder:
    torch.manual_seed(0)
    return FlowDecoder(cond_dim=12, frame_ratio=4, num_mel_bins=10, dim=16, num_blocks=2, ff_dim=24, **kw).eval()


def test_velocity_on_valid_frames_does_not_depend_on_padding(single_thread) -> None:
    dec = _decoder()
    g = torch.Generator().manual_seed(1)
    cond, x = torch.randn(1, 5, 12, generator=g), torch.randn(1, 18, 10, generator=g)
    t = torch.tensor([0.4])
    valid = torch.ones(1, 18, dtype=torch.bool)
    ref = dec.velocity(x, t, dec.upsample_condition(cond, 18), valid)
    cond_p = torch.cat([cond, torch.randn(1, 3, 12, generator=g)], 1)
    x_p = torch.cat([x, torch.randn(1, 10, 10, generator=g)], 1)
    valid_p = torch.arange(28)[None] < 18
    out = dec.velocity(x_p, t, dec.upsample_condition(cond_p, 28), valid_p)
    torch.testing.assert_close(out[:, :18], ref, atol=1e-5, rtol=1e-5)
    assert out[:, 18:].abs().max() == 0


def test_sampler_contract_and_repeatability(single_thread) -> None:
    dec = _decoder(nfe=4)
    cond = torch.randn(2, 5, 12)
    lens = torch.tensor([18, 9])
    a = dec(cond, torch.tensor([5, 3]), lens, 18)
    assert a.shape == (2, 18, 10) and a[1, 9:].abs().max() == 0
    torch.testing.assert_close(dec(cond, torch.tensor([5, 3]), lens, 18), a)  # fixed sampling seed
    b = dec.sample(cond, lens, 18, nfe=2, method="midpoint", guidance=0.7)
    assert b.shape == a.shape and torch.isfinite(b).all()


def test_guidance_zero_is_the_conditional_field_and_guidance_extrapolates(single_thread) -> None:
    dec = _decoder(nfe=1)
    with torch.no_grad():  # make the network depend on the condition
        for blk in dec.blocks:
            blk.ada.weight.normal_(0, 0.1)
    cond, lens = torch.randn(1, 5, 12), torch.tensor([18])
    cond_only = dec.sample(cond, lens, 18, guidance=0.0)
    uncond = dec.sample(torch.zeros_like(cond), lens, 18, guidance=0.0)
    guided = dec.sample(cond, lens, 18, guidance=0.5)
    # one Euler step is linear in the velocity: (1 + a) v_c - a v_u
    torch.testing.assert_close(guided, 1.5 * cond_only - 0.5 * uncond, atol=1e-5, rtol=1e-5)


def test_training_loss_accumulates_mel_statistics_then_freezes(single_thread) -> None:
    dec = _decoder(norm_frames=20).train()
    mel = torch.randn(2, 18, 10) * 3 - 5
    lens = torch.tensor([18, 12])
    loss, _ = dec.loss(mel, lens, torch.randn(2, 5, 12), generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and dec.out_proj.weight.grad is not None
    valid = torch.cat([mel[0], mel[1, :12]])
    assert float(dec.stat_count) == 30
    torch.testing.assert_close(dec._stats()[0], valid.mean(0), atol=1e-5, rtol=1e-5)
    dec.loss(mel + 100, lens, torch.randn(2, 5, 12))
    assert float(dec.stat_count) == 30  # frozen after norm_frames
    torch.testing.assert_close(dec.denormalise(dec.normalise(mel)), mel, atol=1e-5, rtol=1e-5)
