"""Score one system (a :class:`~speechae.eval.encoders.FeatureEncoder`) with every metric.

The same code scores the trained model and every baseline, so the numbers are comparable.
Splits: probes and k-means are *trained* on the training split and *scored* on the test split
(unseen speakers).  The speaker-ID probe cannot use that protocol (test speakers never occur in
training), so it is trained and scored on a half / half utterance split of the held-out dev +
test speakers, stratified by (speaker, language) so that each half holds every speaker in
every language: it asks whether speaker identity is linearly readable from pooled features of
speakers the autoencoder never saw.

Chance levels (:func:`chance_levels`, written to metrics.json as a top-level ``"chance"``
mapping from metric key path to value): speaker / language accuracy -- the majority-class
share of the scored split; ABX -- 50 %; PNMI and phone purity -- their permutation baselines
(:mod:`speechae.eval.units`); Epps-Pulley -- the mean of its calibrated null, and 0 for its
standardised value (:mod:`speechae.eval.geometry`); reconstruction -- the utterance
mean-spectrum reference (:mod:`speechae.eval.reconstruction`).
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
                                  majority_share, mean_pool, stratified_split)
from speechae.eval.reconstruction import reconstruction_metrics
from speechae.eval.report import get_path
from speechae.eval.units import kmeans_pnmi

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
    # PNMI on one common grid for every system (speechae.eval.units); 25 Hz = the latents' rate
    pnmi_grid_hz: float = 25.0
    pnmi_permutations: int = 5
    abx_max_cells: int = 1000
    abx_triplets_per_cell: int = 5
    # ABX window: the phone +- this many ms, the same for every frame rate (+-40 ms is one
    # frame at 25 Hz, what the 25 Hz latents were scored with before)
    abx_context_ms: float = 40.0
    max_train_utts: int | None = None
    max_test_utts: int | None = None
    # Audio hours per split that evaluation loads (None or <= 0: all).  Probes, k-means and the
    # global mean are fitted on the training sample, so memory follows the caps, not the corpus
    # (LibriSpeech 960 h in full would need ~110 GB); a seeded draw (encoders.sample_cuts) keeps
    # the sample reproducible.  The tiny recipe's splits are below both caps: all of it is used.
    max_train_hours: float | None = 1.0
    max_test_hours: float | None = None  # test sets are scored whole unless capped
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
    # split -> Sample.summary(): utterances / hours used out of the split's, and the caps
    sampling: dict[str, Any] = field(default_factory=dict)


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
    on a tiny test set the seed-to-seed spread of a short probe is several PER points.
    ``infeasible``: training utterances left out because CTC cannot align them."""
    assert data.labels.phones is not None
    runs = [ctc_probe_error(train.feats, [u.phone_seq for u in data.train], test.feats,
                            [u.phone_seq for u in data.test], len(data.labels.phones), train.frame_rate,
                            replace(cfg, seed=cfg.seed + k), desc=f"{name} phone probe") for k in range(seeds)]
    pers = [r.error for r in runs]
    out: dict[str, Any] = {"per": float(np.mean(pers)), "probe": cfg.kind, "epochs": cfg.epochs, "seeds": seeds,
                           "infeasible": runs[0].infeasible_train, "infeasible_test": runs[0].infeasible_test,
                           "num_train": runs[0].num_train}
    if seeds > 1:
        out["per_std"] = float(np.std(pers, ddof=1))
        out["per_by_seed"] = pers
    return out


def token_probe(train: Encoded, test: Encoded, data: EvalData, cfg: ProbeConfig, name: str) -> dict[str, Any]:
    """CTC sentencepiece probe: token error rate, CER and WER of the decoded text."""
    sp = data.labels.sp
    res = ctc_probe_error(train.feats, [u.tokens for u in data.train], test.feats, [u.tokens for u in data.test],
                          data.labels.vocab_size, train.frame_rate, cfg, desc=f"{name} token probe")
    # references go through the same sentencepiece round trip, so normalisation is identical
    refs = [sp.decode([t - 1 for t in u.tokens]) for u in data.test]
    texts = [sp.decode([t - 1 for t in h]) for h in res.hyps]
    chars = sum(edit_distance(list(r), list(h)) for r, h in zip(refs, texts)) / max(sum(map(len, refs)), 1)
    words = sum(edit_distance(r.split(), h.split()) for r, h in zip(refs, texts))
    words /= max(sum(len(r.split()) for r in refs), 1)
    return {"ter": res.error, "cer": chars, "wer": words, "probe": cfg.kind, "epochs": cfg.epochs,
            "infeasible": res.infeasible_train, "infeasible_test": res.infeasible_test, "num_train": res.num_train,
            "example_ref": refs[0] if refs else "", "example_hyp": texts[0] if texts else ""}


