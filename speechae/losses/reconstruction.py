"""Reconstruction objectives on log-mel features and an interface for waveform losses.

Feature-domain terms (inputs (B, T, F) plus lengths (B,); every term is a mean over valid
frames x bins, so padding never changes it and batches of different lengths weigh alike):

* ``l1`` / ``l2``: per-element absolute / squared error on the log-mel frames;
* ``multires``: L1 between time-frequency *average-pooled* versions of the two spectrograms at
  several resolutions ``(k_t, k_f)`` (non-overlapping windows).  Pooling is length-aware
  (padding frames are excluded from each window's average) and only windows containing a
  valid frame count.  Coarse resolutions weigh the spectral envelope and slow energy contour,
  which the frame-wise L1 under-weighs relative to its many fine details -- the feature-domain
  analogue of the multi-scale mel losses of EnCodec / DAC;
* ``delta``: L1 between first differences along time (pairs of consecutive valid frames),
  which penalises smeared onsets / over-smoothed trajectories that frame-wise L1 tolerates.

Waveform losses, for a later vocoder stage, follow the :class:`WaveformLoss` protocol
``(wav_hat (B, S), wav (B, S), lengths (B,)) -> (loss, metrics)``;
:class:`MultiResolutionSTFTLoss` is one implementation (log-magnitude or log-mel L1 plus
spectral convergence over several FFT sizes, as in Parallel WaveGAN / EnCodec).
"""

from __future__ import annotations

import math
from typing import Optional, Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from speechae.losses.masking import lengths_to_mask, masked_mean


