"""Test dummies for models (shipped in the package so tests, benchmarks and recipes share them)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from speechae.models.scaling import iter_scheduled_floats

ODD_LENGTHS = (163, 101, 37)


def no_skipping(model: nn.Module) -> nn.Module:
    """Pin every skip-rate schedule to 0 so training-mode forwards use every module."""
    for sf in iter_scheduled_floats(model):
        if "skip" in sf.name:
            sf.override = 0.0
    return model


def make_batch(lengths: Sequence[int] = ODD_LENGTHS, num_mel_bins: int = 80,
               seed: int = 0) -> tuple[Tensor, Tensor]:
    """Zero-padded random log-mel-like batch (B, max(lengths), F) and its lengths (B,)."""
    g = torch.Generator().manual_seed(seed)
    t = max(lengths)
    x = torch.randn(len(lengths), t, num_mel_bins, generator=g) * 2.0 - 5.0
    lens = torch.tensor(list(lengths))
    x = x * (torch.arange(t)[None, :, None] < lens[:, None, None])
    return x, lens
