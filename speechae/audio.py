"""Waveform <-> log-mel: the project's features as a differentiable module, and their inversion.

The features are stage 2's (:func:`speechae.data.features.make_extractor`): Kaldi-compatible
80-bin log-mel filterbanks from Lhotse's ``Fbank`` at 16 kHz, i.e. 25 ms povey window padded to
a 512-point FFT, 10 ms hop, per-frame DC removal, pre-emphasis 0.97, 20-7600 Hz triangular mel
filters on the power spectrum, natural log floored at float32 eps (``Wav2LogFilterBank._eps``,
1.19e-7; Lhotse's ``energy_floor`` applies only to the unused energy term).  ``Fbank.extract``
runs exactly :class:`lhotse.features.kaldi.layers.Wav2LogFilterBank`, so that module *is* the
feature definition and is differentiable: it serves as the mel loss of the vocoder.

Frames (``snip_edges=False``): ``T = (S + HOP // 2) // HOP``, i.e. S/HOP rounded half up; frame t
covers samples ``[t*HOP - 120, t*HOP + 280)`` (edges reflected).  A waveform of ``T * HOP``
samples has exactly ``T`` frames, which is the length contract of every vocoder here.

:func:`griffin_lim` is the model-free baseline vocoder: non-negative least-squares inversion of
the mel filterbank, then fast Griffin-Lim (Griffin & Lim 1984; Perraudin et al. 2013) on the
features' own STFT, then the inverse pre-emphasis filter.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from lhotse.features.kaldi.layers import Wav2LogFilterBank
from torch import nn

SAMPLING_RATE = 16000
HOP = 160  # 10 ms at 16 kHz
WIN = 400  # 25 ms at 16 kHz
N_FFT = 512  # WIN rounded up to a power of two, as Kaldi does
PREEMPH = 0.97


def fbank_module(num_mel_bins: int = 80, sampling_rate: int = SAMPLING_RATE) -> nn.Module:
    """The stage-2 features as a module: waveform ``(B, S)`` -> log-mel ``(B, T, num_mel_bins)``.

    Identical to ``lhotse.Fbank(FbankConfig(num_mel_bins=...)).extract`` (which runs this very
    module) and differentiable with respect to the waveform.  Its constants (window, mel matrix)
    are frozen ``nn.Parameter``s: do not register it inside a model whose parameters are optimised
    or saved unless that is intended.  ``T = num_frames(S)``.
    """
    return Wav2LogFilterBank(sampling_rate=sampling_rate, frame_length=0.025, frame_shift=0.01,
                             num_filters=num_mel_bins, dither=0.0, snip_edges=False).eval()


def num_frames(num_samples: int, hop: int = HOP) -> int:
    """Frames of the features of ``num_samples`` samples (``snip_edges=False``): round half up."""
    return (int(num_samples) + hop // 2) // hop


def num_samples(num_frames: int, hop: int = HOP) -> int:
    """Samples a vocoder produces for ``num_frames`` frames; ``num_frames(num_samples(T)) == T``."""
    return int(num_frames) * hop


def _povey_window(device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Kaldi's povey window (Hann, symmetric, to the power 0.85), length WIN."""
    return torch.hann_window(WIN, periodic=False, device=device, dtype=dtype).pow(0.85)


def _stft(y: torch.Tensor, window: torch.Tensor, frames: int) -> torch.Tensor:
    """The features' STFT of ``y`` ``(B, frames*HOP)`` -> ``(B, frames, N_FFT//2+1)`` complex.

    Frame t covers ``y[t*HOP - 120 : t*HOP + 280]`` (zero padded outside), as in Kaldi framing.
    """
    left = (WIN - HOP) // 2
    z = F.pad(y, (left, WIN - HOP - left))
    chunks = z.unfold(-1, WIN, HOP)[:, :frames] * window
    return torch.fft.rfft(chunks, n=N_FFT)


