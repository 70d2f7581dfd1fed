"""Score one system (a :class:`~speechae.eval.encoders.FeatureEncoder`) with every metric.

The same code scores the trained model and every baseline, so the numbers are comparable.
Splits: probes and k-means are *trained* on the training split and *scored* on the test split
(unseen speakers).  The speaker-ID probe cannot use that protocol (test speakers never occur in
training), so it is trained and scored on a per-speaker utterance split (half / half by cut
id) of the held-out dev + test speakers: it asks whether speaker identity is linearly
readable from pooled features of speakers the autoencoder never saw.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np

from speechae.data.datamodule import Labels
from speechae.eval.abx import abx_error, phone_items
from speechae.eval.encoders import Encoded, FeatureEncoder, Utterance
from speechae.eval.geometry import geometry_metrics
from speechae.eval.probes import (ProbeConfig, classification_probe, ctc_probe_error, edit_distance,
                                  mean_pool, per_label_split)
from speechae.eval.reconstruction import reconstruction_metrics
from speechae.eval.units import kmeans_pnmi, phones_at_rate

log = logging.getLogger("speechae.eval")


@dataclass
class EvalConfig:
    """Evaluation settings (probe sizes, k-means K, ABX subsampling, utterance caps)."""

    # lr: inputs are standardised, a linear CTC head tolerates a large step. 40 epochs: at 10
    # the probe was underfit and seed noise hid the model (tiny recipe, 659-step SIGReg arm:
    # PER 59.6 +- 5.0 at 10 epochs, 50.2 +- 1.6 at 40; random init 61.7 / 61.1)
    phone_probe: ProbeConfig = field(default_factory=lambda: ProbeConfig(kind="linear", epochs=40, lr=5e-2))
    # sentencepiece tokens come at a few per second: a 25 Hz input loses nothing, halves the
    # BiLSTM's cost for 50 Hz systems and quarters it for 100 Hz fbank/MFCC
    token_probe: ProbeConfig = field(default_factory=lambda: ProbeConfig(kind="bilstm", hidden=128, epochs=10,
                                                                         lr=1e-2, max_rate=25.0))
    phone_probe_seeds: int = 1
    stack_probe_epochs: int = 10
    kmeans_k: int = 50
    abx_max_cells: int = 1000
    abx_triplets_per_cell: int = 5
    abx_context_frames: int = 1
    max_train_utts: int | None = None
    max_test_utts: int | None = None
    stacks: bool = False
    num_plot_utts: int = 3
    seed: int = 0


@dataclass
class EvalData:
    """Utterances of the three splits and the corpus label tables."""

    train: list[Utterance]
    test: list[Utterance]
    dev: list[Utterance]
    labels: Labels
    global_mean: np.ndarray | None = None


@dataclass
class SystemResult:
    """Sections of one system plus the test encodings (for plots)."""

    sections: dict[str, Any]
    test: Encoded
    timings: dict[str, float]


def _has_phones(utts: Sequence[Utterance]) -> bool:
    return bool(utts) and all(u.phones is not None for u in utts)


def phone_probe(train: Encoded, test: Encoded, data: EvalData, cfg: ProbeConfig, name: str,
                seeds: int = 1) -> dict[str, Any]:
    """CTC phone probe: PER (fraction) on the test split; with ``seeds`` > 1 the probe is
    retrained with that many seeds and ``per`` is their mean (``per_std`` the sample std):
    on a tiny test set the seed-to-seed spread of a short probe is several PER points."""
    assert data.labels.phones is not None
    pers = []
    for k in range(seeds):
        per, _ = ctc_probe_error(train.feats, [u.phone_seq for u in data.train], test.feats,
                                 [u.phone_seq for u in data.test], len(data.labels.phones), train.frame_rate,
                                 replace(cfg, seed=cfg.seed + k), desc=f"{name} phone probe")
        pers.append(per)
    out: dict[str, Any] = {"per": float(np.mean(pers)), "probe": cfg.kind, "epochs": cfg.epochs, "seeds": seeds}
    if seeds > 1:
        out["per_std"] = float(np.std(pers, ddof=1))
        out["per_by_seed"] = pers
    return out


def token_probe(train: Encoded, test: Encoded, data: EvalData, cfg: ProbeConfig, name: str) -> dict[str, float]:
    """CTC sentencepiece probe: token error rate, CER and WER of the decoded text."""
    sp = data.labels.sp
    ter, hyps = ctc_probe_error(train.feats, [u.tokens for u in data.train], test.feats,
                                [u.tokens for u in data.test], data.labels.vocab_size, train.frame_rate,
                                cfg, desc=f"{name} token probe")
    # references go through the same sentencepiece round trip, so normalisation is identical
    refs = [sp.decode([t - 1 for t in u.tokens]) for u in data.test]
    texts = [sp.decode([t - 1 for t in h]) for h in hyps]
    chars = sum(edit_distance(list(r), list(h)) for r, h in zip(refs, texts)) / max(sum(map(len, refs)), 1)
    words = sum(edit_distance(r.split(), h.split()) for r, h in zip(refs, texts))
    words /= max(sum(len(r.split()) for r in refs), 1)
    return {"ter": ter, "cer": chars, "wer": words, "probe": cfg.kind, "epochs": cfg.epochs,
            "example_ref": refs[0] if refs else "", "example_hyp": texts[0] if texts else ""}


def speaker_probe(test: Encoded, dev: Encoded, data: EvalData, seed: int) -> dict[str, float]:
    """Speaker ID on a per-speaker half/half split of the held-out (dev + test) speakers."""
    utts = list(data.test) + list(data.dev)
    x = mean_pool(list(test.feats) + list(dev.feats))
    spk_names = sorted({u.speaker for u in utts})
    y = np.array([spk_names.index(u.speaker) for u in utts])
    tr, te = per_label_split(y.tolist(), [u.cut_id for u in utts])
    if len(set(y[tr].tolist())) < 2:
        raise ValueError("speaker probe needs two held-out speakers with two utterances each")
    acc = classification_probe(x[tr], y[tr], x[te], y[te], seed)
    return {"accuracy": acc, "num_speakers": len(set(y[tr].tolist())), "num_train": len(tr), "num_test": len(te),
            "chance": float(np.bincount(y[te]).max() / len(te))}


def language_probe(train: Encoded, test: Encoded, data: EvalData, seed: int) -> dict[str, float]:
    """Language ID: trained on the training split, scored on the test split."""
    langs = sorted({u.language for u in data.train})
    test_langs = {u.language for u in data.test}
    if len(langs) < 2 or not test_langs <= set(langs):
        raise ValueError(f"language probe needs >= 2 training languages covering the test set (train {langs})")
    ytr = np.array([langs.index(u.language) for u in data.train])
    yte = np.array([langs.index(u.language) for u in data.test])
    acc = classification_probe(mean_pool(train.feats), ytr, mean_pool(test.feats), yte, seed)
    return {"accuracy": acc, "num_languages": len(langs), "test_languages": len(test_langs)}


def abx_section(test: Encoded, data: EvalData, cfg: EvalConfig) -> dict[str, Any]:
    """Within- and across-speaker ABX error (%) on the test split's phone segments."""
    items = []
    for u, f in zip(data.test, test.feats):
        if u.alignment:
            items += phone_items(f, u.alignment, u.speaker, test.frame_rate, cfg.abx_context_frames)
    out: dict[str, Any] = {}
    for mode in ("within", "across"):
        try:
            r = abx_error(items, across=mode == "across", max_triplets_per_cell=cfg.abx_triplets_per_cell,
                          max_cells=cfg.abx_max_cells, seed=cfg.seed)
        except ValueError as e:
            out.setdefault("skipped", []).append(f"{mode}: {e}")
            continue
        out[f"{mode}_error_pct"] = 100.0 * r["error"]
        out[f"{mode}_triplets"] = r["num_triplets"]
        out[f"{mode}_context"] = r["context"]
    return out


