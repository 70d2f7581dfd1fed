"""Discrete-unit quality of continuous features: k-means codes scored against phone alignments.

* Phone labels reach a feature frame through its **centre**: feature frame ``j`` at rate
  ``r`` Hz covers input frames ``[j*R, (j+1)*R)`` of the 100 Hz alignment (``R = 100/r``) and
  takes the phone of input frame ``floor((j + 0.5) * R)``.
* **PNMI** = I(phone; code) / H(phone) from the joint counts of (phone, code) over frames with
  a phone (HuBERT, Hsu et al. 2021): 1 when the code determines the phone, 0 when independent.
* **phone purity** = sum_code max_phone n(phone, code) / N: accuracy of predicting the phone as
  the most frequent phone of the frame's code; **cluster purity** is the converse.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def phones_at_rate(phones: np.ndarray, num_frames: int, frame_rate: float, input_rate: float = 100.0) -> np.ndarray:
    """Phone id (or -1) of each of ``num_frames`` feature frames at ``frame_rate`` Hz, from the
    frame-level alignment ``phones`` (T,) at ``input_rate`` Hz (centre-frame rule)."""
    ratio = input_rate / frame_rate
    idx = np.floor((np.arange(num_frames) + 0.5) * ratio).astype(np.int64)
    out = np.full(num_frames, -1, dtype=np.int64)
    ok = idx < len(phones)
    out[ok] = phones[idx[ok]]
    return out


def pnmi(phones: np.ndarray, codes: np.ndarray) -> dict[str, float]:
    """PNMI, phone purity, cluster purity and H(phone) (nats) from aligned frame labels.

    Frames with a negative phone id are ignored."""
    phones = np.asarray(phones).ravel()
    codes = np.asarray(codes).ravel()
    keep = phones >= 0
    phones, codes = phones[keep], codes[keep]
    if phones.size == 0:
        raise ValueError("no frames with a phone label")
    _, p_idx = np.unique(phones, return_inverse=True)
    _, c_idx = np.unique(codes, return_inverse=True)
    joint = np.zeros((p_idx.max() + 1, c_idx.max() + 1))
    np.add.at(joint, (p_idx, c_idx), 1.0)
    n = joint.sum()
    pj = joint / n
    pp, pc = pj.sum(1), pj.sum(0)
    h_phone = float(-(pp[pp > 0] * np.log(pp[pp > 0])).sum())
    nz = pj > 0
    mi = float((pj[nz] * np.log(pj[nz] / (pp[:, None] * pc[None, :])[nz])).sum())
    return {
        "pnmi": mi / h_phone if h_phone > 0 else 0.0,
        "phone_purity": float(joint.max(0).sum() / n),
        "cluster_purity": float(joint.max(1).sum() / n),
        "h_phone_nats": h_phone,
        "num_frames": int(n),
        "codes_used": int((joint.sum(0) > 0).sum()),
    }


def fit_kmeans(frames: np.ndarray, k: int, seed: int = 0, max_frames: int = 50_000):
    """MiniBatchKMeans with ``k`` clusters on (N, D) frames (subsampled to ``max_frames``)."""
    from sklearn.cluster import MiniBatchKMeans

    rng = np.random.default_rng(seed)
    if len(frames) > max_frames:
        frames = frames[rng.choice(len(frames), max_frames, replace=False)]
    k = min(k, len(frames))
    km = MiniBatchKMeans(n_clusters=k, random_state=seed, batch_size=2048, n_init=3, max_iter=100)
    km.fit(frames.astype(np.float32))
    return km


def kmeans_pnmi(train_feats: Sequence[np.ndarray], test_feats: Sequence[np.ndarray],
                test_phones: Sequence[np.ndarray], k: int = 50, seed: int = 0) -> dict[str, float]:
    """Fit k-means on the training split's frames, assign the test frames, score PNMI.

    ``test_phones[i]`` are already at the features' rate (see :func:`phones_at_rate`)."""
    from speechae.eval.probes import Standardizer

    norm = Standardizer(train_feats)  # k-means is scale-sensitive; z-score with train stats
    km = fit_kmeans(np.concatenate([norm(f) for f in train_feats]), k, seed)
    codes = [km.predict(norm(f)) for f in test_feats]
    out = pnmi(np.concatenate(test_phones), np.concatenate(codes))
    out["k"] = int(km.n_clusters)
    return out
