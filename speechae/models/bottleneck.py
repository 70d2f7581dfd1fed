"""Bottlenecks: encoder features (B, T_z, C) -> continuous latent z (B, T_z, D).

Two kinds, chosen by name in :data:`BOTTLENECKS`:

* ``gaussian`` (VAE): linear heads for mean and log-variance; a reparameterised sample in
  training, the mean at inference.  The KL term itself is a loss (speechae.losses), not here.
* ``deterministic`` (RAE-style): a linear projection, optionally normalised, and -- in training
  only -- noise ``sigma * eps`` added to the *decoder input* with ``sigma = tau * U(0, 1)`` drawn
  per utterance.

Both zero z on padded frames so that padding never reaches a loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from speechae.models.scaling import lengths_to_mask


@dataclass
class BottleneckOutput:
    """z (B, T_z, D): the latent (gaussian: the sample in training, the mean in eval);
    decoder_input: what the decoder receives (z plus decoder-input noise, if any);
    mean / logvar: posterior parameters (gaussian only, else None); metrics: floats to log."""

    z: Tensor
    lengths: Tensor
    mean: Tensor | None = None
    logvar: Tensor | None = None
    decoder_input: Tensor | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def _latent_metrics(z: Tensor, valid: Tensor) -> dict[str, float]:
    """Cheap diagnostics over valid frames: mean |z| and the average per-channel std."""
    with torch.no_grad():
        zv = z[valid].float()
        if zv.shape[0] < 2:
            return {}
        return {"z/abs_mean": zv.abs().mean().item(), "z/channel_std": zv.std(dim=0).mean().item()}


class GaussianBottleneck(nn.Module):
    """Diagonal Gaussian posterior per latent frame.

    ``logvar`` is clamped to ``[logvar_min, logvar_max]``: without it, early training can send
    exp(logvar) to inf/0 and the KL and sample to non-finite values.
    """

    def __init__(self, input_dim: int, latent_dim: int, logvar_min: float = -12.0,
                 logvar_max: float = 6.0) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.proj = nn.Linear(input_dim, 2 * latent_dim)
        self.logvar_min, self.logvar_max = logvar_min, logvar_max

    def forward(self, x: Tensor, lengths: Tensor) -> BottleneckOutput:
        valid = lengths_to_mask(lengths, x.shape[1])
        vmask = valid.unsqueeze(-1).to(x.dtype)
        mean, logvar = self.proj(x).chunk(2, dim=-1)
        logvar = logvar.clamp(self.logvar_min, self.logvar_max)
        mean, logvar = mean * vmask, logvar * vmask
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp() * vmask if self.training else mean
        metrics = _latent_metrics(mean, valid)
        if metrics:
            metrics["z/posterior_std"] = (0.5 * logvar[valid]).exp().mean().item()
        return BottleneckOutput(z, lengths, mean, logvar, z, metrics)


class ChannelNorm(nn.Module):
    """Per-channel standardisation with running statistics (BatchNorm over valid frames only,
    no affine): z keeps a fixed per-channel scale, so decoder-input noise ``tau`` has a stable
    meaning relative to the signal (RAE normalises latents per channel for the same reason)."""

    def __init__(self, dim: int, momentum: float = 0.01, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))

    def forward(self, z: Tensor, valid: Tensor) -> Tensor:
        if self.training:
            zv = z[valid].float()
            mean, var = zv.mean(dim=0), zv.var(dim=0, unbiased=False)
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_var.lerp_(var.detach(), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        return ((z - mean) * (var + self.eps).rsqrt()).to(z.dtype)


class DeterministicBottleneck(nn.Module):
    """Linear projection to z with optional normalisation and training-time decoder-input noise.

    norm: ``none``; ``frame`` -- non-affine LayerNorm over channels of each frame (stateless,
    identical in train and eval); ``channel`` -- :class:`ChannelNorm` (running statistics).
    noise_tau: sigma = noise_tau * U(0, 1) per utterance, training only (0 disables).
    """

    def __init__(self, input_dim: int, latent_dim: int, norm: str = "none",
                 noise_tau: float = 0.0) -> None:
        super().__init__()
        if norm not in ("none", "frame", "channel"):
            raise ValueError(f"unknown latent norm {norm!r}")
        self.latent_dim, self.norm_kind, self.noise_tau = latent_dim, norm, noise_tau
        self.proj = nn.Linear(input_dim, latent_dim)
        self.channel_norm = ChannelNorm(latent_dim) if norm == "channel" else None

    def forward(self, x: Tensor, lengths: Tensor) -> BottleneckOutput:
        valid = lengths_to_mask(lengths, x.shape[1])
        vmask = valid.unsqueeze(-1).to(x.dtype)
        z = self.proj(x)
        if self.norm_kind == "frame":
            z = nn.functional.layer_norm(z, (self.latent_dim,))
        elif self.channel_norm is not None:
            z = self.channel_norm(z, valid)
        z = z * vmask
        dec_in = z
        if self.training and self.noise_tau > 0:
            sigma = self.noise_tau * torch.rand(z.shape[0], 1, 1, device=z.device, dtype=z.dtype)
            dec_in = z + sigma * torch.randn_like(z) * vmask
        return BottleneckOutput(z, lengths, None, None, dec_in, _latent_metrics(z, valid))


BOTTLENECKS: dict[str, type[nn.Module]] = {
    "gaussian": GaussianBottleneck,
    "deterministic": DeterministicBottleneck,
}