def _test_phone_frames(test: Encoded, data: EvalData) -> list[np.ndarray]:
    return [phones_at_rate(u.phones, len(f), test.frame_rate) for u, f in zip(data.test, test.feats)]


def _timed(timings: dict[str, float], key: str, fn, *args, **kwargs):  # noqa: ANN001, ANN202
    t0 = time.perf_counter()
    try:
        return fn(*args, **kwargs)
    finally:
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - t0


def _probes(train: Encoded, test: Encoded, dev: Encoded, data: EvalData, cfg: EvalConfig, name: str,
            timings: dict[str, float], notes: list[str]) -> dict[str, Any]:
    probes: dict[str, Any] = {}
    if _has_phones(data.train) and _has_phones(data.test) and data.labels.phones is not None:
        probes["phone"] = _timed(timings, "phone_probe", phone_probe, train, test, data, cfg.phone_probe, name,
                                 cfg.phone_probe_seeds)
        if cfg.stacks and train.stacks:
            stack_cfg = ProbeConfig(**{**cfg.phone_probe.__dict__, "epochs": cfg.stack_probe_epochs})
            probes["phone_by_stack"] = {
                k: {"per": phone_probe(Encoded(train.stacks[k][1], rate), Encoded(test.stacks[k][1], rate), data,
                                       stack_cfg, f"{name}/{k}")["per"], "frame_rate": rate}
                for k, (rate, _) in train.stacks.items()}
    else:
        notes.append("phone probe skipped: no phone alignments")
    if data.labels.sp is not None and all(u.tokens for u in data.train + data.test):
        probes["token"] = _timed(timings, "token_probe", token_probe, train, test, data, cfg.token_probe, name)
    else:
        notes.append("token probe skipped: no sentencepiece model or transcripts")
    for key, fn, args in (("speaker", speaker_probe, (test, dev, data, cfg.seed)),
                          ("language", language_probe, (train, test, data, cfg.seed))):
        try:
            probes[key] = _timed(timings, f"{key}_probe", fn, *args)
        except ValueError as e:
            notes.append(f"{key} probe skipped: {e}")
    return probes


