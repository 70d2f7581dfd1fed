"""KL regularizer of the VAE baseline: diagonal-Gaussian posterior against N(0, I).

Per latent frame and dimension the closed form is

    KL_d = 0.5 * (mu_d^2 + sigma_d^2 - 1 - log sigma_d^2),

summed over dimensions and averaged over valid frames (nats per latent frame).  The beta
weight and its warm-up live in the composer's weight table, not here.

Free bits (Kingma et al. 2016, "IAF", per-dimension variant): with ``free_bits = lambda > 0``
the optimised term is ``sum_d max(KL_d_bar, lambda)`` where ``KL_d_bar`` is the batch mean
(over valid frames) of dimension d's KL.  Dimensions below lambda nats per frame receive no
gradient from the KL, which stops the optimiser from pushing them all the way into
posterior collapse.  The unclamped value is always reported as ``kl/nats``.

Diagnostics: ``kl/dim_XX`` (batch-mean KL of each dimension) and ``kl/active_units``, the
number of dimensions with Var_x[E[z_d | x]] = Var over valid frames of mu_d above 0.01
(Burda et al. 2016), the classic posterior-collapse indicator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from speechae.losses.masking import lengths_to_mask
from speechae.losses.semantic import REGULARIZERS, LossContext, register_term

if TYPE_CHECKING:
    from speechae.losses.builder import KLConfig


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(N(mean, exp(logvar)) || N(0, 1)), same shape as the inputs."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)


class KLRegularizer(nn.Module):
    """KL to N(0, I) per valid latent frame with optional per-dimension free bits.

    Args:
        free_bits: lambda in nats per dimension per frame (0 disables the clamp).
        active_threshold: variance of the posterior mean above which a dimension is active.
        log_dims: emit ``kl/dim_XX`` metrics (one per dimension).
    """

    def __init__(self, free_bits: float = 0.0, active_threshold: float = 0.01, log_dims: bool = True) -> None:
        super().__init__()
        self.free_bits = float(free_bits)
        self.active_threshold = float(active_threshold)
        self.log_dims = log_dims

    def forward(self, mean: torch.Tensor, logvar: torch.Tensor,
                lengths: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """mean, logvar (B, T_z, D); lengths (B,). Returns (loss, detached metrics)."""
        mean = mean.float()
        logvar = logvar.float()
        valid = lengths_to_mask(lengths, mean.shape[1])
        mu = mean[valid]  # (N, D)
        kl = gaussian_kl(mu, logvar[valid])
        n = max(1, kl.shape[0])
        kl_dim = kl.sum(0) / n  # (D,) nats per frame
        raw = kl_dim.sum()
        loss = kl_dim.clamp_min(self.free_bits).sum() if self.free_bits > 0 else raw
        metrics = {"kl/nats": raw.detach()}
        if mu.shape[0] > 1:
            var_mu = mu.detach().var(0, unbiased=False)
            metrics["kl/active_units"] = (var_mu > self.active_threshold).sum().float()
        if self.log_dims:
            for d, v in enumerate(kl_dim.detach()):
                metrics[f"kl/dim_{d:02d}"] = v
        return loss, metrics


# beta is warmed up from 0 (Bowman et al. 2016) to a small value: KL is summed over dimensions
# while the reconstruction is a mean.
@register_term(REGULARIZERS, "kl", default_weight={"type": "linear_warmup", "start": 0.0, "end": 1.0e-3,
                                                    "steps": 2000})
def build_kl(c: KLConfig, ctx: LossContext) -> KLRegularizer:
    """``kl`` from the typed block ``losses.kl``."""
    return KLRegularizer(c.free_bits, c.active_threshold, c.log_dims)
