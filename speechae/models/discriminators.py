"""GAN discriminators for the vocoder: multi-period (HiFi-GAN) and multi-resolution STFT (UnivNet).

Every discriminator maps a waveform ``(B, S)`` to ``(logits, feature_maps)``: a list with one
logit tensor per sub-discriminator and a list (per sub-discriminator) of the hidden activations
used by the feature-matching loss.  Channel widths are arguments: the defaults are small for
the CPU recipe; the papers' widths are noted on each class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

LRELU_SLOPE = 0.1  # HiFi-GAN

Logits = list[torch.Tensor]
FeatureMaps = list[list[torch.Tensor]]


@dataclass
class DiscriminatorConfig:
    """The ``discriminator:`` block of a vocoder experiment config.

    ``periods``: MPD periods (HiFi-GAN: 2, 3, 5, 7, 11), empty to disable; ``mpd_channels``:
    widths of its strided convs (HiFi-GAN: 32, 128, 512, 1024).  ``resolutions``: MRD
    ``(n_fft, hop, win)`` triples (Vocos: 512/128, 1024/256, 2048/512 with win = n_fft), empty
    to disable; ``mrd_channels``: its width (UnivNet / Vocos: 32).
    """

    periods: list[int] = field(default_factory=lambda: [2, 3, 5, 7, 11])
    mpd_channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    resolutions: list[list[int]] = field(default_factory=lambda: [[512, 128, 512], [1024, 256, 1024],
                                                                  [256, 64, 256]])
    mrd_channels: int = 8


def _conv_stack(x: torch.Tensor, convs: nn.ModuleList, post: nn.Module) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """leaky-ReLU conv stack then the output conv: (flattened logits, every layer's feature map)."""
    fmaps = []
    for conv in convs:
        x = F.leaky_relu(conv(x), LRELU_SLOPE)
        fmaps.append(x)
    x = post(x)
    fmaps.append(x)
    return x.flatten(1), fmaps


class PeriodDiscriminator(nn.Module):
    """HiFi-GAN period discriminator (Kong et al. 2020, Sec. 2.2): the waveform folded into
    ``(S / p, p)`` and 2D convolutions with ``(k, 1)`` kernels, so each column sees the samples
    ``p`` apart.  ``channels``: widths of the stride-3 convs; a stride-1 conv keeps the last
    width, then a 1-channel output conv."""

    def __init__(self, period: int, channels: Sequence[int] = (16, 32, 64, 128), kernel_size: int = 5) -> None:
        super().__init__()
        self.period = period
        pad = (kernel_size // 2, 0)
        chans = [1, *channels]
        convs = [weight_norm(nn.Conv2d(a, b, (kernel_size, 1), (3, 1), padding=pad)) for a, b in zip(chans, chans[1:])]
        convs.append(weight_norm(nn.Conv2d(chans[-1], chans[-1], (kernel_size, 1), 1, padding=pad)))
        self.convs = nn.ModuleList(convs)
        self.post = weight_norm(nn.Conv2d(chans[-1], 1, (3, 1), 1, padding=(1, 0)))

    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(B, S)`` -> logits ``(B, N)`` and the feature maps."""
        b, s = wav.shape
        if s % self.period:
            wav = F.pad(wav, (0, self.period - s % self.period), mode="reflect")
        return _conv_stack(wav.reshape(b, 1, -1, self.period), self.convs, self.post)


class ResolutionDiscriminator(nn.Module):
    """UnivNet resolution discriminator (Jang et al. 2021, Sec. 3.2; as in Vocos): 2D convs on
    one linear-magnitude STFT ``(frames, bins)``, strided along frequency."""

    def __init__(self, n_fft: int, hop: int, win: int, channels: int = 8) -> None:
        super().__init__()
        self.n_fft, self.hop, self.win = n_fft, hop, win
        self.register_buffer("window", torch.hann_window(win), persistent=False)
        c = channels
        self.convs = nn.ModuleList([
            weight_norm(nn.Conv2d(1, c, (3, 9), padding=(1, 4))),
            weight_norm(nn.Conv2d(c, c, (3, 9), stride=(1, 2), padding=(1, 4))),
            weight_norm(nn.Conv2d(c, c, (3, 9), stride=(1, 2), padding=(1, 4))),
            weight_norm(nn.Conv2d(c, c, (3, 9), stride=(1, 2), padding=(1, 4))),
            weight_norm(nn.Conv2d(c, c, (3, 3), padding=(1, 1))),
        ])
        self.post = weight_norm(nn.Conv2d(c, 1, (3, 3), padding=(1, 1)))

    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(B, S)`` -> logits ``(B, N)`` and the feature maps."""
        spec = torch.stft(wav.float(), self.n_fft, self.hop, self.win, self.window, center=True,
                          return_complex=True).abs()  # (B, bins, frames)
        return _conv_stack(spec.transpose(1, 2).unsqueeze(1), self.convs, self.post)  # (B, 1, frames, bins)


class MultiPeriodDiscriminator(nn.Module):
    """HiFi-GAN MPD: one :class:`PeriodDiscriminator` per period (2, 3, 5, 7, 11 in the paper)."""

    def __init__(self, periods: Sequence[int] = (2, 3, 5, 7, 11), channels: Sequence[int] = (16, 32, 64, 128)) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList(PeriodDiscriminator(p, channels) for p in periods)

    def forward(self, wav: torch.Tensor) -> tuple[Logits, FeatureMaps]:
        """``(B, S)`` -> (one logit tensor per period, one feature-map list per period)."""
        outs = [d(wav) for d in self.discriminators]
        return [o[0] for o in outs], [o[1] for o in outs]


class MultiResolutionDiscriminator(nn.Module):
    """UnivNet / Vocos MRD: one :class:`ResolutionDiscriminator` per ``(n_fft, hop, win)``."""

    def __init__(self, resolutions: Sequence[Sequence[int]] = ((512, 128, 512), (1024, 256, 1024), (256, 64, 256)),
                 channels: int = 8) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList(ResolutionDiscriminator(n, h, w, channels) for n, h, w in resolutions)

    def forward(self, wav: torch.Tensor) -> tuple[Logits, FeatureMaps]:
        """``(B, S)`` -> (one logit tensor per resolution, one feature-map list per resolution)."""
        outs = [d(wav) for d in self.discriminators]
        return [o[0] for o in outs], [o[1] for o in outs]


class CombinedDiscriminator(nn.Module):
    """MPD + MRD as one module (the vocoder task's ``discriminator``): their sub-discriminator
    outputs concatenated, MPD first."""

    def __init__(self, periods: Sequence[int] = (2, 3, 5, 7, 11), mpd_channels: Sequence[int] = (16, 32, 64, 128),
                 resolutions: Sequence[Sequence[int]] = ((512, 128, 512), (1024, 256, 1024), (256, 64, 256)),
                 mrd_channels: int = 8) -> None:
        super().__init__()
        self.parts = nn.ModuleList()
        if periods:
            self.parts.append(MultiPeriodDiscriminator(periods, mpd_channels))
        if resolutions:
            self.parts.append(MultiResolutionDiscriminator(resolutions, mrd_channels))
        if not len(self.parts):
            raise ValueError("a discriminator needs at least one period or one resolution")

    def forward(self, wav: torch.Tensor) -> tuple[Logits, FeatureMaps]:
        """``(B, S)`` -> (logits, feature maps) of every sub-discriminator."""
        logits: Logits = []
        fmaps: FeatureMaps = []
        for part in self.parts:
            lg, fm = part(wav)
            logits += lg
            fmaps += fm
        return logits, fmaps


def build_discriminator(cfg: DiscriminatorConfig) -> CombinedDiscriminator:
    """The discriminator described by ``cfg`` (the only reader of DiscriminatorConfig)."""
    return CombinedDiscriminator(periods=cfg.periods, mpd_channels=cfg.mpd_channels,
                                 resolutions=[tuple(r) for r in cfg.resolutions], mrd_channels=cfg.mrd_channels)
