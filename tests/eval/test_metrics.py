"""Properties of the evaluation metrics on constructed inputs with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from speechae.eval.abx import AbxItem, abx_error, phone_items
from speechae.eval.geometry import active_units, effective_rank, epps_pulley, per_dim_kl
from speechae.eval.probes import (ProbeConfig, classification_probe, ctc_probe_error, edit_distance,
                                  error_rate, majority_share, pool_time, stratified_split)
from speechae.eval.reconstruction import mean_spectrum_metrics, reconstruction_metrics
from speechae.eval.resources import loss_spikes, training_resources
from speechae.eval.units import pnmi


def _mels(seed: int = 0, n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(-5.0, 2.0, size=(50 + 10 * i, 80)) for i in range(n)]


# ----------------------------------------------------------------------------- reconstruction

def test_recon_metrics_zero_on_identical_and_grow_with_noise() -> None:
    mels = _mels()
    same = reconstruction_metrics((m, m.copy()) for m in mels)
    assert same["mel_lsd_db"] == pytest.approx(0.0, abs=1e-12)
    assert same["mel_l1"] == pytest.approx(0.0, abs=1e-12)
    assert same["mcd_db"] == pytest.approx(0.0, abs=1e-12)
    rng = np.random.default_rng(1)
    prev = same
    for sigma in (0.05, 0.2, 1.0):
        cur = reconstruction_metrics((m, m + rng.normal(0, sigma, m.shape)) for m in mels)
        for k in ("mel_lsd_db", "mel_l1", "mcd_db"):
            assert cur[k] > prev[k]
        prev = cur


def test_mean_spectrum_reference_beaten_by_good_reconstruction() -> None:
    mels = _mels()
    ref = mean_spectrum_metrics(mels, global_mean=np.full(80, -5.0))
    good = reconstruction_metrics((m, m + 0.01) for m in mels)
    assert good["mel_lsd_db"] < ref["utterance_mean"]["mel_lsd_db"]
    assert set(ref) == {"utterance_mean", "global_mean"}


# ----------------------------------------------------------------------------- ABX

def _abx_items(feature_fn, seed: int = 0) -> list[AbxItem]:
    rng = np.random.default_rng(seed)
    items = []
    for spk in ("s1", "s2"):
        for ctx in range(3):
            for ph in range(4):
                for _ in range(3):
                    items.append(AbxItem(feature_fn(ph, rng), ph, ctx, spk))
    return items


def test_abx_zero_for_phone_separated_features() -> None:
    def onehot(ph, rng):
        f = np.zeros((int(rng.integers(2, 5)), 8))
        f[:, ph] = 1.0
        return f + 0.01 * rng.random(f.shape)
    items = _abx_items(onehot)
    for across in (False, True):
        r = abx_error(items, across=across, max_triplets_per_cell=4, max_cells=200)
        assert r["error"] == pytest.approx(0.0, abs=1e-9)
        assert r["context"] == "triphone" and r["num_triplets"] > 50


def test_abx_chance_for_random_features() -> None:
    items = _abx_items(lambda ph, rng: rng.normal(size=(int(rng.integers(2, 5)), 8)))
    r = abx_error(items, across=False, max_triplets_per_cell=20, max_cells=1000)
    assert 0.4 < r["error"] < 0.6


def test_abx_falls_back_without_shared_context() -> None:
    rng = np.random.default_rng(0)
    items = [AbxItem(rng.normal(size=(3, 4)), ph, (i,), "s") for i, ph in enumerate([0, 0, 1, 1, 0, 1])]
    assert abx_error(items)["context"] == "none"


def test_phone_items_contexts() -> None:
    feats = np.arange(25)[:, None].astype(float)  # 1 s at 25 Hz
    items = phone_items(feats, [("a", 0.0, 0.2), ("b", 0.2, 0.4), ("c", 0.6, 0.4)], "s", 25.0, context_ms=40.0)
    assert [it.phone for it in items] == ["a", "b", "c"]
    assert items[1].context == ("a", "c") and items[0].context == ("<s>", "b")
    assert items[1].feats[:, 0].tolist() == list(range(4, 16))  # [0.16, 0.64) s: frames 4..15


# ----------------------------------------------------------------------------- PNMI

def test_pnmi_one_to_one_and_constant() -> None:
    rng = np.random.default_rng(0)
    phones = rng.integers(0, 10, 5000)
    perm = rng.permutation(10)
    one = pnmi(phones, perm[phones])
    assert one["pnmi"] == pytest.approx(1.0) and one["phone_purity"] == pytest.approx(1.0)
    const = pnmi(phones, np.zeros_like(phones))
    assert const["pnmi"] == pytest.approx(0.0, abs=1e-12)
    rnd = pnmi(phones, rng.integers(0, 10, 5000))
    assert rnd["pnmi"] < 0.05
    with_pad = pnmi(np.r_[phones, -np.ones(100, int)], np.r_[perm[phones], np.zeros(100, int)])
    assert with_pad["pnmi"] == pytest.approx(1.0)  # -1 frames are ignored


# ----------------------------------------------------------------------------- probes

def test_edit_distance_and_error_rate() -> None:
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance([], [1, 2]) == 2
    assert edit_distance([1, 2, 3], [1, 2, 3]) == 0
    assert error_rate([[1, 2, 3, 4], [5, 6]], [[1, 3, 4], [5, 6, 7]]) == pytest.approx(2 / 6)


def test_classification_probe_separable() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    x = rng.normal(size=(300, 5))
    x[:, 0] += 4.0 * y  # linearly separable along one axis
    assert classification_probe(x[:200], y[:200], x[200:], y[200:]) > 0.95
    tr, te = stratified_split([0, 0, 0, 0, 1, 1, 2], ["a", "b", "c", "d", "e", "f", "g"])
    assert tr == [0, 1, 4] and te == [2, 3, 5]  # single-item stratum 2 dropped
    assert majority_share([0, 0, 1, 2]) == pytest.approx(0.5)


def test_ctc_probe_learns_separable_sequences() -> None:
    rng = np.random.default_rng(0)

    def make(n):
        feats, seqs = [], []
        for _ in range(n):
            seq = list(rng.integers(1, 6, 6))
            # each label for two frames, then one "pause" frame (dimension 7) the probe maps to blank
            frames = np.concatenate([np.eye(8)[[s, s, 7]] for s in seq])
            feats.append((frames + 0.05 * rng.normal(size=frames.shape)).astype(np.float32))
            seqs.append([int(s) for s in seq])  # repeats are separated by pauses: all count
        return feats, seqs
    xtr, ytr = make(64)
    xte, yte = make(16)
    res = ctc_probe_error(xtr, ytr, xte, yte, num_classes=6, frame_rate=25.0,
                          cfg=ProbeConfig(kind="linear", epochs=15, lr=5e-2, batch_size=8))
    assert res.error < 0.1 and res.infeasible_train == 0


def test_pool_time() -> None:
    x = np.arange(10, dtype=np.float32)[:, None]
    assert pool_time(x, 2)[:, 0].tolist() == [0.5, 2.5, 4.5, 6.5, 8.5]
    assert pool_time(x, 3).shape == (4, 1)


# ----------------------------------------------------------------------------- geometry, stability

def test_geometry_on_known_distributions() -> None:
    rng = np.random.default_rng(0)
    iso = rng.normal(size=(4000, 16))
    assert effective_rank(iso) > 15.0
    line = np.outer(rng.normal(size=4000), np.ones(16))
    assert effective_rank(line) < 1.1
    ep = epps_pulley(np.split(iso, 40), null_draws=3)
    assert ep["ep"] < 2.0 * ep["ep_floor"]
    assert epps_pulley(np.split(iso * 5 + 3, 40), null_draws=3)["ep"] > 20 * ep["ep_floor"]
    z = iso.copy()
    z[:, :4] *= 0.01  # four collapsed dimensions
    assert active_units(z) == 12
    assert per_dim_kl(np.zeros((10, 3)), np.zeros((10, 3))) == pytest.approx(np.zeros(3))
    assert per_dim_kl(np.ones((10, 1)), np.zeros((10, 1)))[0] == pytest.approx(0.5)


def test_loss_spikes() -> None:
    loss = np.linspace(5, 1, 200) + 0.01 * np.random.default_rng(0).normal(size=200)
    assert loss_spikes(loss) == 0
    loss[120] = 10.0
    loss[150] = float("nan")
    assert loss_spikes(loss) == 1


def test_loss_spikes_counted_on_the_reconstruction_term(tmp_path) -> None:
    """A regularizer spike that only one arm has (loss/total jumps at step 60, loss/recon does
    not) is not a reconstruction spike: pre-fix loss_spikes counted 2 on loss/total (step 60 and
    the real recon spike at step 80); now 1 on loss/recon, with per-term counts beside it."""
    import json

    recs = []
    for s in range(1, 101):
        recon = 5.0 / s
        reg = 50.0 if s == 60 else 0.1
        recs.append({"step": s, "loss/recon": recon, "loss/sigreg": reg, "loss/total": recon + 0.05 * reg})
    recs[79]["loss/recon"] += 3.0  # one reconstruction spike at step 80
    recs[79]["loss/total"] += 3.0
    (tmp_path / "log").mkdir()
    (tmp_path / "log" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    res = training_resources(tmp_path)
    assert res["loss_spike_key"] == "loss/recon" and res["loss_spikes"] == 1
    assert res["loss_spikes_by_term"] == {"recon": 1, "sigreg": 1, "total": 2}


def test_flops_count_the_slow_conv2d_kernel() -> None:
    """The Zipformer front end calls aten._slow_conv2d_forward on CPU; torch's own formula for it
    raised a TypeError.  Hand count: 8 output channels x 9 x 9 positions x 3 x 3 taps x 2."""
    import torch

    from speechae.utils.modelstats import count_flops

    conv = torch.nn.Conv2d(1, 8, 3, stride=2)
    x = torch.randn(1, 1, 20, 20)
    slow = count_flops(lambda: torch._C._nn.thnn_conv2d(x, conv.weight, conv.kernel_size, conv.bias, conv.stride,
                                                        conv.padding))
    assert slow == count_flops(lambda: conv(x)) == 8 * 9 * 9 * 9 * 2
