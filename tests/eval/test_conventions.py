"""Every metric against its published convention, on hand-computed cases (issue 10, items 5-6).

Each test states the value the pre-fix code gave on the same input, so a regression to the
old convention fails loudly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from speechae.eval.abx import AbxItem, abx_error, angular_distance, dtw_angular, phone_items
from speechae.eval.geometry import epps_pulley, geometry_metrics
from speechae.eval.probes import ctc_feasible, ctc_probe_error, ProbeConfig, stratified_split
from speechae.eval.reconstruction import frame_mcd, reconstruction_metrics
from speechae.eval.units import grid_pnmi, labels_at_rate, pnmi

DB = 10.0 / math.log(10.0)


def _cos_basis(k: int, n: int = 80) -> np.ndarray:
    return np.cos(math.pi * k * (np.arange(n) + 0.5) / n)


# ----------------------------------------------------------------------------- MCD / mel-LSD


def test_mcd_is_the_sptk_log_amplitude_value() -> None:
    """log-power difference cos(3 w_m) = 2 c_3 cos(3 w) in log *power*, so the log-amplitude
    cepstrum has c_3 = 1/4 and MCD = 10/ln10 * sqrt(2 * (1/4)^2) = 1.5355 dB (pre-fix: 3.0710,
    the log-power cepstrum, exactly 2x)."""
    x = np.zeros((3, 80))
    y = x + _cos_basis(3)
    expected = DB * math.sqrt(2 * 0.25**2)
    assert expected == pytest.approx(1.53546, abs=1e-5)
    assert frame_mcd(x, y) == pytest.approx(np.full(3, expected), rel=1e-9)
    assert reconstruction_metrics([(x, y)])["mcd_db"] == pytest.approx(expected, rel=1e-9)


def test_mcd_excludes_gain_and_cepstra_beyond_num_ceps() -> None:
    """d = 3 (gain) + 0.4 cos(w) - 0.2 cos(5 w) + cos(30 w): amplitude cepstra c1 = 0.1,
    c5 = -0.05, c0 and c30 (beyond 25 coefficients) ignored:
    MCD = 10/ln10 * sqrt(2 (0.1^2 + 0.05^2)) = 0.68668 dB."""
    d = 3.0 + 0.4 * _cos_basis(1) - 0.2 * _cos_basis(5) + _cos_basis(30)
    x = np.zeros((1, 80))
    assert frame_mcd(x, x + d, num_ceps=25)[0] == pytest.approx(DB * math.sqrt(2 * (0.1**2 + 0.05**2)), rel=1e-9)


def test_mel_lsd_key_and_closed_form() -> None:
    """A constant natural-log offset ln 10 is exactly 10 dB on every mel band."""
    x = np.zeros((4, 80))
    r = reconstruction_metrics([(x, x + math.log(10.0))])
    assert "lsd_db" not in r and r["mel_lsd_db"] == pytest.approx(10.0)
    assert r["mcd_db"] == pytest.approx(0.0, abs=1e-9)  # a pure gain lives in c0 only


# ----------------------------------------------------------------------------- PNMI


def test_pnmi_hand_computed() -> None:
    """phones (0, 0, 1, 1), codes (0, 0, 0, 1): H(P) = ln 2, H(P|C) = 3/4 H(2/3, 1/3), so
    PNMI = 1 - H(P|C)/H(P) = 0.311278; phone purity 3/4, cluster purity 3/4."""
    r = pnmi(np.array([0, 0, 1, 1]), np.array([0, 0, 0, 1]))
    h_cond = 0.75 * -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert r["pnmi"] == pytest.approx(1 - h_cond / math.log(2), rel=1e-12)
    assert r["pnmi"] == pytest.approx(0.311278, abs=1e-6)
    assert r["phone_purity"] == pytest.approx(0.75) and r["cluster_purity"] == pytest.approx(0.75)


def _phone_alignments(seed: int = 0, utts: int = 60) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.repeat(rng.integers(0, 40, 40), rng.integers(4, 16, 40)) for _ in range(utts)]


def test_pnmi_of_random_codes_does_not_depend_on_frame_rate() -> None:
    """Phone-independent codes (K = 50) at 25 Hz and at 100 Hz: scored at their own rate they
    read 0.051 vs 0.010 (the pre-fix protocol: a 5x gap from frame count alone); on the common
    25 Hz grid both read the same, and both equal their permutation chance level."""
    phones = _phone_alignments()
    rng = np.random.default_rng(1)
    c100 = [rng.integers(0, 50, len(p)) for p in phones]
    c25 = [rng.integers(0, 50, math.ceil(len(p) / 4)) for p in phones]

    def native(codes: list[np.ndarray], rate: float) -> float:
        lab = np.concatenate([labels_at_rate(p, len(c), rate) for p, c in zip(phones, codes)])
        return pnmi(lab, np.concatenate(codes))["pnmi"]

    assert native(c25, 25.0) > 3 * native(c100, 100.0)  # the bias the fix removes
    a, b = grid_pnmi(phones, c100, 100.0, 25.0), grid_pnmi(phones, c25, 25.0, 25.0)
    assert a["pnmi"] == pytest.approx(b["pnmi"], abs=0.006)
    assert a["num_frames"] == b["num_frames"] and a["grid_hz"] == 25.0
    for r in (a, b):
        assert r["pnmi"] == pytest.approx(r["pnmi_chance"], abs=0.006)


def test_grid_reads_codes_at_the_phone_instant() -> None:
    """A code sequence that *is* the phone sequence scores PNMI 1 at any system rate: the grid
    frame's phone and code are read at the same instant."""
    phones = [np.repeat(np.arange(10) % 4, 8)]  # 80 frames at 100 Hz, each phone 80 ms
    for rate in (100.0, 50.0, 25.0, 12.5):
        codes = [labels_at_rate(phones[0], int(80 * rate / 100), rate)]
        assert grid_pnmi(phones, codes, rate, 25.0, permutations=1)["pnmi"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- ABX


def _e(deg: float) -> np.ndarray:
    return np.array([[math.cos(math.radians(deg)), math.sin(math.radians(deg))]])


def _frames(*degs: float) -> np.ndarray:
    return np.concatenate([_e(d) for d in degs])


def test_angular_distance_and_path_normalised_dtw() -> None:
    """arccos(cos)/pi: 45 degrees -> 0.25 (1 - cos would give 0.293); DTW of (e0, e90) vs
    (e90): cells 0.5 and 0 on a 2-cell path -> 0.25 (pre-fix 1 - cos: 0.5)."""
    assert angular_distance(_e(0), _e(45))[0, 0] == pytest.approx(0.25)
    assert angular_distance(_e(0), np.zeros((1, 2)))[0, 0] == 1.0
    assert dtw_angular(_frames(0, 90), _frames(90)) == pytest.approx(0.25)
    a = np.random.default_rng(0).normal(size=(5, 6))
    assert dtw_angular(a, a) == pytest.approx(0.0, abs=1e-7)
    assert dtw_angular(a, np.repeat(a, 2, axis=0)) == pytest.approx(0.0, abs=1e-7)  # warping is free
    assert dtw_angular(a[:1], -a[:1]) == pytest.approx(1.0)


def _within_set() -> list[AbxItem]:
    it = lambda degs, ph, ctx, spk: AbxItem(_frames(*degs), ph, ctx, spk)  # noqa: E731
    return [
        # s1, c1 (q1 = p2 exactly, so its distances tie exactly):
        #   cell (p, q): x=p2, a=p1: 1/3 > 0 (q1) -> 1, < 1/2 (q2) -> 0; x=p1, a=p2: tie with q1 -> 1/2,
        #   < 5/6 (q2) -> 0: 3/8.  cell (q, p): x=q2, a=q1: 1/2 < 5/6 (p1) -> 0, tie (p2) -> 1/2;
        #   x=q1, a=q2: 1/2 > 1/3 (p1) -> 1, > 0 (p2) -> 1: 5/8
        it([0], "p", "c1", "s1"), it([60], "p", "c1", "s1"), it([60], "q", "c1", "s1"), it([150], "q", "c1", "s1"),
        # s1, c2: cell (p, q) = 0; q has one item, so no (q, p) cell
        it([0], "p", "c2", "s1"), it([10], "p", "c2", "s1"), it([180], "q", "c2", "s1"),
        # s2, c1: cell (p, q) = 1
        it([0], "p", "c1", "s2"), it([90], "p", "c1", "s2"), it([45], "q", "c1", "s2"),
        # s3, c3: A1 = (e0, e90), A2 = (e90), B = (e140).  x = A2: d(A1, x) = (1/2 + 0)/2 = 1/4 <
        # d(B, x) = 5/18 -> 0; x = A1: 1/4 < (7/9 + 5/18)/2 -> 0.  Cell 0 (with 1 - cos: 1/2)
        it([0, 90], "p", "c3", "s3"), it([90], "p", "c3", "s3"), it([140], "q", "c3", "s3"),
    ]


def test_abx_within_hand_computed() -> None:
    """Mean over contexts, then speakers, then ordered phone pairs:
    (p, q): s1 (3/8 + 0)/2, s2 1, s3 0 -> 19/48; (q, p): s1 5/8; error (19/48 + 30/48) / 2 = 49/96
    (pre-fix: the 1 - cos distance made s3's cell 1/2, error 57/96)."""
    r = abx_error(_within_set(), across=False, max_triplets_per_cell=100)
    assert r["error"] == pytest.approx(49 / 96, abs=1e-12)
    assert r["num_triplets"] == 4 + 4 + 2 + 2 + 2 and r["num_cells"] == 5


def test_abx_across_averages_context_and_x_speaker_together() -> None:
    """A, B from s1; X from s2 or s3.  Cells (p, q): (c1, s2) 0, (c1, s3) 1, (c2, s2) 0; the
    Libri-light mean over (context, speaker X) is 1/3 (pre-fix: contexts first, then speaker
    pairs: (0 + 1) / 2 = 1/2)."""
    it = lambda deg, ph, ctx, spk: AbxItem(_e(deg), ph, ctx, spk)  # noqa: E731
    items = [it(0, "p", "c1", "s1"), it(90, "q", "c1", "s1"), it(30, "p", "c1", "s2"), it(80, "p", "c1", "s3"),
             it(0, "p", "c2", "s1"), it(90, "q", "c2", "s1"), it(10, "p", "c2", "s2")]
    r = abx_error(items, across=True, max_triplets_per_cell=100)
    assert r["error"] == pytest.approx(1 / 3, abs=1e-12) and r["num_cells"] == 3


def test_abx_window_is_the_same_span_of_time_at_every_frame_rate() -> None:
    """Phone b at [0.2, 0.3) s widened by 40 ms: frames whose centre lies in [0.16, 0.34):
    100 Hz frames 16..33, 25 Hz frames 4..7 (pre-fix: +-1 frame, 10 ms vs 40 ms)."""
    align = [("a", 0.0, 0.2), ("b", 0.2, 0.1), ("c", 0.3, 0.7)]
    for rate, first, last in ((100.0, 16, 33), (25.0, 4, 7), (12.5, 2, 3)):
        feats = np.arange(int(rate))[:, None].astype(float) + 1.0  # 1 s; frame i holds i + 1
        items = phone_items(feats, align, "s", rate, context_ms=40.0)
        b = items[1]
        assert b.phone == "b" and b.context == ("a", "c")
        assert b.feats[:, 0].tolist() == [float(i + 1) for i in range(first, last + 1)]
        centres = (np.arange(first, last + 1) + 0.5) / rate
        assert centres.min() >= 0.16 - 1e-9 and centres.max() < 0.34


# ----------------------------------------------------------------------------- Epps-Pulley


def _ar1(utts: int, frames: int, dim: int, rho: float, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(utts):
        x = np.empty((frames, dim))
        x[0] = rng.normal(size=dim)
        for t in range(1, frames):
            x[t] = rho * x[t - 1] + math.sqrt(1 - rho**2) * rng.normal(size=dim)
        out.append(x)
    return out


def test_epps_pulley_calibrated_for_correlated_frames() -> None:
    """An exactly N(0, I) latent with frame correlation 0.8 (40 utterances x 50 frames x 8
    dims): the pre-fix statistic on adjacent frames read 5.29 against the floor 1.05 (3.82 in
    the issue's case).  Decorrelated frames read near the floor, and the standardised value
    against the AR(1) null is ~0."""
    utts = _ar1(40, 50, 8, 0.8, 0)
    r = epps_pulley(utts, seed=0)
    assert r["ep_stride"] >= 10 and abs(r["ep_lag_corr"]) < 0.1
    assert r["ep"] == pytest.approx(r["ep_floor"], abs=0.35)
    assert abs(r["ep_std"]) < 2.5
    assert r["ep_null_mean"] == pytest.approx(r["ep_floor"], abs=0.3)
    scaled = epps_pulley([2.0 * u + 1.0 for u in utts], seed=0)  # not N(0, I): far above its null
    assert scaled["ep_std"] > 50


def test_epps_pulley_is_the_classical_statistic() -> None:
    """Independent frames: stride 1; n i.i.d. N(0, I) frames average the floor (~1.05)."""
    rng = np.random.default_rng(3)
    r = epps_pulley([rng.normal(size=(100, 8)) for _ in range(40)], seed=1)
    assert r["ep_stride"] == 1 and r["ep_num_frames"] == 1024
    assert r["ep"] == pytest.approx(r["ep_floor"], abs=0.25) and abs(r["ep_std"]) < 3


def test_geometry_of_gaussian_bottleneck_is_measured_on_samples() -> None:
    """A perfect VAE: mu ~ N(0, 1/2), sigma^2 = 1/2, so the decoder sees N(0, I) samples.  On
    samples EP is at its floor; on the means (pre-fix) it read 103."""
    rng = np.random.default_rng(0)
    mu = [rng.normal(scale=math.sqrt(0.5), size=(60, 8)) for _ in range(40)]
    lv = [np.full_like(m, math.log(0.5)) for m in mu]
    g = geometry_metrics(mu, lv, seed=0)
    assert g["measured_on"] == "posterior samples"
    assert g["ep"] == pytest.approx(g["ep_floor"], abs=0.3) and abs(g["ep_std"]) < 3
    assert g["mean_variance"] == pytest.approx(1.0, abs=0.05)
    means = geometry_metrics(mu, None, seed=0)
    assert means["ep"] > 20 and means["measured_on"] == "latent"
    # KL closed form per dimension: 0.5 (mu^2 + s^2 - 1 - ln s^2) = 0.5 (0.5 + 0.5 - 1 + ln 2)
    assert g["kl_per_dim"] == pytest.approx([0.5 * math.log(2.0)] * 8, abs=0.02)


# ----------------------------------------------------------------------------- probes


def test_speaker_split_is_stratified_by_speaker_and_language() -> None:
    """Two speakers x two languages, cut ids sorted bn before en: the pre-fix per-speaker split
    trained on every Bengali and tested on every English utterance."""
    ids = [f"{s}-{lang}-{j}" for s in ("spk1", "spk2") for lang in ("bn", "en") for j in range(4)]
    strata = [tuple(i.split("-")[:2]) for i in ids]
    tr, te = stratified_split(strata, ids)
    for part in (tr, te):
        assert {strata[i] for i in part} == set(strata)  # every (speaker, language) in both halves
    assert len(tr) == len(te) == 8 and not set(tr) & set(te)


def test_ctc_feasibility_counts() -> None:
    """U labels need U frames plus one blank between equal neighbours: (1, 1, 2) needs 4."""
    assert ctc_feasible([3, 4, 3, 2], [[1, 1, 2], [1, 1, 2], [1, 2, 3], [1, 2, 3]]).tolist() == \
        [False, True, True, False]


def test_ctc_probe_reports_infeasible_utterances() -> None:
    """Utterances of 2 frames with 3 labels cannot be aligned: counted, not silently dropped."""
    rng = np.random.default_rng(0)
    feats = [rng.normal(size=(n, 4)).astype(np.float32) for n in (12, 12, 2, 12, 2)]
    targets = [[1, 2, 3]] * 5
    res = ctc_probe_error(feats, targets, feats, targets, num_classes=4, frame_rate=25.0,
                          cfg=ProbeConfig(epochs=1, batch_size=2))
    assert res.infeasible_train == 2 and res.infeasible_test == 2 and res.num_train == 5


def test_labels_at_rate_is_the_training_mapping() -> None:
    """The centre-frame rule of the masked-unit targets (speechae.losses.masking)."""
    phones = np.repeat(np.arange(10), 4)  # 40 frames at 100 Hz, each phone 4 frames
    assert labels_at_rate(phones, 10, 25.0).tolist() == list(range(10))
    assert labels_at_rate(phones, 12, 25.0).tolist()[-2:] == [9, 9]  # clipped to the last frame
    from speechae.losses.masking import frames_to_latent

    ref = frames_to_latent(torch.as_tensor(phones)[None], torch.tensor([40]), 20, 2.0)[0].tolist()
    assert labels_at_rate(phones, 20, 50.0).tolist() == ref


# ----------------------------------------------------------------------------- test sentences


def test_held_out_speakers_read_sentences_unseen_in_training() -> None:
    """Tiny recipe corpus (12 speakers x 34 utterances, stage 1 holds out 2 dev + 2 test
    speakers): pre-fix, 22 of the 68 test utterances (and 34 of 68 dev ones) had a sentence
    that a training speaker also read; now none, and dev and test are disjoint too."""
    from speechae.data.manifests import split_speakers
    from speechae.data.synth import default_sentences, make_speakers, plan_utterances

    speakers = make_speakers(12, seed=0)
    plan = plan_utterances(speakers, {"en": default_sentences("en"), "bn": default_sentences("bn")}, 34)
    split = split_speakers([s.id for s in speakers], num_dev=2, num_test=2)
    text = {name: [t for spk, _, _, t in plan if spk.id in ids] for name, ids in split.items()}
    assert len(text["test"]) == len(text["dev"]) == 68 and len(text["train"]) == 8 * 34
    assert not set(text["test"]) & set(text["train"]) and not set(text["dev"]) & set(text["train"])
    assert not set(text["test"]) & set(text["dev"])
    assert len(set(text["test"])) == 68  # each held-out speaker reads its own sentences
    assert {lang for _, lang, _, _ in plan} == {"en", "bn"}
    with pytest.raises(ValueError, match="private speakers"):
        plan_utterances(speakers, {"en": ["a", "b"], "bn": ["c", "d"]}, 4)
