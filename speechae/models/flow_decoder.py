"""A conditional flow-matching decoder: encoder features (B, T_c, C) -> log-mel (B, T, F).

Training regresses the velocity of the optimal-transport conditional path (Lipman et al. 2023,
"Flow Matching for Generative Modeling", Sec. 4.1, Eq. 20-23)::

    x0 ~ N(0, I),  t ~ U(0, 1),  x1 = normalised target mel
    x_t = (1 - (1 - sigma_min) t) x0 + t x1
    u_t = x1 - (1 - sigma_min) x0
    L   = E || v_theta(x_t, t, c) - u_t ||^2        (mean over valid frames and mel bins)

Sampling integrates dx/dt = v_theta(x, t, c) from t = 0 (noise) to t = 1 with a fixed-step
Euler or midpoint solver; ``nfe`` is the number of evaluations of the ODE field (Euler: one per
step; midpoint: two per step).  Classifier-free guidance (Ho & Salimans 2022; Voicebox, Le et
al. 2023, Sec. 3.3): in training the condition is dropped (zeroed) per utterance with
probability ``cond_dropout``; at sampling ``v = (1 + alpha) v(x, t, c) - alpha v(x, t, 0)``
with ``alpha = guidance`` (0: no guidance, one network pass per evaluation; > 0: the
conditional and unconditional passes run as one doubled batch).

The velocity network is a stack of ConvNeXt blocks (Vocos-style: depthwise conv, norm,
pointwise MLP) at the mel frame rate, with the time embedding injected by adaptive LayerNorm
(scale, shift, gate; DiT's adaLN-Zero).  The condition is upsampled frame-locally (one linear
map from each condition frame to ``frame_ratio`` output frames, as :class:`LatentDecoder`),
layer-normed and added to the projected noisy mel.  Padded frames are zeroed before every
convolution, so padding never reaches a valid frame.

Mel normalisation: the flow starts from N(0, I), so targets are standardised per mel bin with
statistics accumulated over the first ``norm_frames`` valid training frames and then frozen
(buffers, saved in checkpoints); before any statistics exist the identity is used.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechae.models.scaling import lengths_to_mask

Field = Callable[[Tensor, Tensor], Tensor]


# ----------------------------------------------------------------------------- the formulas


def ot_path(x0: Tensor, x1: Tensor, t: Tensor, sigma_min: float) -> tuple[Tensor, Tensor]:
    """Point ``x_t`` and target velocity ``u_t`` of the OT conditional path (Lipman et al. 2023,
    Eq. 20-23).  x0, x1: (B, T, F); t: (B,) in [0, 1]."""
    tt = t.to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
    xt = (1.0 - (1.0 - sigma_min) * tt) * x0 + tt * x1
    return xt, x1 - (1.0 - sigma_min) * x0


def flow_matching_loss(velocity: Field, x1: Tensor, valid: Tensor, sigma_min: float,
                       x0: Tensor, t: Tensor) -> Tensor:
    """Conditional flow-matching loss: mean over valid frames and bins of
    ``|| velocity(x_t, t) - u_t ||^2`` on the OT path from ``x0`` to ``x1``.

    velocity: ``fn(x_t (B, T, F), t (B,)) -> (B, T, F)``; valid: bool (B, T)."""
    xt, target = ot_path(x0, x1, t, sigma_min)
    err = (velocity(xt, t).float() - target.float()) ** 2
    m = valid.to(err.dtype).unsqueeze(-1)
    return (err * m).sum() / (m.sum() * err.shape[-1]).clamp_min(1.0)


def integrate(field: Field, x0: Tensor, nfe: int, method: Literal["euler", "midpoint"] = "euler") -> Tensor:
    """Solve dx/dt = field(x, t) from t = 0 to 1 with ``nfe`` field evaluations.

    ``euler``: nfe steps of 1/nfe.  ``midpoint``: nfe // 2 steps (nfe must be even), each
    ``x + dt * f(x + dt/2 f(x, t), t + dt/2)``.  ``t`` is passed as a (B,) tensor."""
    if nfe < 1:
        raise ValueError(f"nfe must be >= 1, got {nfe}")
    b = x0.shape[0]
    x = x0
    if method == "euler":
        dt = 1.0 / nfe
        for i in range(nfe):
            x = x + dt * field(x, torch.full((b,), i * dt, device=x.device, dtype=x.dtype))
        return x
    if method == "midpoint":
        if nfe % 2:
            raise ValueError(f"the midpoint solver needs an even nfe, got {nfe}")
        steps = nfe // 2
        dt = 1.0 / steps
        for i in range(steps):
            t = torch.full((b,), i * dt, device=x.device, dtype=x.dtype)
            x_mid = x + 0.5 * dt * field(x, t)
            x = x + dt * field(x_mid, t + 0.5 * dt)
        return x
    raise ValueError(f"unknown ODE method {method!r}; use euler or midpoint")


def timestep_embedding(t: Tensor, dim: int, scale: float = 1000.0) -> Tensor:
    """Sinusoidal embedding (B, dim) of t in [0, 1] (scaled as diffusion time steps)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = scale * t.float().unsqueeze(1) * freqs.unsqueeze(0)
    return torch.cat([args.sin(), args.cos()], dim=-1)


