"""Geometry of a latent space from its frames: rank, spectrum, Gaussianity, activity, KL.

* **effective rank** = exp(H(p)), p = singular values of the centred frames / their sum
  (Roy & Vetterli 2007): D for an isotropic cloud, 1 for a line.
* **covariance spectrum**: eigenvalues of the frame covariance, largest first (plotted).
* **Epps-Pulley** (SIGReg's statistic, speechae.losses.SIGReg) on a fixed frame subsample,
  averaged over several direction draws, beside its Gaussian floor (~1.05): a latent that is
  N(0, I) sits at the floor, collapsed or anisotropic latents far above it.
* **active units** (Burda et al. 2016): dimension d is active when Var_x E[z_d | x] > 0.01,
  over latent frames (E[z|x] is the posterior mean for a Gaussian bottleneck, z otherwise).
* **per-dimension KL** (Gaussian bottleneck): mean over frames of
  0.5 * (mu^2 + sigma^2 - 1 - log sigma^2) per dimension, nats.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch


def effective_rank(z: np.ndarray) -> float:
    """exp(entropy of the normalised singular values) of centred frames (N, D)."""
    x = z.astype(np.float64) - z.mean(0, keepdims=True)
    s = np.linalg.svd(x, compute_uv=False)
    p = s / max(s.sum(), 1e-12)
    p = p[p > 0]
    return float(math.exp(-(p * np.log(p)).sum()))


def covariance_spectrum(z: np.ndarray) -> np.ndarray:
    """Eigenvalues of the (D, D) frame covariance, descending."""
    c = np.cov(z.astype(np.float64), rowvar=False)
    return np.sort(np.linalg.eigvalsh(np.atleast_2d(c)))[::-1].clip(min=0.0)


def epps_pulley(z: np.ndarray, num_frames: int = 2048, num_directions: int = 256, repeats: int = 4,
                seed: int = 0) -> dict[str, float]:
    """SIGReg's Epps-Pulley statistic of frames (N, D) against N(0, I), with its floor.

    Uses :class:`speechae.losses.SIGReg` (the training regularizer itself) so the numbers match
    the training logs' ``loss/sigreg`` scale; ``repeats`` independent direction/frame draws are
    averaged.  Also reported for per-dimension standardised frames (``ep_standardized``), which
    separates "wrong scale" from "wrong shape"."""
    from speechae.losses import SIGReg

    reg = SIGReg(num_directions=num_directions, num_frames=num_frames, seed=seed, distributed=False)
    x = torch.from_numpy(z.astype(np.float32))
    xs = (x - x.mean(0)) / (x.std(0) + 1e-6)
    with torch.no_grad():
        raw = float(np.mean([float(reg(x, step=s)) for s in range(repeats)]))
        std = float(np.mean([float(reg(xs, step=s)) for s in range(repeats)]))
    return {"ep": raw, "ep_standardized": std, "ep_floor": float(reg.floor),
            "ep_num_frames": int(min(num_frames, len(z)))}


def active_units(z: np.ndarray, threshold: float = 0.01) -> int:
    """Dimensions whose posterior mean varies across frames: Var_n z[n, d] > threshold."""
    return int((z.astype(np.float64).var(0) > threshold).sum())


def per_dim_kl(mean: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    """Average KL(N(mu, sigma^2) || N(0, 1)) per dimension over frames (D,), nats."""
    mu, lv = mean.astype(np.float64), logvar.astype(np.float64)
    return (0.5 * (mu**2 + np.exp(lv) - 1.0 - lv)).mean(0)


def geometry_metrics(z: np.ndarray, logvar: np.ndarray | None = None, seed: int = 0) -> dict[str, object]:
    """All scalar geometry metrics of latent frames (N, D) (plus the KL vector when Gaussian)."""
    spec = covariance_spectrum(z)
    out: dict[str, object] = {
        "dim": int(z.shape[1]), "num_frames": int(z.shape[0]),
        "effective_rank": effective_rank(z),
        "active_units": active_units(z),
        "mean_norm": float(np.linalg.norm(z.mean(0))),
        "mean_variance": float(z.var(0).mean()),
        "top_eigenvalue_share": float(spec[0] / max(spec.sum(), 1e-12)),
        "covariance_spectrum": [float(v) for v in spec],
    }
    out.update(epps_pulley(z, seed=seed))
    if logvar is not None:
        kl = per_dim_kl(z, logvar)
        out["kl_per_dim"] = [float(v) for v in kl]
        out["kl_total_nats"] = float(kl.sum())
        out["kl_active_dims"] = int((kl > 0.01).sum())  # same threshold as active units, in nats
    return out


def plot_spectra(spectra: dict[str, Sequence[float]], path: str | Path) -> Path:
    """Covariance eigenvalues (normalised to sum 1, log scale) of several systems."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, spec in spectra.items():
        s = np.asarray(spec, dtype=np.float64)
        s = s / max(s.sum(), 1e-12)
        ax.semilogy(np.arange(1, len(s) + 1), np.maximum(s, 1e-12), marker=".", label=name)
    ax.set_xlabel("eigenvalue index")
    ax.set_ylabel("share of variance")
    ax.set_title("latent covariance spectrum")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_pca(z: np.ndarray, labels: np.ndarray, names: dict[int, str], path: str | Path, top: int = 8,
             max_points: int = 4000, seed: int = 0) -> Path:
    """2-D PCA scatter of frames coloured by their phone (the ``top`` most frequent phones)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keep = labels >= 0
    z, labels = z[keep].astype(np.float64), labels[keep]
    ids, counts = np.unique(labels, return_counts=True)
    common = ids[np.argsort(-counts)[:top]]
    sel = np.isin(labels, common)
    z, labels = z[sel], labels[sel]
    rng = np.random.default_rng(seed)
    if len(z) > max_points:
        idx = rng.choice(len(z), max_points, replace=False)
        z, labels = z[idx], labels[idx]
    x = z - z.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    p = x @ vt[:2].T
    fig, ax = plt.subplots(figsize=(6, 5))
    for k in common:
        m = labels == k
        ax.scatter(p[m, 0], p[m, 1], s=4, alpha=0.6, label=names.get(int(k), str(k)))
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title("latent frames, PCA, by phone")
    ax.legend(fontsize=7, markerscale=3, ncol=2)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
