"""SIGReg: sketched isotropic-Gaussian regularizer (LeJEPA, Balestriero & LeCun, arXiv 2511.08544).

The latent frames Z (N, D) are projected on M random unit directions; along each direction the
Epps-Pulley statistic compares the empirical characteristic function with that of N(0, 1):

    EP_m = N * integral_R |phi_m(t) - exp(-t^2/2)|^2 w(t) dt,   w(t) = exp(-t^2/2),
    |.|^2 = (mean_n cos(t y_nm) - exp(-t^2/2))^2 + (mean_n sin(t y_nm))^2,

and SIGReg is the mean over directions.  The integrand is even, so the integral is taken on
[0, t_max] with trapezoid weights doubled (reference grid: 17 knots on [0, 3]).

Gaussian floor.  For y ~ N(0, 1) i.i.d., E[(mean cos - phi)^2] = Var(cos ty) / N and
E[(mean sin)^2] = Var(sin ty) / N, which sum to (1 - exp(-t^2)) / N.  Hence
E[EP] = sum_k w_k exp(-t_k^2/2) (1 - exp(-t_k^2)), independent of N: about 1.05 for the
reference grid (the continuous integral is 2 * (sqrt(pi/2) erf(3/sqrt 2)
- sqrt(pi/6) erf(3 sqrt(3/2))) = 1.0527).  :attr:`SIGReg.floor` gives the exact value for the
configured grid; a trained latent cannot go much below it, so plots should show it.

Normalisation: lambda means the same at any scale.  The reference multiplies the squared
characteristic-function distance by the number of frames N it was estimated on, so a fixed
lambda is a different strength for every batch size and world size (twice the frames, or two
DDP ranks, double both the value and the gradient).  Here ``num_frames`` is a *global frame
budget* B (over all ranks): every rank keeps at most ``B // world_size`` of its valid frames,
the squared distance is estimated on the frames kept (all ranks together), and it is
multiplied by the constant B, not by the count:

    SIGReg = B * sum_k w_k [(mean cos - phi)^2 + mean sin^2]  (mean over directions).

The estimate of the distance does not depend on how many frames it came from (only its noise
does), so value and gradient are those of "B frames of this distribution" whatever the batch,
the world size or the number of frames a batch happens to hold.  Its expectation for truly
Gaussian latents is ``floor * B / n`` when only n < B frames were available (exactly the floor
~1.05 when the budget is filled); :meth:`SIGReg.expected_floor` gives it for the last call.
With ``num_frames=None`` the classical N-scaled statistic is computed on all frames (the
strength then grows with the batch: for measurement, not for training).

Speech pitfalls handled here:
* frames are subsampled to the budget by stratified sampling over the concatenated valid
  frames: the picks are spread across utterances in proportion to their length and are
  ~N_valid/budget apart, which also thins the strong correlation of adjacent frames;
* directions are redrawn every step from a generator seeded by (seed, step), on the latent's
  device, hence identical on every DDP rank; the frame subsample is seeded by (seed, step, rank);
* computed in float32 with autocast disabled (cos/sin of large arguments in half precision
  are meaningless);
* under torch.distributed the cos/sin sums and the frame count are all-reduced (the sums with
  the autograd-aware all-reduce) so the statistic is that of the global batch.  The backward
  of that all-reduce sums the incoming gradients over ranks, so each rank's gradient is
  world_size times its share of d(global statistic); DDP's gradient averaging divides that
  factor out again, giving exactly the gradient of the global statistic.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional

import torch
import torch.distributed as dist
from torch import nn

from speechae.losses.masking import lengths_to_mask
from speechae.losses.semantic import REGULARIZERS, LossContext, register_term

if TYPE_CHECKING:
    from speechae.losses.builder import SIGRegConfig


def epps_pulley_grid(num_knots: int = 17, t_max: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Knots t (K,) and integration weights (K,): doubled trapezoid weights times exp(-t^2/2)."""
    t = torch.linspace(0.0, t_max, num_knots, dtype=torch.float64)
    dt = t_max / (num_knots - 1)
    trap = torch.full((num_knots,), 2.0 * dt, dtype=torch.float64)  # doubled: integrand is even
    trap[0] = trap[-1] = dt
    return t, trap * torch.exp(-0.5 * t**2)


