"""Vocoder objectives: GAN losses, feature matching, mel L1 and multi-resolution STFT.

Pure functions of discriminator outputs (lists with one tensor per sub-discriminator, as
:mod:`speechae.models.discriminators` returns them) and of waveforms:

* hinge GAN (Lim & Ye 2017; used by Vocos / MelGAN):
  ``L_D = E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(s)))]``, ``L_G = E[max(0, 1 - D(G(s)))]``;
* least-squares GAN (Mao et al. 2017; used by HiFi-GAN):
  ``L_D = E[(D(x) - 1)^2] + E[D(G(s))^2]``, ``L_G = E[(D(G(s)) - 1)^2]``;
  both summed over sub-discriminators, as HiFi-GAN and Vocos do;
* feature matching (Larsen et al. 2016; MelGAN / HiFi-GAN): L1 between the discriminator's
  hidden activations on real and generated audio, the real ones detached;
* mel L1 (HiFi-GAN's reconstruction term) on the project's own features
  (:func:`speechae.audio.fbank_module`), so that the vocoder is trained on exactly what it
  inverts;
* multi-resolution STFT (Yamamoto et al. 2020, Parallel WaveGAN): spectral convergence plus
  log-magnitude L1, re-exported from :mod:`speechae.losses.reconstruction` (one implementation).
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import nn

from speechae.audio import fbank_module, num_frames
from speechae.losses.reconstruction import MultiResolutionSTFTLoss

GanKind = Literal["hinge", "lsgan"]


def _check_kind(kind: str) -> None:
    if kind not in ("hinge", "lsgan"):
        raise ValueError(f"GAN loss kind must be hinge or lsgan, got {kind!r}")


def discriminator_loss(real: Sequence[torch.Tensor], fake: Sequence[torch.Tensor],
                       kind: GanKind = "hinge") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Discriminator loss summed over sub-discriminators (``fake`` should be detached from the
    generator).  Returns (loss, metrics ``adv/d_real``, ``adv/d_fake``: the two halves)."""
    _check_kind(kind)
    real_terms, fake_terms = [], []
    for r, f in zip(real, fake, strict=True):
        if kind == "hinge":
            real_terms.append(torch.relu(1 - r.float()).mean())
            fake_terms.append(torch.relu(1 + f.float()).mean())
        else:
            real_terms.append(((r.float() - 1) ** 2).mean())
            fake_terms.append((f.float() ** 2).mean())
    lr, lf = torch.stack(real_terms).sum(), torch.stack(fake_terms).sum()
    return lr + lf, {"adv/d_real": lr.detach(), "adv/d_fake": lf.detach()}


def generator_loss(fake: Sequence[torch.Tensor], kind: GanKind = "hinge") -> torch.Tensor:
    """Adversarial loss of the generator, summed over sub-discriminators."""
    _check_kind(kind)
    if kind == "hinge":
        terms = [torch.relu(1 - f.float()).mean() for f in fake]
    else:
        terms = [((f.float() - 1) ** 2).mean() for f in fake]
    return torch.stack(terms).sum()


def feature_matching_loss(real: Sequence[Sequence[torch.Tensor]], fake: Sequence[Sequence[torch.Tensor]],
                          reduction: Literal["mean", "sum"] = "mean") -> torch.Tensor:
    """L1 between hidden activations: ``mean |r - f|`` per layer, then the mean (or, as
    HiFi-GAN, the sum) over every layer of every sub-discriminator.  ``real`` is detached."""
    terms = [(r.detach().float() - f.float()).abs().mean()
             for rs, fs in zip(real, fake, strict=True) for r, f in zip(rs, fs, strict=True)]
    total = torch.stack(terms)
    return total.mean() if reduction == "mean" else total.sum()


class MelL1Loss(nn.Module):
    """Mean absolute difference of the log-mel features (:func:`speechae.audio.fbank_module`)
    of two waveforms, over the valid frames ``num_frames(lengths)``.

    The features' log is floored at float eps (log 1.19e-7 = -15.9); ``floor`` raises that
    floor for both sides (e.g. -11.5 = log 1e-5 as HiFi-GAN's mel loss), so that digital
    silence does not dominate the loss.  None keeps the features exactly.
    The filterbank constants are kept outside ``state_dict`` and ``parameters()``.
    """

    def __init__(self, num_mel_bins: int = 80, sampling_rate: int = 16000, floor: float | None = None) -> None:
        super().__init__()
        self._fbank = [fbank_module(num_mel_bins, sampling_rate)]  # a list: not a registered submodule
        self.floor = floor

    def features(self, wav: torch.Tensor) -> torch.Tensor:
        """``(B, S)`` -> log-mel ``(B, T, F)`` (floored when ``floor`` is set)."""
        fb = self._fbank[0]
        if fb._fb.device != wav.device:
            fb.to(wav.device)
        feats = fb(wav.float())
        return feats if self.floor is None else feats.clamp_min(self.floor)

    def forward(self, wav_hat: torch.Tensor, wav: torch.Tensor, lengths: torch.Tensor | None = None,
                target_feats: torch.Tensor | None = None) -> torch.Tensor:
        """``wav_hat``, ``wav`` ``(B, S)``; ``lengths`` ``(B,)`` samples (None: all).  ``target_feats``
        may pass precomputed features of ``wav`` (the data loader's ``features``)."""
        pred = self.features(wav_hat)
        target = self.features(wav) if target_feats is None else (
            target_feats.float() if self.floor is None else target_feats.float().clamp_min(self.floor))
        t = min(pred.shape[1], target.shape[1])
        diff = (pred[:, :t] - target[:, :t]).abs().mean(-1)  # (B, T)
        if lengths is None:
            return diff.mean()
        frames = torch.tensor([num_frames(int(n)) for n in lengths], device=diff.device)
        mask = (torch.arange(t, device=diff.device)[None] < frames[:, None]).to(diff.dtype)
        return (diff * mask).sum() / mask.sum().clamp_min(1)


__all__ = ["MelL1Loss", "MultiResolutionSTFTLoss", "discriminator_loss", "feature_matching_loss", "generator_loss"]
