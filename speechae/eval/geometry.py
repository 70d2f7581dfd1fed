"""Geometry of a latent space from its frames: rank, spectrum, Gaussianity, activity, KL.

Measured on **what the decoder sees**: for a Gaussian bottleneck the posterior samples
``z = mu + sigma * eps`` (one seeded draw per frame), not the means -- a perfect VAE whose
posterior is N(mu, 1/2) with mu ~ N(0, 1/2) has N(0, I) samples but means of variance 1/2;
for a deterministic bottleneck z itself (decoder-input noise is a training-time device).
Active units and the KL use the posterior parameters, as defined.

* **effective rank** = exp(H(p)), p = singular values of the centred frames / their sum
  (Roy & Vetterli 2007): D for an isotropic cloud, 1 for a line
  (:func:`speechae.losses.sigreg.effective_rank`, the training log's); for a Gaussian
  bottleneck also of the posterior means (``effective_rank_means``: the samples add isotropic
  posterior noise that carries no information).
* **covariance spectrum**: eigenvalues of the frame covariance, largest first (plotted).
* **Epps-Pulley** (Epps & Pulley 1983; the statistic of SIGReg, LeJEPA arXiv 2511.08544), in
  its classical form on n frames projected on M = 256 random unit directions a_m:
  ``EP_m = n * sum_k w_k |phi_m(t_k) - exp(-t_k^2/2)|^2`` with the grid and weights of
  :func:`speechae.losses.sigreg.epps_pulley_grid` (17 knots on [0, 3]); ``ep`` is the mean over
  directions (and over ``repeats`` draws).  For n independent N(0, I) frames its expectation
  is the floor ~1.05 whatever n (:func:`speechae.losses.sigreg.gaussian_floor`).
  Speech frames are not independent: with frame correlation 0.8 an exactly N(0, I) latent
  reads 3.8.  Hence **decorrelated frames**: the lag autocorrelation r(k) of the standardised
  channels (within utterances, mean over channels) gives the stride s = the first lag with
  |r(s)| <= ``max_corr`` (0.05; at most ``max_stride`` = 32); frames are taken every s-th
  frame of each utterance from a random offset (at most ``num_frames`` = 1024 of them, a
  random subset).  Under the null the statistic does not depend on the frame count n; away
  from it, it grows like n times the distance, so raw values compare only at similar
  ``ep_num_frames``.
  And a **calibrated null**: the same statistic, same frame counts per utterance, on
  ``null_draws`` draws of exactly N(0, I) sequences whose consecutive picks follow an AR(1)
  with coefficient r(s) (the correlation left at the stride).  Reported: ``ep`` (raw),
  ``ep_null_mean`` / ``ep_null_std`` and ``ep_std = (ep - ep_null_mean) / ep_null_std``
  (0 for a latent as Gaussian as its null, large when it is not), ``ep_floor``, ``ep_stride``,
  ``ep_lag_corr``, ``ep_num_frames``; ``ep_standardized`` is ``ep`` of per-channel z-scored
  frames (separates "wrong scale" from "wrong shape").
* **active units** (Burda et al. 2016): dimension d is active when Var_x E[z_d | x] > 0.01,
  over latent frames (E[z|x] is the posterior mean for a Gaussian bottleneck, z otherwise).
* **per-dimension KL** (Gaussian bottleneck): mean over frames of
  0.5 * (mu^2 + sigma^2 - 1 - log sigma^2) per dimension, nats.
  Both come from :class:`speechae.losses.kl.KLRegularizer`, the training regularizer's own
  ``kl/dim_XX`` and ``kl/active_units``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from speechae.losses.kl import KLRegularizer
from speechae.losses.sigreg import effective_rank as _effective_rank
from speechae.losses.sigreg import epps_pulley_grid, gaussian_floor


def effective_rank(z: np.ndarray) -> float:
    """exp(entropy of the normalised singular values) of centred frames (N, D)."""
    return _effective_rank(torch.from_numpy(np.asarray(z, dtype=np.float64)))


def covariance_spectrum(z: np.ndarray) -> np.ndarray:
    """Eigenvalues of the (D, D) frame covariance, descending."""
    c = np.cov(z.astype(np.float64), rowvar=False)
    return np.sort(np.linalg.eigvalsh(np.atleast_2d(c)))[::-1].clip(min=0.0)


def posterior_samples(means: Sequence[np.ndarray], logvars: Sequence[np.ndarray], seed: int = 0) -> list[np.ndarray]:
    """One reparameterised draw ``mu + exp(logvar / 2) * eps`` per frame (seeded)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for mu, lv in zip(means, logvars):
        m, v = torch.from_numpy(np.asarray(mu, np.float32)), torch.from_numpy(np.asarray(lv, np.float32))
        out.append((m + torch.randn(m.shape, generator=g) * (0.5 * v).exp()).numpy())
    return out


