"""k-means on feature frames for the PNMI evaluation, written to be the one implementation that
the masked-unit targets of stage 3 (``speechae.data.targets.fit_kmeans``) also call.

scikit-learn's MiniBatchKMeans (Sculley 2010) with 3 initialisations and at most 100 passes,
as HuBERT's first-iteration clustering (fairseq ``learn_kmeans.py`` uses MiniBatchKMeans too).
"""

from __future__ import annotations

import numpy as np


def fit_kmeans(frames: np.ndarray, k: int, seed: int = 0, max_frames: int = 50_000,
               batch_size: int = 2048):  # noqa: ANN201 -- sklearn estimator
    """MiniBatchKMeans with ``k`` clusters on (N, D) frames.

    At most ``max_frames`` frames (a seeded random subset) are used for the fit.  ``k`` is
    lowered to the number of frames when there are fewer (tiny test sets)."""
    from sklearn.cluster import MiniBatchKMeans

    frames = np.asarray(frames)
    if frames.ndim != 2 or len(frames) == 0:
        raise ValueError(f"k-means needs (N, D) frames with N > 0, got shape {frames.shape}")
    rng = np.random.default_rng(seed)
    if len(frames) > max_frames:
        frames = frames[rng.choice(len(frames), max_frames, replace=False)]
    km = MiniBatchKMeans(n_clusters=min(k, len(frames)), random_state=seed, batch_size=batch_size, n_init=3,
                         max_iter=100)
    km.fit(frames.astype(np.float32))
    return km
