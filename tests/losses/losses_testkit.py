"""Stand-in autoencoder obeying the AEOutput contract (docs/CONTRACTS.md), for loss tests.

Deliberately independent of speechae.models so the loss tests never depend on the model code.
Padding-exact: every layer re-zeroes padded frames, so outputs on valid frames do not depend
on how much padding a batch carries.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch import nn

from speechae.losses.masking import lengths_to_mask


@dataclasses.dataclass
class StandInOutput:
    recon: torch.Tensor
    lengths: torch.Tensor
    z: torch.Tensor
    z_mean: Optional[torch.Tensor]
    z_logvar: Optional[torch.Tensor]
    z_lengths: torch.Tensor
    encoder_out: torch.Tensor
    frame_ratio: int
    metrics: dict = dataclasses.field(default_factory=dict)


class StandInAE(nn.Module):
    """Conv encoder (stride ``ratio``) -> z (D) -> linear decoder with repeat-upsampling."""

    def __init__(self, num_mel_bins: int = 16, hidden: int = 32, latent_dim: int = 8, ratio: int = 4,
                 gaussian: bool = False) -> None:
        super().__init__()
        self.ratio = ratio
        self.gaussian = gaussian
        self.mask_embedding = nn.Parameter(torch.zeros(num_mel_bins))
        self.inp = nn.Conv1d(num_mel_bins, hidden, 5, padding=2)
        self.down = nn.Conv1d(hidden, hidden, ratio, stride=ratio)
        self.ctx = nn.Conv1d(hidden, hidden, 3, padding=1)
        self.to_z = nn.Linear(hidden, 2 * latent_dim if gaussian else latent_dim)
        self.dec = nn.Sequential(nn.Linear(latent_dim, hidden), nn.GELU(), nn.Linear(hidden, num_mel_bins * ratio))
        self.calls = 0
        self.last_batch_size = 0

    def forward(self, features: torch.Tensor, feature_lens: torch.Tensor,
                input_mask: Optional[torch.Tensor] = None) -> StandInOutput:
        self.calls += 1
        self.last_batch_size = features.shape[0]
        b, t, f = features.shape
        valid = lengths_to_mask(feature_lens, t).unsqueeze(-1).float()
        x = features
        if input_mask is not None:
            x = torch.where(input_mask.unsqueeze(-1), self.mask_embedding.expand_as(x), x)
        x = x * valid
        t_pad = -(-t // self.ratio) * self.ratio
        h = torch.nn.functional.gelu(self.inp(x.transpose(1, 2)))
        h = h * valid.transpose(1, 2)
        h = torch.nn.functional.pad(h, (0, t_pad - t))
        h = torch.nn.functional.gelu(self.down(h))
        z_lens = torch.div(feature_lens + self.ratio - 1, self.ratio, rounding_mode="floor")
        zvalid = lengths_to_mask(z_lens, h.shape[-1]).unsqueeze(1).float()
        h = h * zvalid
        h = (h + torch.nn.functional.gelu(self.ctx(h))) * zvalid
        enc = h.transpose(1, 2)
        out = self.to_z(enc)
        if self.gaussian:
            mean, logvar = out.chunk(2, dim=-1)
            z = mean + torch.randn_like(mean) * (0.5 * logvar).exp() if self.training else mean
        else:
            mean = logvar = None
            z = out
        zv = zvalid.transpose(1, 2)
        z = z * zv
        rec = self.dec(z).reshape(b, -1, f)[:, :t] * valid
        return StandInOutput(rec, feature_lens, z, None if mean is None else mean * zv,
                             None if logvar is None else logvar * zv, z_lens, enc, self.ratio,
                             {"standin/calls": float(self.calls)})


def random_batch(b: int = 3, t: int = 40, f: int = 16, seed: int = 0, lens: Optional[list[int]] = None) -> dict:
    """Batch dict with features, lengths (last utterance shorter), units, tokens."""
    g = torch.Generator().manual_seed(seed)
    if lens is None:
        lens = [t - 7 * i for i in range(b)]
    feature_lens = torch.tensor(lens)
    feats = torch.randn(b, t, f, generator=g) * lengths_to_mask(feature_lens, t).unsqueeze(-1)
    units = torch.randint(0, 5, (b, t), generator=g).masked_fill(~lengths_to_mask(feature_lens, t), -1)
    tokens = torch.randint(1, 6, (b, 4), generator=g)
    return {"features": feats, "feature_lens": feature_lens, "units": units,
            "tokens": tokens, "token_lens": torch.full((b,), 4)}


def repad(batch: dict, extra: int) -> dict:
    """The same batch with ``extra`` more padding frames (garbage values) on every per-frame key."""
    out = dict(batch)
    b, t, f = batch["features"].shape
    out["features"] = torch.cat([batch["features"], torch.full((b, extra, f), 7.0)], dim=1)
    out["units"] = torch.cat([batch["units"], torch.full((b, extra), -1, dtype=torch.long)], dim=1)
    return out