def speaker_probe(test: Encoded, dev: Encoded, data: EvalData, seed: int) -> dict[str, float]:
    """Speaker ID on a half/half split of the held-out (dev + test) speakers' utterances,
    stratified by (speaker, language)."""
    utts = list(data.test) + list(data.dev)
    x = mean_pool(list(test.feats) + list(dev.feats))
    spk_names = sorted({u.speaker for u in utts})
    y = np.array([spk_names.index(u.speaker) for u in utts])
    tr, te = stratified_split([(u.speaker, u.language) for u in utts], [u.cut_id for u in utts])
    if len(set(y[tr].tolist())) < 2:
        raise ValueError("speaker probe needs two held-out speakers with two utterances each")
    acc = classification_probe(x[tr], y[tr], x[te], y[te], seed)
    return {"accuracy": acc, "num_speakers": len(set(y[tr].tolist())), "num_train": len(tr), "num_test": len(te),
            "chance": majority_share(y[te])}


def language_probe(train: Encoded, test: Encoded, data: EvalData, seed: int) -> dict[str, float]:
    """Language ID: trained on the training split, scored on the test split."""
    langs = sorted({u.language for u in data.train})
    test_langs = {u.language for u in data.test}
    if len(langs) < 2 or not test_langs <= set(langs):
        raise ValueError(f"language probe needs >= 2 training languages covering the test set (train {langs})")
    ytr = np.array([langs.index(u.language) for u in data.train])
    yte = np.array([langs.index(u.language) for u in data.test])
    acc = classification_probe(mean_pool(train.feats), ytr, mean_pool(test.feats), yte, seed)
    return {"accuracy": acc, "num_languages": len(langs), "test_languages": len(test_langs),
            "chance": majority_share(yte)}


def abx_section(test: Encoded, data: EvalData, cfg: EvalConfig) -> dict[str, Any]:
    """Within- and across-speaker ABX error (%) on the test split's phone segments."""
    items = []
    for u, f in zip(data.test, test.feats):
        if u.alignment:
            items += phone_items(f, u.alignment, u.speaker, test.frame_rate, cfg.abx_context_ms)
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
    out["context_ms"] = cfg.abx_context_ms
    out["distance"] = "angular"
    return out


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
            probes["phone_by_stack"] = {}
            for k, (rate, _) in train.stacks.items():
                r = phone_probe(Encoded(train.stacks[k][1], rate), Encoded(test.stacks[k][1], rate), data,
                                stack_cfg, f"{name}/{k}")
                probes["phone_by_stack"][k] = {"per": r["per"], "frame_rate": rate, "infeasible": r["infeasible"]}
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
                                  [u.phones for u in data.test], test.frame_rate, cfg.kmeans_k, cfg.seed,
                                  cfg.pnmi_grid_hz, cfg.pnmi_permutations)
    sections["geometry"] = _timed(timings, "geometry", geometry_metrics, test.feats, test.logvar, cfg.seed)
    sections["geometry"]["frame_rate_hz"] = test.frame_rate
    sections["resources"] = _timed(timings, "resources", system.resources)
    if notes:
        sections["notes"] = notes
    log.info("%s scored in %.1fs (%s)", name, sum(timings.values()),
             ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    return SystemResult(sections, test, timings)


# metric key path -> (section path of its chance value); reconstruction: the mean-spectrum ref
_CHANCE_FROM = {
    "probes.speaker.accuracy": "probes.speaker.chance",
    "probes.language.accuracy": "probes.language.chance",
    "pnmi.pnmi": "pnmi.pnmi_chance",
    "pnmi.phone_purity": "pnmi.phone_purity_chance",
    "geometry.ep": "geometry.ep_null_mean",
    "reconstruction.mel_lsd_db": "reconstruction.reference.utterance_mean.mel_lsd_db",
    "reconstruction.mcd_db": "reconstruction.reference.utterance_mean.mcd_db",
    "reconstruction.mel_l1": "reconstruction.reference.utterance_mean.mel_l1",
}


def chance_levels(sections: dict[str, Any]) -> dict[str, float]:
    """``{metric key path: chance level}`` for the metrics of ``sections`` that have one (see
    the module docstring)."""
    def get(path: str) -> Any:
        return get_path(sections, path)

    out = {k: float(v) for k, src in _CHANCE_FROM.items() if isinstance(v := get(src), (int, float))}
    for mode in ("within", "across"):
        if get(f"abx.{mode}_error_pct") is not None:
            out[f"abx.{mode}_error_pct"] = 50.0
    if get("geometry.ep_std") is not None:
        out["geometry.ep_std"] = 0.0
    return out