# ----------------------------------------------------------------------------- the network


class FlowBlock(nn.Module):
    """ConvNeXt block with adaptive LayerNorm: x + gate * MLP(norm(dwconv(x)) * (1 + scale) + shift),
    scale/shift/gate from the time embedding (zero-initialised: the block starts as identity)."""

    def __init__(self, dim: int, ff_dim: int, kernel_size: int, time_dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.ada = nn.Linear(time_dim, 3 * dim)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)
        self.pw1 = nn.Linear(dim, ff_dim)
        self.pw2 = nn.Linear(ff_dim, dim)

    def forward(self, x: Tensor, temb: Tensor, valid: Tensor) -> Tensor:
        """x: (B, T, C), temb: (B, time_dim), valid: (B, T) bool."""
        h = x.masked_fill(~valid.unsqueeze(-1), 0.0)
        h = self.dwconv(h.transpose(1, 2)).transpose(1, 2)
        scale, shift, gate = self.ada(temb).unsqueeze(1).chunk(3, dim=-1)
        h = self.norm(h) * (1.0 + scale) + shift
        h = self.pw2(F.gelu(self.pw1(h)))
        return x + (1.0 + gate) * h


class FlowDecoder(nn.Module):
    """Conditional flow-matching mel decoder (module docstring).

    Args:
        cond_dim: C of the condition (encoder features) at 1 / ``frame_ratio`` of the mel rate.
        frame_ratio: mel frames per condition frame.
        num_mel_bins: F.
        dim, num_blocks, ff_dim, kernel_size, time_dim: velocity network sizes.
        sigma_min: the OT path's minimum noise (Matcha-TTS uses 1e-4).
        cond_dropout: probability of dropping the condition per utterance in training (CFG).
        nfe, method, guidance: default sampler settings (overridable per call).
        norm_frames: valid frames whose statistics standardise the mel (then frozen).
        sample_seed: seed of the sampling noise when no generator is given (repeatable eval).
    """

    generative = True  # SpeechAE trains it with :meth:`loss` and decodes by sampling

    def __init__(self, cond_dim: int, frame_ratio: int, num_mel_bins: int = 80, dim: int = 128,
                 num_blocks: int = 4, ff_dim: int = 256, kernel_size: int = 7, time_dim: int = 64,
                 sigma_min: float = 1e-4, cond_dropout: float = 0.2, nfe: int = 16,
                 method: Literal["euler", "midpoint"] = "euler", guidance: float = 0.0,
                 norm_frames: int = 100_000, sample_seed: int = 0) -> None:
        super().__init__()
        self.frame_ratio, self.num_mel_bins, self.dim = int(frame_ratio), num_mel_bins, dim
        self.sigma_min, self.cond_dropout = float(sigma_min), float(cond_dropout)
        self.nfe, self.method, self.guidance = int(nfe), method, float(guidance)
        self.norm_frames, self.sample_seed, self.time_dim = int(norm_frames), int(sample_seed), time_dim
        self.cond_up = nn.Linear(cond_dim, frame_ratio * dim)
        # Normalised so that the condition enters at the scale of the projected noisy mel from the
        # first step: without it the tiny recipe's decoder learnt to ignore the condition (cond_up
        # shrank to 1/8 of in_proj; dev flow loss 0.437 with the condition, 0.454 without).
        self.cond_norm = nn.LayerNorm(dim)
        self.in_proj = nn.Linear(num_mel_bins, dim)
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList(FlowBlock(dim, ff_dim, kernel_size, dim) for _ in range(num_blocks))
        self.out_norm = nn.LayerNorm(dim)
        self.out_proj = nn.Linear(dim, num_mel_bins)
        # float32, not float64: the trainer's running average copies weights with .double(), which
        # would alias (and then overwrite) float64 buffers of the live model
        self.register_buffer("stat_count", torch.zeros(()))
        self.register_buffer("stat_sum", torch.zeros(num_mel_bins))
        self.register_buffer("stat_sumsq", torch.zeros(num_mel_bins))

    # ---------------------------------------------------------------- normalisation

    def _stats(self) -> tuple[Tensor, Tensor]:
        n = self.stat_count
        if float(n) < 2:
            return torch.zeros_like(self.stat_sum), torch.ones_like(self.stat_sum)
        mean = self.stat_sum.double() / n.double()
        var = (self.stat_sumsq.double() / n.double() - mean**2).clamp_min(1e-4)
        return mean.float(), var.sqrt().float()

    @torch.no_grad()
    def _accumulate(self, mel: Tensor, valid: Tensor) -> None:
        if float(self.stat_count) >= self.norm_frames:
            return
        x = mel[valid].double()
        self.stat_count += x.shape[0]
        self.stat_sum.add_(x.sum(0).float())
        self.stat_sumsq.add_((x**2).sum(0).float())

    def normalise(self, mel: Tensor) -> Tensor:
        """Standardised mel (per-bin statistics of the first training frames)."""
        mean, std = self._stats()
        return (mel - mean.to(mel.dtype)) / std.to(mel.dtype)

    def denormalise(self, x: Tensor) -> Tensor:
        """Inverse of :meth:`normalise`."""
        mean, std = self._stats()
        return x * std.to(x.dtype) + mean.to(x.dtype)

    # ---------------------------------------------------------------- network

    def upsample_condition(self, cond: Tensor, length: int) -> Tensor:
        """(B, T_c, C) -> (B, length, dim): each condition frame to ``frame_ratio`` frames."""
        b, t_c, _ = cond.shape
        up = self.cond_norm(self.cond_up(cond).view(b, t_c * self.frame_ratio, self.dim))
        if up.shape[1] < length:
            up = F.pad(up, (0, 0, 0, length - up.shape[1]))
        return up[:, :length]

    def velocity(self, xt: Tensor, t: Tensor, cond_up: Tensor, valid: Tensor) -> Tensor:
        """v_theta(x_t, t, c): (B, T, F) in normalised units, zero on padding.  ``cond_up`` is
        :meth:`upsample_condition`'s output (zeros = no condition)."""
        temb = self.time_mlp(timestep_embedding(t, self.time_dim).to(xt.dtype))
        h = self.in_proj(xt) + cond_up
        for block in self.blocks:
            h = block(h, temb, valid)
        v = self.out_proj(self.out_norm(h))
        return v.masked_fill(~valid.unsqueeze(-1), 0.0)

    # ---------------------------------------------------------------- training

    def loss(self, mel: Tensor, lengths: Tensor, cond: Tensor,
             generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Flow-matching loss of target ``mel`` (B, T, F) given ``cond`` (B, T_c, C).

        Noise, times and condition dropout come from ``generator`` (a CPU generator; the
        global RNG when None).  In training mode the mel statistics are accumulated first."""
        b, length, _ = mel.shape
        valid = lengths_to_mask(lengths.to(mel.device), length)
        if self.training:
            self._accumulate(mel, valid)
        x1 = self.normalise(mel).masked_fill(~valid.unsqueeze(-1), 0.0)
        x0 = torch.randn(mel.shape, generator=generator).to(mel.device, mel.dtype)
        t = torch.rand(b, generator=generator).to(mel.device, mel.dtype)
        keep = (torch.rand(b, generator=generator) >= self.cond_dropout).to(mel.device, cond.dtype)
        cond_up = self.upsample_condition(cond * keep.view(b, 1, 1), length)
        loss = flow_matching_loss(lambda x, tt: self.velocity(x, tt, cond_up, valid), x1, valid,
                                  self.sigma_min, x0, t)
        return loss, {"flow/cond_kept": keep.mean().detach()}

    # ---------------------------------------------------------------- sampling

    @torch.no_grad()
    def sample(self, cond: Tensor, lengths: Tensor, length: int, nfe: int | None = None,
               method: str | None = None, guidance: float | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """Log-mel (B, length, F) sampled given ``cond``; zero on padded frames.  Without a
        generator the noise is drawn from one seeded with ``sample_seed`` (repeatable)."""
        nfe = self.nfe if nfe is None else int(nfe)
        method = self.method if method is None else method
        alpha = self.guidance if guidance is None else float(guidance)
        if generator is None:
            generator = torch.Generator().manual_seed(self.sample_seed)
        b = cond.shape[0]
        valid = lengths_to_mask(lengths.to(cond.device), length)
        cond_up = self.upsample_condition(cond, length)
        if alpha != 0.0:
            cond_up = torch.cat([cond_up, self.upsample_condition(torch.zeros_like(cond), length)])
            valid2 = torch.cat([valid, valid])

            def field(x: Tensor, t: Tensor) -> Tensor:
                v = self.velocity(torch.cat([x, x]), torch.cat([t, t]), cond_up, valid2)
                return (1.0 + alpha) * v[:b] - alpha * v[b:]
        else:
            def field(x: Tensor, t: Tensor) -> Tensor:
                return self.velocity(x, t, cond_up, valid)

        x0 = torch.randn((b, length, self.num_mel_bins), generator=generator).to(cond.device, cond.dtype)
        x1 = integrate(field, x0.masked_fill(~valid.unsqueeze(-1), 0.0), nfe, method)  # type: ignore[arg-type]
        return self.denormalise(x1).masked_fill(~valid.unsqueeze(-1), 0.0)

    def forward(self, z: Tensor, z_lengths: Tensor, lengths: Tensor, length: int) -> Tensor:
        """The decoder contract of :mod:`speechae.models.decoder`: a sampled mel (B, length, F)
        with the default sampler settings (``z_lengths`` is implied by the padding of ``z``)."""
        return self.sample(z, lengths, length)


@dataclass
class FlowDecoderOptions:
    """``model.decoder.options`` of ``model.decoder.kind: flow`` (:class:`FlowDecoder`'s sizes and
    default sampler): an autoencoder arm whose decoder is generative.  Training regresses the
    flow-matching velocity (the arm's ``loss/recon`` is then the flow-matching loss); evaluation
    scores mels sampled with ``nfe`` steps."""

    dim: int = 128
    num_blocks: int = 4
    ff_dim: int = 256
    kernel_size: int = 7
    time_dim: int = 64
    sigma_min: float = 1e-4
    cond_dropout: float = 0.2
    nfe: int = 16
    method: Literal["euler", "midpoint"] = "euler"
    guidance: float = 0.0


def _register() -> None:
    from speechae.models.decoder import DecoderContext, register_decoder

    @register_decoder("flow", options=FlowDecoderOptions)
    def build_flow_decoder(opts: FlowDecoderOptions, ctx: DecoderContext) -> FlowDecoder:
        """``flow``: :class:`FlowDecoder` conditioned on z (upsampled frame-locally)."""
        return FlowDecoder(ctx.latent_dim, ctx.frame_ratio, num_mel_bins=ctx.num_mel_bins,
                           **dataclasses.asdict(opts))


_register()


__all__ = ["FlowBlock", "FlowDecoder", "FlowDecoderOptions", "flow_matching_loss", "integrate", "ot_path", "timestep_embedding"]