def score_system(system: FeatureEncoder, data: EvalData, cfg: EvalConfig) -> SystemResult:
    """Every section that applies to ``system``: reconstruction (autoencoders), probes, ABX,
    PNMI, geometry and resources."""
    timings: dict[str, float] = {}
    notes: list[str] = []
    name = system.name
    test = _timed(timings, "encode", system.encode, data.test, with_recon=system.is_autoencoder)
    train = _timed(timings, "encode", system.encode, data.train)
    dev = _timed(timings, "encode", system.encode, data.dev) if data.dev else Encoded([], test.frame_rate)
    sections: dict[str, Any] = {}
    if test.recon is not None:
        sections["reconstruction"] = reconstruction_metrics((u.log_mel, r) for u, r in zip(data.test, test.recon))
    sections["probes"] = _probes(train, test, dev, data, cfg, name, timings, notes)
    if _has_phones(data.test):
        sections["abx"] = _timed(timings, "abx", abx_section, test, data, cfg)
        sections["pnmi"] = _timed(timings, "pnmi", kmeans_pnmi, train.feats, test.feats,
                                  _test_phone_frames(test, data), cfg.kmeans_k, cfg.seed)
    z = np.concatenate(test.feats)
    logvar = np.concatenate(test.logvar) if test.logvar is not None else None
    sections["geometry"] = _timed(timings, "geometry", geometry_metrics, z, logvar, cfg.seed)
    sections["geometry"]["frame_rate_hz"] = test.frame_rate
    sections["resources"] = _timed(timings, "resources", system.resources)
    if notes:
        sections["notes"] = notes
    log.info("%s scored in %.1fs (%s)", name, sum(timings.values()),
             ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    return SystemResult(sections, test, timings)