def masked_l1(x_hat: torch.Tensor, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean |x_hat - x| over valid frames and all bins; inputs (B, T, F), lengths (B,)."""
    return masked_mean((x_hat - x).abs(), lengths_to_mask(lengths, x.shape[1]))


def masked_l2(x_hat: torch.Tensor, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean (x_hat - x)^2 over valid frames and all bins; inputs (B, T, F), lengths (B,)."""
    return masked_mean((x_hat - x).pow(2), lengths_to_mask(lengths, x.shape[1]))


def pooled_l1(
    x_hat: torch.Tensor, x: torch.Tensor, lengths: torch.Tensor, k_t: int, k_f: int
) -> torch.Tensor:
    """L1 between length-aware (k_t x k_f) average-pooled spectrograms (B, T, F).

    Each window averages only its valid frames; windows without valid frames are ignored.
    """
    mask = lengths_to_mask(lengths, x.shape[1]).to(x.dtype).unsqueeze(1).unsqueeze(-1)
    mask = mask.expand(-1, -1, -1, x.shape[-1])
    diff = (x_hat - x).unsqueeze(1) * mask
    # Pool the masked difference and the mask with the same divisor; their ratio is the
    # average over valid frames only, whatever avg_pool does at ragged edges.
    num = F.avg_pool2d(diff, (k_t, k_f), stride=(k_t, k_f), ceil_mode=True)
    den = F.avg_pool2d(mask, (k_t, k_f), stride=(k_t, k_f), ceil_mode=True)
    valid = den > 0
    err = (num / den.clamp_min(1e-8)).abs() * valid.to(x.dtype)
    return err.sum() / valid.sum().clamp_min(1)


def delta_l1(x_hat: torch.Tensor, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """L1 between first time-differences of (B, T, F) spectrograms over valid frame pairs."""
    if x.shape[1] < 2:
        return (x_hat - x).sum() * 0.0
    d_hat = x_hat[:, 1:] - x_hat[:, :-1]
    d = x[:, 1:] - x[:, :-1]
    return masked_mean((d_hat - d).abs(), lengths_to_mask((lengths - 1).clamp_min(0), x.shape[1] - 1))


class ReconstructionLoss(nn.Module):
    """Weighted sum of feature-domain reconstruction terms (see module docstring).

    Args:
        l1, l2, multires, delta: weights of the four terms (0 disables a term).
        scales: (k_t, k_f) pooling resolutions for ``multires``; the term is their mean.
    """

    def __init__(
        self,
        l1: float = 1.0,
        l2: float = 0.0,
        multires: float = 1.0,
        delta: float = 0.0,
        scales: Sequence[Sequence[int]] = ((2, 2), (4, 4), (8, 8), (16, 16)),
    ) -> None:
        super().__init__()
        self.w = {"l1": float(l1), "l2": float(l2), "multires": float(multires), "delta": float(delta)}
        self.scales = [tuple(int(v) for v in s) for s in scales]

    def forward(
        self, x_hat: torch.Tensor, x: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return (weighted loss, {"recon/<term>": value}) for (B, T, F) inputs."""
        x_hat = x_hat.float()
        x = x.float()
        terms: dict[str, torch.Tensor] = {}
        if self.w["l1"]:
            terms["l1"] = masked_l1(x_hat, x, lengths)
        if self.w["l2"]:
            terms["l2"] = masked_l2(x_hat, x, lengths)
        if self.w["multires"] and self.scales:
            per = [pooled_l1(x_hat, x, lengths, kt, kf) for kt, kf in self.scales]
            terms["multires"] = torch.stack(per).mean()
        if self.w["delta"]:
            terms["delta"] = delta_l1(x_hat, x, lengths)
        total = sum((self.w[k] * v for k, v in terms.items()), x_hat.sum() * 0.0)
        return total, {f"recon/{k}": v.detach() for k, v in terms.items()}


@runtime_checkable
class WaveformLoss(Protocol):
    """Interface for waveform-domain losses: ``(wav_hat (B, S), wav (B, S), lengths (B,))``.

    Returns a scalar loss and a dict of detached diagnostic tensors.  Implementations must be
    invariant to zero-padding past ``lengths``.
    """

    def __call__(
        self, wav_hat: torch.Tensor, wav: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int, f_min: float = 0.0,
                   f_max: Optional[float] = None) -> torch.Tensor:
    """Triangular HTK-mel filterbank, (n_fft // 2 + 1, n_mels), no normalisation."""
    f_max = sample_rate / 2 if f_max is None else f_max

    def hz_to_mel(f: float) -> float:
        return 2595.0 * math.log10(1.0 + f / 700.0)

    mels = torch.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2, dtype=torch.float64)
    hz = 700.0 * (10 ** (mels / 2595.0) - 1.0)
    bins = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64).unsqueeze(1)
    lo, mid, hi = hz[:-2], hz[1:-1], hz[2:]
    up = (bins - lo) / (mid - lo).clamp_min(1e-9)
    down = (hi - bins) / (hi - mid).clamp_min(1e-9)
    return torch.clamp(torch.minimum(up, down), min=0.0).float()


class MultiResolutionSTFTLoss(nn.Module):
    """Multi-resolution STFT (or mel) loss on waveforms, padding-invariant.

    For each FFT size: L1 between log magnitudes (log mel energies when ``n_mels`` is set)
    plus spectral convergence ``||S - S_hat||_F / ||S||_F``, over STFT frames whose centre lies
    inside the utterance.  Signals are zeroed past ``lengths`` and zero-padded (not reflected)
    by n_fft/2 on both sides, so padding never leaks into a counted frame.

    Args:
        fft_sizes: FFT sizes (window = n_fft, hop = n_fft // 4).
        n_mels: mel bins per resolution (None: linear-frequency magnitudes).
        sample_rate: for the mel scale.
        eps: floor inside the log (avoids -inf on silence).
    """

    def __init__(self, fft_sizes: Sequence[int] = (512, 1024, 2048), n_mels: Optional[int] = None,
                 sample_rate: int = 16000, eps: float = 1e-5) -> None:
        super().__init__()
        self.fft_sizes = [int(n) for n in fft_sizes]
        self.eps = eps
        self.n_mels = n_mels
        for n in self.fft_sizes:
            self.register_buffer(f"win_{n}", torch.hann_window(n), persistent=False)
            if n_mels:
                self.register_buffer(f"mel_{n}", mel_filterbank(n, min(n_mels, n // 4), sample_rate),
                                     persistent=False)

    def _spec(self, wav: torch.Tensor, n: int) -> torch.Tensor:
        wav = F.pad(wav, (n // 2, n // 2))
        spec = torch.stft(wav, n, hop_length=n // 4, win_length=n, window=getattr(self, f"win_{n}"),
                          center=False, return_complex=True).abs().transpose(1, 2)  # (B, frames, bins)
        if self.n_mels:
            spec = spec @ getattr(self, f"mel_{n}")
        return spec

    def forward(self, wav_hat: torch.Tensor, wav: torch.Tensor,
                lengths: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss averaged over resolutions; inputs (B, S) float waveforms, lengths (B,) samples."""
        valid = lengths_to_mask(lengths, wav.shape[1]).to(torch.float32)
        wav_hat = wav_hat.float() * valid
        wav = wav.float() * valid
        total = wav.sum() * 0.0
        metrics = {}
        for n in self.fft_sizes:
            s_hat, s = self._spec(wav_hat, n), self._spec(wav, n)
            n_frames = torch.div(lengths + n // 4 - 1, n // 4, rounding_mode="floor")
            fmask = lengths_to_mask(n_frames, s.shape[1]).to(s.dtype).unsqueeze(-1)
            log_l1 = masked_mean((torch.log(s_hat + self.eps) - torch.log(s + self.eps)).abs(),
                                 fmask.squeeze(-1) > 0)
            sc = torch.linalg.vector_norm((s - s_hat) * fmask) / torch.linalg.vector_norm(s * fmask).clamp_min(1e-7)
            metrics[f"wav/logmag_{n}"] = log_l1.detach()
            metrics[f"wav/sc_{n}"] = sc.detach()
            total = total + log_l1 + sc
        return total / len(self.fft_sizes), metrics
