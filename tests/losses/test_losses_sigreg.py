"""SIGReg: Gaussian floor, sensitivity to non-Gaussian clouds, padding, gradients, precision."""

import math

import pytest
import torch

from speechae.losses import SIGReg, effective_rank, gaussian_floor
from speechae.losses.sigreg import epps_pulley_grid, stratified_subsample


def test_floor_matches_continuous_integral():
    # E[EP] = 2 * int_0^3 exp(-t^2/2) (1 - exp(-t^2)) dt in closed form (erf terms).
    cont = 2 * (math.sqrt(math.pi / 2) * math.erf(3 / math.sqrt(2))
                - math.sqrt(math.pi / 6) * math.erf(3 * math.sqrt(1.5)))
    assert abs(cont - 1.0527) < 1e-3
    assert abs(gaussian_floor(17, 3.0) - cont) < 0.01
    assert abs(SIGReg().floor - gaussian_floor(17, 3.0)) < 1e-12
    t, w = epps_pulley_grid(17, 3.0)
    assert t[0] == 0 and abs(float(t[-1]) - 3.0) < 1e-12
    # doubled trapezoid: the weights integrate exp(-t^2/2) over [-3, 3]
    assert abs(float(w.sum()) - math.sqrt(2 * math.pi) * math.erf(3 / math.sqrt(2))) < 0.01


def test_gaussian_samples_sit_at_the_floor():
    # The statistic's spread does not shrink with N (its variance is O(1)), so average draws;
    # directions beyond ~D add little independent information, hence M = 256.
    reg = SIGReg(num_directions=256, num_frames=None)
    g = torch.Generator().manual_seed(0)
    vals = torch.tensor([float(reg(torch.randn(2048, 32, generator=g), step=i)) for i in range(12)])
    assert abs(vals.mean().item() / reg.floor - 1.0) < 0.06, vals


def _alternatives(g: torch.Generator) -> dict:
    n = 2048
    z = torch.randn(n, 32, generator=g)
    aniso = z.clone()
    aniso[:, :16] *= 2.0
    aniso[:, 16:] *= 0.3
    # Low-dimensional cases: a random 1-D projection of an i.i.d. product measure in high D is
    # nearly Gaussian (CLT), so shape departures are only visible to a sliced test in few dims.
    uniform = (torch.rand(n, 2, generator=g) - 0.5) * math.sqrt(12.0)
    signs = torch.randint(0, 2, (n, 2), generator=g).float() * 2 - 1
    bimodal = signs * 0.9 + 0.436 * torch.randn(n, 2, generator=g)  # unit variance, two modes
    return {"collapsed": torch.full((n, 32), 0.3), "std0.1": 0.1 * z, "std3": 3.0 * z,
            "anisotropic": aniso, "uniform": uniform, "bimodal": bimodal}


def test_non_gaussian_clouds_are_many_times_above_floor():
    reg = SIGReg(num_directions=128, num_frames=None)
    g = torch.Generator().manual_seed(1)
    values = {k: float(reg(v, step=3)) for k, v in _alternatives(g).items()}
    for name, v in values.items():
        assert v > 5 * reg.floor, (name, v)


def test_padding_and_layout_do_not_change_it():
    reg = SIGReg(num_directions=64, num_frames=None)
    g = torch.Generator().manual_seed(2)
    z = torch.randn(3, 50, 8, generator=g)
    lens = torch.tensor([50, 31, 12])
    base = reg(z, lens, step=5)
    padded = torch.cat([z, torch.full((3, 20, 8), 9.0)], dim=1)
    padded[1, 31:] = -4.0
    assert torch.allclose(reg(padded, lens, step=5), base)
    flat = torch.cat([z[0, :50], z[1, :31], z[2, :12]])
    assert torch.allclose(reg(flat, step=5), base)
    # the subsampled statistic is padding-invariant too
    sub = SIGReg(num_directions=64, num_frames=40)
    assert torch.allclose(sub(padded, lens, step=5), sub(z, lens, step=5))


def test_directions_depend_on_step_only():
    reg = SIGReg(num_directions=16)
    a = reg.directions(8, 7, torch.device("cpu"))
    assert torch.allclose(a, SIGReg(num_directions=16).directions(8, 7, torch.device("cpu")))
    assert not torch.allclose(a, reg.directions(8, 8, torch.device("cpu")))
    assert torch.allclose(a.norm(dim=0), torch.ones(16))


def test_stratified_subsample_spreads_over_utterances():
    idx = stratified_subsample(10_000, 100, torch.Generator().manual_seed(0))
    assert idx.numel() == 100 and idx.unique().numel() == 100
    assert (idx.diff() > 0).all()
    assert torch.histc(idx.float(), bins=10, min=0, max=10_000).eq(10).all()


def test_subsampling_keeps_a_fixed_count():
    reg = SIGReg(num_directions=8, num_frames=100)
    reg(torch.randn(4, 200, 6), torch.tensor([200, 150, 20, 5]), step=0)
    assert int(reg.last_num_frames) == 100


def test_float32_under_autocast():
    reg = SIGReg(num_directions=32, num_frames=None)
    z = torch.randn(512, 8)
    ref = reg(z, step=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        val = reg(z.bfloat16(), step=1)
    assert val.dtype == torch.float32
    assert abs(float(val) - float(reg(z.bfloat16().float(), step=1))) < 1e-4
    assert abs(float(val) - float(ref)) < 0.2 * float(ref) + 0.1


def _moments(z: torch.Tensor) -> tuple[float, float, float]:
    m, sd = z.mean(0), z.std(0)
    skew = ((z - m) ** 3).mean(0) / sd**3
    return m.abs().max().item(), (sd - 1).abs().max().item(), skew.abs().max().item()


def test_gradient_descent_gaussianises_a_skewed_cloud():
    torch.manual_seed(3)
    gam = torch.distributions.Gamma(4.0, 1.0).sample((256, 4))
    x0 = (gam - 4.0) / 2.0 * 0.5 + 1.0  # skew 1, mean 1, std 0.5
    m0, s0, k0 = _moments(x0)
    assert m0 > 0.8 and s0 > 0.4 and k0 > 0.8
    reg = SIGReg(num_directions=16, num_frames=None)
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.SGD([x], lr=1.0)  # plain gradient flow on the points themselves
    start = reg(x0, step=0).item()
    for step in range(100):
        loss = reg(x, step=step)
        opt.zero_grad()
        loss.backward()
        opt.step()
    m, s, k = _moments(x.detach())
    assert reg(x.detach(), step=10_000).item() < 0.01 * start
    assert m < 0.1 and s < 0.1 and k < 0.6 * k0, (m, s, k)


def test_effective_rank_reads_collapse():
    z = torch.randn(500, 8)
    assert effective_rank(z) > 7.0
    assert effective_rank(z[:, :1].repeat(1, 8)) < 1.5


def test_empty_input_is_zero():
    reg = SIGReg(num_directions=8)
    z = torch.randn(2, 5, 4, requires_grad=True)
    val = reg(z, torch.tensor([0, 0]), step=0)
    assert val.item() == 0.0


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4, 5)])
def test_bad_shapes(shape):
    with pytest.raises(ValueError):
        SIGReg(num_directions=4)(torch.randn(*shape), step=0)
