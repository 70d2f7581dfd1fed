"""Stage 3 uses the project's one DCT and one k-means (issue 10, item 6)."""

import numpy as np
from scipy.fft import dct

from speechae.data.targets import mfcc_from_fbank


def test_mfcc_is_the_orthonormal_dct_ii_of_the_log_mel():
    fb = np.random.default_rng(0).normal(size=(30, 80))
    ref = dct(fb, type=2, axis=1, norm="ortho")[:, :13]  # an independent DCT-II
    np.testing.assert_allclose(mfcc_from_fbank(fb)[:, :13], ref, atol=1e-5)
    assert mfcc_from_fbank(fb).shape == (30, 39)


def test_stage3_kmeans_is_the_shared_one(monkeypatch, tiny_dataset):
    import speechae.utils.kmeans as shared
    from speechae.data import targets
    from speechae.data.datamodule import load_cuts

    calls = []
    real = shared.fit_kmeans
    monkeypatch.setattr(shared, "fit_kmeans", lambda *a, **k: calls.append(k) or real(*a, **k))
    km = targets.fit_kmeans(load_cuts(tiny_dataset.cuts("train")).subset(first=3), 4, seed=1)
    assert calls and km.n_clusters == 4
