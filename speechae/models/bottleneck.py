"""Bottlenecks: encoder features (B, T_z, C) -> continuous latent z (B, T_z, D).

Chosen by name (``model.bottleneck.kind``) in the registry :data:`BOTTLENECKS`; the built-in
kinds are:

* ``gaussian`` (VAE): linear heads for mean and log-variance; a reparameterised sample in
  training, the mean at inference.  The KL term itself is a loss (speechae.losses), not here.
* ``deterministic`` (RAE-style): a linear projection, optionally normalised, and -- in training
  only -- noise ``sigma * eps`` added to the *decoder input* with ``sigma = tau * U(0, 1)`` drawn
  per utterance.

Both zero z on padded frames so that padding never reaches a loss.

A new kind is one module that registers a builder with :func:`register_bottleneck` (and the
dataclass of its ``model.bottleneck.options``), plus its config; see docs/extending.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch
from torch import Tensor, nn

from speechae.config import ConfigError
from speechae.models.scaling import lengths_to_mask
from speechae.registry import Registry

if TYPE_CHECKING:
    from speechae.models.builder import BottleneckConfig


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


@dataclass(frozen=True)
class BottleneckContext:
    """What a bottleneck builder gets besides its settings: ``input_dim`` (C of the encoder
    output) and ``latent_dim`` (D, ``model.bottleneck.latent_dim``)."""

    input_dim: int
    latent_dim: int


@dataclass(frozen=True)
class BottleneckEntry:
    """A registry entry: ``build(settings, ctx) -> nn.Module`` (a module with the
    :class:`BottleneckOutput` contract).  ``settings`` is the typed ``model.bottleneck`` block
    when ``options`` is None (the built-in kinds), else ``model.bottleneck.options`` parsed
    strictly into the ``options`` dataclass."""

    build: Callable[[Any, BottleneckContext], nn.Module]
    options: Optional[type] = None


BOTTLENECKS: Registry[BottleneckEntry] = Registry("bottleneck")
"""Bottleneck kinds (``model.bottleneck.kind``)."""


def register_bottleneck(name: str, options: Optional[type] = None) -> Callable[[Callable[..., nn.Module]],
                                                                               Callable[..., nn.Module]]:
    """Decorator: register a builder ``fn(settings, ctx) -> nn.Module`` as bottleneck kind
    ``name`` (see :class:`BottleneckEntry`); a name can be registered once.  Returns ``fn``."""
    def add(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        BOTTLENECKS.register(name, BottleneckEntry(fn, options))
        return fn

    return add


@register_bottleneck("gaussian")
def build_gaussian(cfg: BottleneckConfig, ctx: BottleneckContext) -> GaussianBottleneck:
    """``gaussian`` from the typed block (``logvar_min/max``; ``norm`` must stay ``none``)."""
    if cfg.norm != "none":
        raise ConfigError(f"model.bottleneck.norm={cfg.norm!r} applies to the deterministic bottleneck only; "
                          "a gaussian posterior is not normalised (set norm: none)")
    return GaussianBottleneck(ctx.input_dim, ctx.latent_dim, logvar_min=cfg.logvar_min,
                              logvar_max=cfg.logvar_max)


@register_bottleneck("deterministic")
def build_deterministic(cfg: BottleneckConfig, ctx: BottleneckContext) -> DeterministicBottleneck:
    """``deterministic`` from the typed block (``norm``, ``noise_tau``)."""
    return DeterministicBottleneck(ctx.input_dim, ctx.latent_dim, norm=cfg.norm, noise_tau=cfg.noise_tau)
