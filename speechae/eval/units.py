"""Discrete-unit quality of continuous features: k-means codes scored against phone alignments.

* **Frame labels.**  A frame at rate ``r`` Hz takes the value of the 100 Hz alignment frame at
  its centre, ``floor((j + 1/2) * 100 / r)`` (clipped to the last valid frame):
  :func:`speechae.losses.masking.frames_to_latent`, the same mapping that gives the
  masked-unit objective its targets in training.
* **PNMI** = I(phone; code) / H(phone) from the joint counts of (phone, code) over frames with
  a phone (Hsu et al. 2021, HuBERT, Table 1 and eq. 4): 1 when the code determines the phone,
  0 when independent.  **Phone purity** = sum_code max_phone n(phone, code) / N (accuracy of
  predicting the phone as the most frequent phone of the frame's code); **cluster purity** is
  the converse.
* **Common time base.**  These counts grow with the frames per phone, and the plug-in mutual
  information of a *finite* sample is biased upwards by about (P-1)(K-1) / (2 N ln 2) bits for
  N frames: phone-independent codes score 0.09 at 25 Hz but 0.025 at 100 Hz on the tiny
  corpus.  Every system is therefore scored on one grid of ``grid_rate`` Hz (25 by default):
  grid frame g (centre ``(g + 1/2) / grid_rate`` s) takes the phone at that instant and the
  code of the system's frame containing it.  A 100 Hz system is read at every 4th frame, a
  12.5 Hz system has each code read twice; all systems see the same N and the same phones.
* **Chance level** ``pnmi_chance``: the mean PNMI (and ``phone_purity_chance``) over
  ``permutations`` random permutations of the system's test codes at its own frame rate,
  mapped to the grid the same way: codes with the system's own code distribution and frame
  rate but no relation to the phones.  ``pnmi - pnmi_chance`` is what the codes know.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from speechae.losses.masking import frames_to_latent
from speechae.utils.kmeans import fit_kmeans

INPUT_RATE = 100.0  # Hz of the fbank frames the alignments are given at


def labels_at_rate(values: np.ndarray, num_frames: int, frame_rate: float,
                   source_rate: float = INPUT_RATE) -> np.ndarray:
    """Per-frame labels (T,) at ``source_rate`` Hz read at ``num_frames`` frames of
    ``frame_rate`` Hz by the centre rule (module docstring); int64 (num_frames,)."""
    v = torch.as_tensor(np.asarray(values), dtype=torch.long).reshape(1, -1)
    if v.shape[1] == 0:
        return np.full(num_frames, -1, dtype=np.int64)
    out = frames_to_latent(v, torch.tensor([v.shape[1]]), int(num_frames), source_rate / frame_rate)
    return out[0].numpy().astype(np.int64)


def grid_length(num_input_frames: int, grid_rate: float, source_rate: float = INPUT_RATE) -> int:
    """Grid frames whose centre lies inside an utterance of ``num_input_frames`` frames."""
    return max(0, int(np.ceil(num_input_frames * grid_rate / source_rate - 0.5)))


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


def on_grid(phones_100hz: Sequence[np.ndarray], codes: Sequence[np.ndarray], frame_rate: float,
            grid_rate: float) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated (phones, codes) read at ``grid_rate`` Hz (module docstring).

    ``phones_100hz[i]`` is utterance i's frame-level phone alignment at 100 Hz, ``codes[i]`` its
    codes at ``frame_rate`` Hz."""
    ph, cd = [], []
    for p, c in zip(phones_100hz, codes):
        n = grid_length(len(p), grid_rate)
        if n == 0 or len(c) == 0:
            continue
        ph.append(labels_at_rate(p, n, grid_rate))
        cd.append(labels_at_rate(c, n, grid_rate, source_rate=frame_rate))
    if not ph:
        raise ValueError("no utterance has both phones and codes")
    return np.concatenate(ph), np.concatenate(cd)


def grid_pnmi(phones_100hz: Sequence[np.ndarray], codes: Sequence[np.ndarray], frame_rate: float,
              grid_rate: float = 25.0, permutations: int = 5, seed: int = 0) -> dict[str, float]:
    """:func:`pnmi` on the common ``grid_rate`` grid, plus its permutation chance level."""
    out = pnmi(*on_grid(phones_100hz, codes, frame_rate, grid_rate))
    rng = np.random.default_rng(seed)
    flat = np.concatenate([np.asarray(c) for c in codes])
    cuts = np.cumsum([len(c) for c in codes])[:-1]
    chance = []
    for _ in range(permutations):
        shuffled = np.split(rng.permutation(flat), cuts)
        chance.append(pnmi(*on_grid(phones_100hz, shuffled, frame_rate, grid_rate)))
    if chance:
        out["pnmi_chance"] = float(np.mean([c["pnmi"] for c in chance]))
        out["phone_purity_chance"] = float(np.mean([c["phone_purity"] for c in chance]))
        out["chance_permutations"] = permutations
    out["grid_hz"] = float(grid_rate)
    out["frame_rate_hz"] = float(frame_rate)
    return out


def kmeans_pnmi(train_feats: Sequence[np.ndarray], test_feats: Sequence[np.ndarray],
                test_phones: Sequence[np.ndarray], frame_rate: float, k: int = 50, seed: int = 0,
                grid_rate: float = 25.0, permutations: int = 5) -> dict[str, float]:
    """Fit k-means on the training split's frames, assign the test frames, score PNMI on the
    common grid (:func:`grid_pnmi`).  ``test_phones[i]``: 100 Hz frame-level phone ids."""
    from speechae.eval.probes import Standardizer

    norm = Standardizer(train_feats)  # k-means is scale-sensitive; z-score with train stats
    km = fit_kmeans(np.concatenate([norm(f) for f in train_feats]), k, seed)
    codes = [km.predict(norm(f)) if len(f) else np.zeros(0, dtype=np.int64) for f in test_feats]
    out = grid_pnmi(test_phones, codes, frame_rate, grid_rate, permutations, seed)
    out["k"] = int(km.n_clusters)
    return out