def _kl_stats(means: Sequence[np.ndarray], logvars: Sequence[np.ndarray] | None,
              threshold: float = 0.01) -> dict[str, torch.Tensor]:
    """KLRegularizer's metrics over all frames (logvar 0 when only means exist: then only the
    active-unit count is meaningful)."""
    mu = torch.from_numpy(np.concatenate(means).astype(np.float32))[None]
    lv = torch.from_numpy(np.concatenate(logvars).astype(np.float32))[None] if logvars is not None \
        else torch.zeros_like(mu)
    reg = KLRegularizer(active_threshold=threshold, log_dims=logvars is not None)
    with torch.no_grad():
        _, metrics = reg(mu, lv, torch.tensor([mu.shape[1]]))
    return metrics


def active_units(z: np.ndarray, threshold: float = 0.01) -> int:
    """Dimensions whose posterior mean varies across frames: Var_n z[n, d] > threshold."""
    return int(_kl_stats([z], None, threshold)["kl/active_units"])


def per_dim_kl(mean: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    """Average KL(N(mu, sigma^2) || N(0, 1)) per dimension over frames (D,), nats."""
    m = _kl_stats([mean], [logvar])
    return np.array([float(m[f"kl/dim_{d:02d}"]) for d in range(mean.shape[1])])


# ----------------------------------------------------------------------------- Epps-Pulley


def epps_pulley_directions(x: torch.Tensor, directions: torch.Tensor, num_knots: int = 17,
                           t_max: float = 3.0) -> torch.Tensor:
    """Classical Epps-Pulley statistic ``n * sum_k w_k |phi(t_k) - exp(-t_k^2/2)|^2`` of frames
    x (n, D) along each unit direction (D, M) -> (M,), computed in float32 like SIGReg."""
    t, w = (v.float() for v in epps_pulley_grid(num_knots, t_max))
    proj = x.float() @ directions.float()  # (n, M)
    arg = proj.unsqueeze(-1) * t  # (n, M, K)
    err = (torch.cos(arg).mean(0) - torch.exp(-0.5 * t**2)) ** 2 + torch.sin(arg).mean(0) ** 2
    return x.shape[0] * (err @ w)


def lag_correlation(utts: Sequence[np.ndarray], max_lag: int) -> np.ndarray:
    """r(k), k = 0..max_lag: autocorrelation of globally standardised channels within
    utterances, averaged over channels and utterance pairs (t, t + k)."""
    cat = np.concatenate(utts).astype(np.float64)
    mu, sd = cat.mean(0), cat.std(0) + 1e-12
    num, den = np.zeros(max_lag + 1), np.zeros(max_lag + 1)
    for u in utts:
        x = (np.asarray(u, np.float64) - mu) / sd
        for k in range(min(max_lag, len(x) - 1) + 1):
            num[k] += (x[: len(x) - k] * x[k:]).mean(1).sum()
            den[k] += len(x) - k
    return np.where(den > 0, num / np.maximum(den, 1), 0.0)


def _picks(lengths: Sequence[int], stride: int, num_frames: int, g: torch.Generator) -> list[torch.Tensor]:
    """Per utterance (all non-empty), the frame indices kept: every ``stride``-th frame from a
    random offset, then a random subset of at most ``num_frames`` in all (sorted within each
    utterance)."""
    per = []
    for n in lengths:  # the offset stays inside the utterance: every utterance gives a frame
        off = int(torch.randint(min(stride, n), (1,), generator=g))
        per.append(torch.arange(off, n, stride))
    total = sum(len(p) for p in per)
    if total > num_frames:
        keep = torch.zeros(total, dtype=torch.bool)
        keep[torch.randperm(total, generator=g)[:num_frames]] = True
        parts = torch.split(keep, [len(p) for p in per])
        per = [p[k] for p, k in zip(per, parts)]
    return per


def _ar1_like(picks: Sequence[torch.Tensor], stride: int, rho: float, dim: int, g: torch.Generator) -> torch.Tensor:
    """N(0, I) frames at the picked positions of AR(1) sequences with coefficient ``rho`` per
    stride step (a stride step apart: correlation rho; two steps: rho^2, ...)."""
    steps = [(p - p[0]) // stride for p in picks if len(p)]  # positions on each stride grid
    n = max(int(s[-1]) + 1 for s in steps)
    e = torch.randn(len(steps), n, dim, generator=g, dtype=torch.float64)
    x = torch.empty_like(e)
    x[:, 0] = e[:, 0]
    c = math.sqrt(max(1.0 - rho * rho, 0.0))
    for j in range(1, n):  # all utterances at once
        x[:, j] = rho * x[:, j - 1] + c * e[:, j]
    return torch.cat([x[u, s] for u, s in enumerate(steps)])


def _unit_directions(dim: int, m: int, g: torch.Generator) -> torch.Tensor:
    a = torch.randn(dim, m, generator=g, dtype=torch.float64)
    return a / a.norm(dim=0, keepdim=True)


def epps_pulley(utts: Sequence[np.ndarray], num_frames: int = 1024, num_directions: int = 256, repeats: int = 2,
                null_draws: int = 8, max_corr: float = 0.05, max_stride: int = 32, seed: int = 0) -> dict[str, float]:
    """Epps-Pulley statistic of the frames of ``utts`` (list of (T_i, D)) against N(0, I), on
    decorrelated frames, with its floor and its calibrated null (module docstring)."""
    utts = [np.asarray(u, np.float64) for u in utts if len(u)]
    if not utts:
        raise ValueError("no frames")
    dim = utts[0].shape[1]
    r = lag_correlation(utts, max_stride)
    below = np.nonzero(np.abs(r[1:]) <= max_corr)[0]
    stride = int(below[0]) + 1 if below.size else max_stride
    rho = float(np.clip(r[stride] if stride < len(r) else 0.0, 0.0, 0.99))
    lengths = [len(u) for u in utts]
    g = torch.Generator().manual_seed(seed)
    data = [torch.from_numpy(u) for u in utts]
    cat = torch.cat(data)
    mean, std = cat.mean(0), cat.std(0) + 1e-6
    scaled = [(d - mean) / std for d in data]
    raw, zscored, frames = [], [], 0
    for _ in range(repeats):
        picks = _picks(lengths, stride, num_frames, g)
        a = _unit_directions(dim, num_directions, g)
        x = torch.cat([d[p] for d, p in zip(data, picks)])
        raw.append(float(epps_pulley_directions(x, a).mean()))
        zscored.append(float(epps_pulley_directions(torch.cat([d[p] for d, p in zip(scaled, picks)]), a).mean()))
        frames = len(x)
    null = []
    for _ in range(null_draws):
        vals = []
        for _ in range(repeats):
            picks = _picks(lengths, stride, num_frames, g)
            vals.append(float(epps_pulley_directions(_ar1_like(picks, stride, rho, dim, g),
                                                     _unit_directions(dim, num_directions, g)).mean()))
        null.append(float(np.mean(vals)))
    ep = float(np.mean(raw))
    null_mean, null_std = float(np.mean(null)), float(np.std(null, ddof=1)) if null_draws > 1 else float("nan")
    return {"ep": ep, "ep_std": (ep - null_mean) / max(null_std, 1e-12), "ep_null_mean": null_mean,
            "ep_null_std": null_std, "ep_standardized": float(np.mean(zscored)), "ep_floor": gaussian_floor(),
            "ep_num_frames": int(frames), "ep_stride": stride, "ep_lag_corr": rho}


def geometry_metrics(feats: Sequence[np.ndarray], logvar: Sequence[np.ndarray] | None = None,
                     seed: int = 0) -> dict[str, object]:
    """All scalar geometry metrics of per-utterance latent frames (T_i, D) (posterior means and
    log-variances for a Gaussian bottleneck; see the module docstring for what is measured on
    samples)."""
    feats = [np.asarray(f) for f in feats if len(f)]
    lvs = [np.asarray(v) for v in logvar if len(v)] if logvar is not None else None
    seen = posterior_samples(feats, lvs, seed) if lvs is not None else feats
    z = np.concatenate(seen)
    spec = covariance_spectrum(z)
    kl = _kl_stats(feats, lvs)
    out: dict[str, object] = {
        "dim": int(z.shape[1]), "num_frames": int(z.shape[0]),
        "measured_on": "posterior samples" if lvs is not None else "latent",
        "effective_rank": effective_rank(z),
        "active_units": int(kl["kl/active_units"]),
        "mean_norm": float(np.linalg.norm(z.mean(0))),
        "mean_variance": float(z.var(0).mean()),
        "top_eigenvalue_share": float(spec[0] / max(spec.sum(), 1e-12)),
        "covariance_spectrum": [float(v) for v in spec],
    }
    out.update(epps_pulley(seen, seed=seed))
    if lvs is not None:
        out["effective_rank_means"] = effective_rank(np.concatenate(feats))
        per_dim = [float(kl[f"kl/dim_{d:02d}"]) for d in range(z.shape[1])]
        out["kl_per_dim"] = per_dim
        out["kl_total_nats"] = float(kl["kl/nats"])
        out["kl_active_dims"] = int(sum(v > 0.01 for v in per_dim))  # same threshold as active units, nats
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