def gaussian_floor(num_knots: int = 17, t_max: float = 3.0) -> float:
    """Expected Epps-Pulley statistic for exactly N(0, 1) data on this grid (any N)."""
    t, w = epps_pulley_grid(num_knots, t_max)
    return float((w * (1.0 - torch.exp(-(t**2)))).sum())


def stratified_subsample(n: int, k: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``k`` indices in [0, n): one uniformly-jittered pick per stratum of width n/k (sorted)."""
    if k >= n:
        return torch.arange(n)
    u = torch.rand(k, generator=generator, dtype=torch.float64)
    idx = torch.floor((torch.arange(k, dtype=torch.float64) + u) * (n / k)).long()
    return idx.clamp_(max=n - 1)


def _dist_world() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


class SIGReg(nn.Module):
    """Epps-Pulley SIGReg statistic of latent frames against N(0, I).

    Args:
        num_directions: M random unit directions per step (reference 256..1024).
        num_knots: integration knots on [0, t_max] (reference 17).
        t_max: upper integration limit (reference 3).
        num_frames: global frame budget B (all ranks together) after removing padding; the
            statistic is B x the squared distance, see the module docstring (None or 0: all
            frames, scaled by their count: the classical, batch-size-dependent form).
        seed: base seed of the direction / subsample generators.
        distributed: all-reduce over the default process group when it is initialised.

    ``forward(z, lengths=None, step=None)`` takes z (B, T, D) with optional lengths (B,), or
    already-flattened frames (N, D), and returns the scalar statistic (mean over directions).
    Without ``step`` an internal call counter seeds the draws (identical across ranks as long
    as every rank calls it equally often).
    """

    def __init__(self, num_directions: int = 256, num_knots: int = 17, t_max: float = 3.0,
                 num_frames: Optional[int] = 1024, seed: int = 0, distributed: bool = True) -> None:
        super().__init__()
        self.num_directions = int(num_directions)
        self.num_frames = int(num_frames) if num_frames else None
        self.seed = int(seed)
        self.distributed = distributed
        t, w = epps_pulley_grid(num_knots, t_max)
        self.register_buffer("t", t.float(), persistent=False)
        self.register_buffer("weights", w.float(), persistent=False)
        self.register_buffer("phi", torch.exp(-0.5 * t**2).float(), persistent=False)
        self._floor = gaussian_floor(num_knots, t_max)
        self._calls = 0
        self.last_num_frames: torch.Tensor | int = 0

    def expected_floor(self) -> torch.Tensor | float:
        """Expected value for N(0, I) latents at the last call's frame count (a tensor, no host
        sync): the floor when the budget was filled, ``floor * B / n`` for n < B frames."""
        if not self.num_frames:
            return self._floor
        n = self.last_num_frames
        if torch.is_tensor(n):
            return self._floor * self.num_frames / n.clamp_min(1.0)
        return self._floor * self.num_frames / max(float(n), 1.0)

    @property
    def floor(self) -> float:
        """Expected statistic for truly Gaussian latents on this grid (about 1.05 by default)."""
        return self._floor

    def directions(self, dim: int, step: int, device: torch.device) -> torch.Tensor:
        """Unit directions (D, M) for ``step``; the same on every rank."""
        device = torch.device(device)
        g = torch.Generator(device=device).manual_seed(self.seed * 1_000_003 + int(step))
        a = torch.randn(dim, self.num_directions, generator=g, device=device)
        return a / a.norm(dim=0, keepdim=True)

    def _frames(self, z: torch.Tensor, lengths: Optional[torch.Tensor], step: int) -> torch.Tensor:
        if z.dim() == 3:
            if lengths is None:
                z = z.reshape(-1, z.shape[-1])
            else:
                z = z[lengths_to_mask(lengths, z.shape[1])]
        elif z.dim() != 2:
            raise ValueError(f"SIGReg expects (B, T, D) or (N, D), got {tuple(z.shape)}")
        keep = self.frames_per_rank()
        if keep and z.shape[0] > keep:
            rank = dist.get_rank() if _dist_world() > 1 else 0
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + int(step)) * 1009 + rank + 1)
            z = z[stratified_subsample(z.shape[0], keep, g).to(z.device)]
        return z

    def frames_per_rank(self) -> Optional[int]:
        """Frames one rank keeps: its share ``B // world_size`` of the global budget."""
        if not self.num_frames:
            return None
        world = _dist_world() if self.distributed else 1
        return max(1, self.num_frames // world)

    def per_direction(self, z: torch.Tensor, lengths: Optional[torch.Tensor] = None,
                      step: Optional[int] = None) -> torch.Tensor:
        """Epps-Pulley statistic along each of the M directions, (M,) float32."""
        if step is None:
            step = self._calls
            self._calls += 1
        dev_type = z.device.type if z.device.type in ("cuda", "cpu", "xpu", "mps") else "cpu"
        with torch.autocast(device_type=dev_type, enabled=False):
            x = self._frames(z, lengths, int(step)).float()
            proj = x @ self.directions(x.shape[-1], int(step), x.device)  # (N, M)
            arg = proj.unsqueeze(-1) * self.t  # (N, M, K)
            sums = torch.stack([torch.cos(arg).sum(0), torch.sin(arg).sum(0)])  # (2, M, K)
            count = torch.tensor(float(x.shape[0]), device=x.device)
            if self.distributed and _dist_world() > 1:
                import torch.distributed.nn.functional as dnn

                sums = dnn.all_reduce(sums, op=dist.ReduceOp.SUM)
                dist.all_reduce(count, op=dist.ReduceOp.SUM)
            self.last_num_frames = count.detach()  # tensor: no host sync here
            n = count.clamp_min(1.0)
            means = sums / n
            err = (means[0] - self.phi).pow(2) + means[1].pow(2)  # (M, K)
            scale = float(self.num_frames) if self.num_frames else n  # constant B: see module doc
            return scale * (err @ self.weights) * (count > 0).float()

    def forward(self, z: torch.Tensor, lengths: Optional[torch.Tensor] = None,
                step: Optional[int] = None) -> torch.Tensor:
        """Scalar SIGReg statistic (mean over directions); see the class docstring."""
        return self.per_direction(z, lengths, step).mean()

    def extra_repr(self) -> str:
        return (f"num_directions={self.num_directions}, knots={self.t.numel()}, "
                f"t_max={float(self.t[-1]):.2f}, num_frames={self.num_frames}, floor={self.floor:.4f}")


def effective_rank(z: torch.Tensor, eps: float = 1e-12) -> float:
    """Entropy-based effective rank exp(H(s / sum s)) of the singular values of centred z (N, D)."""
    x = z.detach().float()
    x = x - x.mean(0, keepdim=True)
    s = torch.linalg.svdvals(x)
    p = s / s.sum().clamp_min(eps)
    h = -(p * torch.log(p.clamp_min(eps))).sum()
    return float(math.exp(float(h)))


# LeJEPA uses SIGReg weights 0.02..0.05.
@register_term(REGULARIZERS, "sigreg", default_weight=0.05)
def build_sigreg(c: SIGRegConfig, ctx: LossContext) -> SIGReg:
    """``sigreg`` from the typed block ``losses.sigreg``."""
    return SIGReg(c.num_directions, c.num_knots, c.t_max, c.num_frames, c.seed)
