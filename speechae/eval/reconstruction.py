"""Reconstruction metrics on log-mel spectrograms, and the mean-spectrum reference.

All inputs are natural-log mel *power* energies (Lhotse/Kaldi fbank), shape (T, F), valid
frames only.  Definitions (per frame, then averaged over every valid frame of the test set):

* **mel-LSD (dB)**: ``sqrt(mean_f (10/ln10 * (x_f - y_f))^2)`` -- the log-spectral distance
  (Gray & Markel 1976; e.g. the speech super-resolution literature) computed over the F mel
  bands instead of linear STFT bins, hence the name: the RMS over mel bands of the dB
  difference (10*log10 of a power ratio equals 10/ln10 times the natural-log difference).
  It is not comparable with LSD figures on linear spectra.
* **mel L1**: ``mean_f |x_f - y_f|`` in natural-log units (the training loss's scale).
* **MCD (dB)**, SPTK / ESPnet convention (Kubichek 1993; ESPnet ``mcd_calculate``,
  pysptk): ``MCD = 10/ln10 * sqrt(2 * sum_{d=1}^{D} (c_d - c'_d)^2)``, c_0 (the gain) excluded,
  where c are cepstra of the log *amplitude* spectrum, ``log|X(w)| = c_0 + 2 sum_d c_d cos(d w)``.
  Here the spectrum is the mel-warped fbank sampled at the F band centres
  ``w_m = pi (m + 1/2) / F``, so ``c_d = 1/2 * DCT-II_ortho(log-mel power)_d / sqrt(2F)`` (the
  1/2 turns log power into log amplitude; cepstra of log power would give exactly twice the
  value), d = 1 .. ``num_ceps`` - 1 (24 by default).  It comes from the fbank, not from SPTK
  all-pass-warped mel-cepstra of a WORLD/STFT envelope, and has no DTW (frames are aligned by
  construction), so it is close to, not identical with, published MCD values.

The **mean-spectrum** baseline predicts every frame as the utterance's mean log-mel (or the
training set's global mean): an autoencoder that does not beat it has learnt no temporal detail.
The DCT is :func:`speechae.losses.prism.dct_matrix`, the one the Prism objective uses.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from speechae.losses.prism import dct_matrix

DB = 10.0 / math.log(10.0)  # natural-log power ratio -> dB


def frame_mel_lsd(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-frame mel-LSD in dB between log-mels x, y (T, F) -> (T,)."""
    return np.sqrt(np.mean((DB * (x - y)) ** 2, axis=-1))


def frame_mel_l1(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-frame mean absolute log-mel difference (T,)."""
    return np.mean(np.abs(x - y), axis=-1)


def amplitude_cepstrum(log_mel: np.ndarray, num_ceps: int = 25) -> np.ndarray:
    """Cepstra c_0 .. c_{num_ceps-1} (T, num_ceps) of the log *amplitude* of natural-log mel
    power (T, F), in the SPTK cosine-series normalisation (module docstring)."""
    n = log_mel.shape[-1]
    m = dct_matrix(n, dtype=torch.float64)[:num_ceps].numpy()
    return 0.5 * (log_mel @ m.T) / math.sqrt(2.0 * n)


def frame_mcd(x: np.ndarray, y: np.ndarray, num_ceps: int = 25) -> np.ndarray:
    """Per-frame mel-cepstral distortion in dB (T,), SPTK/ESPnet convention, c_0 excluded."""
    d = amplitude_cepstrum(x - y, num_ceps)[..., 1:]  # the cepstrum is linear in the log spectrum
    return DB * np.sqrt(2.0 * np.sum(d**2, axis=-1))


class ReconAccumulator:
    """Frame-weighted averages of mel-LSD, mel L1 and MCD over many utterances."""

    def __init__(self, num_ceps: int = 25) -> None:
        self.num_ceps = num_ceps
        self.sums = {"mel_lsd_db": 0.0, "mel_l1": 0.0, "mcd_db": 0.0}
        self.frames = 0
        self.utts = 0

    def add(self, target: np.ndarray, recon: np.ndarray) -> None:
        """One utterance: target and reconstruction (T, F), valid frames only."""
        if target.shape != recon.shape:
            raise ValueError(f"shape mismatch {target.shape} vs {recon.shape}")
        t, r = target.astype(np.float64), recon.astype(np.float64)
        self.sums["mel_lsd_db"] += float(frame_mel_lsd(t, r).sum())
        self.sums["mel_l1"] += float(frame_mel_l1(t, r).sum())
        self.sums["mcd_db"] += float(frame_mcd(t, r, self.num_ceps).sum())
        self.frames += t.shape[0]
        self.utts += 1

    def result(self) -> dict[str, float]:
        """``{mel_lsd_db, mel_l1, mcd_db, num_frames, num_utts}``."""
        if self.frames == 0:
            raise ValueError("no frames accumulated")
        out = {k: v / self.frames for k, v in self.sums.items()}
        out.update(num_frames=self.frames, num_utts=self.utts)
        return out


def reconstruction_metrics(pairs: Iterable[tuple[np.ndarray, np.ndarray]], num_ceps: int = 25) -> dict[str, float]:
    """mel-LSD / mel L1 / MCD averaged over all frames of (target, reconstruction) pairs."""
    acc = ReconAccumulator(num_ceps)
    for t, r in pairs:
        acc.add(t, r)
    return acc.result()


def mean_spectrum_metrics(targets: Sequence[np.ndarray], global_mean: np.ndarray | None = None,
                          num_ceps: int = 25) -> dict[str, dict[str, float]]:
    """Reference scores of predicting the per-utterance mean log-mel (and, when given, a global
    mean spectrum (F,), e.g. the training set's)."""
    out = {"utterance_mean": reconstruction_metrics(
        ((t, np.broadcast_to(t.mean(0, keepdims=True), t.shape)) for t in targets), num_ceps)}
    if global_mean is not None:
        out["global_mean"] = reconstruction_metrics(
            ((t, np.broadcast_to(global_mean[None, :], t.shape)) for t in targets), num_ceps)
    return out


def plot_spectrograms(pairs: Sequence[tuple[str, np.ndarray, np.ndarray]], path: str | Path) -> Path:
    """Input (left) vs reconstruction (right) log-mel images, one row per ``(title, x, y)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(len(pairs), 1)
    fig, axes = plt.subplots(n, 2, figsize=(10, 2.4 * n), squeeze=False)
    for row, (title, x, y) in zip(axes, pairs):
        vmin, vmax = float(np.min(x)), float(np.max(x))
        for ax, img, name in zip(row, (x, y), ("input", "reconstruction")):
            ax.imshow(img.T, origin="lower", aspect="auto", vmin=vmin, vmax=vmax, cmap="magma")
            ax.set_title(f"{title}: {name}", fontsize=8)
            ax.set_ylabel("mel bin", fontsize=8)
        row[0].set_xlabel("frame (10 ms)", fontsize=8)
        row[1].set_xlabel(f"frame (10 ms), mel-LSD {float(frame_mel_lsd(x, y).mean()):.2f} dB", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