def _istft(spec: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Least-squares inverse of :func:`_stft` (Griffin & Lim 1984, eq. 6): weighted overlap-add
    of the windowed frames divided by the summed squared window.  ``(B, T, K)`` -> ``(B, T*HOP)``."""
    b, t, _ = spec.shape
    left = (WIN - HOP) // 2
    frames = torch.fft.irfft(spec, n=N_FFT)[..., :WIN] * window  # (B, T, WIN)
    length = (t - 1) * HOP + WIN
    ola = F.fold(frames.transpose(1, 2), output_size=(1, length), kernel_size=(1, WIN), stride=(1, HOP))
    env = F.fold((window ** 2).expand(1, t, WIN).transpose(1, 2), output_size=(1, length),
                 kernel_size=(1, WIN), stride=(1, HOP))
    y = ola.reshape(b, length) / env.reshape(1, length).clamp_min(1e-8)
    return y[:, left:left + t * HOP]


def mel_to_power(fbank: torch.Tensor, mel_matrix: torch.Tensor, nnls_iter: int = 50) -> torch.Tensor:
    """Non-negative least-squares power spectrum ``P >= 0`` with ``P @ mel_matrix ~ exp(fbank)``.

    ``fbank`` ``(..., T, F)`` log-mel, ``mel_matrix`` ``(K, F)``; returns ``(..., T, K)``.  Starts
    from the pseudo-inverse clamped at a small positive value, then runs multiplicative NNLS
    updates (Lee & Seung 2001), which keep ``P`` non-negative and do not increase the squared error.
    Bins outside the filterbank's range (below 20 Hz, above 7600 Hz) stay at the floor.
    """
    mel = fbank.exp()
    fb = mel_matrix.to(mel)
    p = (mel @ torch.linalg.pinv(fb)).clamp_min(1e-10)
    numer = mel @ fb.T
    gram = fb @ fb.T
    for _ in range(nnls_iter):
        p = p * numer / (p @ gram + 1e-12)
    return p


def deemphasis(y: torch.Tensor, coeff: float = PREEMPH) -> torch.Tensor:
    """Inverse of pre-emphasis ``y[n] = x[n] - coeff * x[n-1]``: the IIR ``1 / (1 - coeff z^-1)``."""
    from scipy.signal import lfilter

    x = lfilter([1.0], [1.0, -coeff], y.detach().cpu().double().numpy(), axis=-1)
    return torch.from_numpy(np.ascontiguousarray(x)).to(device=y.device, dtype=y.dtype)


@torch.no_grad()
def griffin_lim(fbank: torch.Tensor, n_iter: int = 32, sampling_rate: int = SAMPLING_RATE,
                num_mel_bins: int = 80, momentum: float = 0.99, seed: int = 0) -> torch.Tensor:
    """Waveform from log-mel features by fast Griffin-Lim: ``(T, F)`` or ``(B, T, F)`` ->
    ``(T*HOP,)`` or ``(B, T*HOP)``.

    1. Mel inversion by non-negative least squares (:func:`mel_to_power`); magnitude = sqrt(power).
    2. Phase retrieval with the features' own analysis (povey window 400, hop 160, FFT 512): the
       fast Griffin-Lim of Perraudin, Balazs & Sondergaard (2013), ``c_n = P_C1(P_C2(t_{n-1}))``,
       ``t_n = c_n + momentum (c_n - c_{n-1})``; ``momentum=0`` is Griffin & Lim (1984).
       The initial phase is uniform random from ``seed`` (deterministic).
    3. The estimated signal is pre-emphasised (the features see ``x[n] - 0.97 x[n-1]``): undo it
       with :func:`deemphasis`.  Per-frame DC removal is not invertible and is ignored.
    """
    if sampling_rate != SAMPLING_RATE:
        raise ValueError(f"griffin_lim supports {SAMPLING_RATE} Hz features (hop {HOP}), got {sampling_rate}")
    squeeze = fbank.dim() == 2
    feats = (fbank.unsqueeze(0) if squeeze else fbank).float()
    if feats.shape[-1] != num_mel_bins:
        raise ValueError(f"expected {num_mel_bins} mel bins, got {feats.shape[-1]}")
    b, t, _ = feats.shape
    mel_matrix = fbank_module(num_mel_bins, sampling_rate)._fb.detach()  # (N_FFT//2+1, F)
    mag = mel_to_power(feats, mel_matrix.to(feats.device)).sqrt()
    window = _povey_window(feats.device)
    gen = torch.Generator().manual_seed(seed)
    phase = torch.rand(mag.shape, generator=gen).to(feats.device) * (2 * torch.pi)
    t_n = torch.polar(torch.ones_like(mag), phase)
    c_prev = torch.zeros_like(t_n)
    for _ in range(n_iter):
        c = _stft(_istft(mag * t_n / t_n.abs().clamp_min(1e-16), window), window, t)
        t_n = c + momentum * (c - c_prev)
        c_prev = c
    y = _istft(mag * t_n / t_n.abs().clamp_min(1e-16), window)
    x = deemphasis(y)
    return x[0] if squeeze else x
