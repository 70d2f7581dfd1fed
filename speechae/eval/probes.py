"""Probes on frozen features (SUPERB style): CTC sequence probes and utterance classifiers.

* :func:`train_ctc_probe` / :func:`ctc_probe_error`: a linear layer or a small BiLSTM on frozen,
  standardised frame features, trained with CTC (blank = 0) on one split and scored by greedy
  decoding on another; the error is the edit distance summed over utterances divided by the
  summed reference length (PER for phones, CER/WER for text).  An utterance whose label
  sequence cannot be aligned by CTC in the probe's frames (U labels need U frames plus one blank
  between equal neighbours: :func:`speechae.losses.semantic.ctc_min_frames`, the training
  objective's own count) is left out of probe training and counted (``infeasible_train``;
  ``infeasible_test`` for the scored split, where it costs at least one error) -- torch's
  ``zero_infinity`` would otherwise drop it silently.
* :func:`classification_probe`: multinomial logistic regression on mean-pooled features
  (speaker ID, language ID).  :func:`stratified_split` makes its train/test split inside each
  stratum (e.g. every (speaker, language) pair), so both halves hold every stratum.

Probes are deliberately small and trained briefly: they measure what is *linearly* (or nearly)
available in the features, not what a large head could learn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Hashable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from speechae.losses.semantic import ctc_min_frames


def edit_distance(ref: Sequence, hyp: Sequence) -> int:
    """Levenshtein distance (substitutions, insertions, deletions all cost 1)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def error_rate(refs: Sequence[Sequence], hyps: Sequence[Sequence]) -> float:
    """Corpus-level error rate: sum of edit distances / sum of reference lengths."""
    if len(refs) != len(hyps):
        raise ValueError("refs and hyps differ in length")
    errors = sum(edit_distance(r, h) for r, h in zip(refs, hyps))
    total = sum(len(r) for r in refs)
    return errors / max(total, 1)


def ctc_greedy(log_probs: torch.Tensor, lengths: torch.Tensor, blank: int = 0) -> list[list[int]]:
    """Best-path decoding: argmax per frame, merge repeats, drop blanks. log_probs (B, T, V)."""
    best = log_probs.argmax(-1).cpu().numpy()
    out = []
    for seq, n in zip(best, lengths.tolist()):
        seq = seq[:n]
        keep = np.ones(len(seq), dtype=bool)
        keep[1:] = seq[1:] != seq[:-1]
        out.append([int(s) for s in seq[keep] if s != blank])
    return out


@dataclass
class ProbeConfig:
    """Settings of a CTC probe.  ``kind``: linear | bilstm.  ``min_rate``: features slower
    than this (Hz) are repeated in time up to it, so that CTC has enough frames per label;
    ``max_rate``: faster features are averaged over groups of consecutive frames down to at
    most this rate (100 Hz fbank -> 50 Hz), which keeps probe cost comparable across systems
    and loses nothing a 25 Hz latent has."""

    kind: str = "linear"
    hidden: int = 64
    epochs: int = 10
    lr: float = 2e-3
    batch_size: int = 16
    min_rate: float = 25.0
    max_rate: float = 50.0
    seed: int = 0


class CTCProbe(nn.Module):
    """Frozen features (B, T, D) -> log-probabilities (B, T, V) over V classes (0 = blank)."""

    def __init__(self, in_dim: int, num_classes: int, kind: str = "linear", hidden: int = 128) -> None:
        super().__init__()
        if kind not in ("linear", "bilstm"):
            raise ValueError(f"probe kind must be linear or bilstm, got {kind!r}")
        self.lstm = nn.LSTM(in_dim, hidden, batch_first=True, bidirectional=True) if kind == "bilstm" else None
        self.out = nn.Linear(2 * hidden if self.lstm is not None else in_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, D) standardised features."""
        if self.lstm is not None:
            x, _ = self.lstm(x)
        return self.out(x).log_softmax(-1)


class Standardizer:
    """Per-dimension z-scoring with statistics of the training split (features of different
    systems have very different scales; the probe's optimiser should not care)."""

    def __init__(self, feats: Sequence[np.ndarray]) -> None:
        cat = np.concatenate([f for f in feats if len(f)], 0).astype(np.float64)
        self.mean = cat.mean(0)
        self.std = cat.std(0) + 1e-5

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.std).astype(np.float32)


def _repeat_factor(frame_rate: float, min_rate: float) -> int:
    return max(1, math.ceil(min_rate / frame_rate - 1e-9))


def _pool_factor(frame_rate: float, max_rate: float) -> int:
    return max(1, math.ceil(frame_rate / max_rate - 1e-9))


def pool_time(x: np.ndarray, factor: int) -> np.ndarray:
    """Average groups of ``factor`` consecutive frames of (T, D) (last group may be shorter)."""
    if factor <= 1 or len(x) == 0:
        return x
    t = len(x)
    pad = (-t) % factor
    xp = np.concatenate([x, np.repeat(x[-1:], pad, 0)]) if pad else x
    return xp.reshape(-1, factor, x.shape[1]).mean(1).astype(x.dtype)


def _rate_adapt(feats: Sequence[np.ndarray], frame_rate: float, cfg: "ProbeConfig") -> tuple[list[np.ndarray], int]:
    """Pool fast features down to ``cfg.max_rate``; returns the features and the repeat factor."""
    k = _pool_factor(frame_rate, cfg.max_rate)
    feats = [pool_time(f, k) for f in feats]
    return feats, _repeat_factor(frame_rate / k, cfg.min_rate)


def _pad_batch(feats: Sequence[np.ndarray], repeat: int) -> tuple[torch.Tensor, torch.Tensor]:
    lens = torch.tensor([len(f) * repeat for f in feats])
    x = torch.zeros(len(feats), int(lens.max()), feats[0].shape[1])
    for i, f in enumerate(feats):
        t = torch.from_numpy(f)
        x[i, : lens[i]] = t.repeat_interleave(repeat, 0) if repeat > 1 else t
    return x, lens


def ctc_feasible(num_frames: Sequence[int], targets: Sequence[Sequence[int]]) -> np.ndarray:
    """Bool (N,): whether each label sequence fits a CTC alignment of that many frames."""
    if not targets:
        return np.zeros(0, dtype=bool)
    lens = torch.tensor([len(t) for t in targets])
    padded = torch.zeros(len(targets), max(int(lens.max()), 1), dtype=torch.long)
    for i, t in enumerate(targets):
        padded[i, : len(t)] = torch.as_tensor(list(t), dtype=torch.long)
    return (torch.as_tensor(list(num_frames)) >= ctc_min_frames(padded, lens)).numpy()


def probe_frames(feats: Sequence[np.ndarray], frame_rate: float, cfg: "ProbeConfig") -> list[int]:
    """Frames each utterance has at the probe's input (after pooling and repetition)."""
    pooled, repeat = _rate_adapt(feats, frame_rate, cfg)
    return [len(f) * repeat for f in pooled]


def train_ctc_probe(feats: Sequence[np.ndarray], targets: Sequence[Sequence[int]], num_classes: int,
                    frame_rate: float, cfg: ProbeConfig = ProbeConfig(),
                    desc: str = "ctc probe") -> tuple[CTCProbe, Standardizer]:
    """Train a CTC probe on (T_i, D) feature arrays and their label sequences (ids >= 1).

    Empty utterances and CTC-infeasible ones (see the module docstring) are left out."""
    ok = ctc_feasible(probe_frames(feats, frame_rate, cfg), targets)
    keep = [i for i, t in enumerate(targets) if len(t) > 0 and len(feats[i]) > 0 and ok[i]]
    if not keep:
        raise ValueError("no utterance fits a CTC alignment at this frame rate")
    feats, repeat = _rate_adapt([feats[i] for i in keep], frame_rate, cfg)
    targets = [targets[i] for i in keep]
    norm = Standardizer(feats)
    feats = [norm(f) for f in feats]
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    probe = CTCProbe(feats[0].shape[1], num_classes, cfg.kind, cfg.hidden)
    opt = torch.optim.AdamW(probe.parameters(), lr=cfg.lr, weight_decay=1e-4)
    steps = cfg.epochs * math.ceil(len(feats) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(steps, 1), pct_start=0.1)
    ctc = nn.CTCLoss(blank=0, zero_infinity=True)  # a guard only: infeasible utterances are out
    probe.train()
    for _ in tqdm(range(cfg.epochs), desc=desc, leave=False, disable=None):
        order = torch.randperm(len(feats), generator=g).tolist()
        for b in range(0, len(order), cfg.batch_size):
            idx = order[b: b + cfg.batch_size]
            x, lens = _pad_batch([feats[i] for i in idx], repeat)
            tgt = torch.cat([torch.as_tensor(targets[i], dtype=torch.long) for i in idx])
            tlens = torch.tensor([len(targets[i]) for i in idx])
            lp = probe(x)
            loss = ctc(lp.transpose(0, 1), tgt, lens, tlens)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(probe.parameters(), 5.0)
            opt.step()
            sched.step()
    probe.eval()
    return probe, norm


@torch.no_grad()
def ctc_decode(probe: CTCProbe, norm: Standardizer, feats: Sequence[np.ndarray], frame_rate: float,
               cfg: ProbeConfig = ProbeConfig()) -> list[list[int]]:
    """Greedy CTC hypotheses (label ids) for each feature array."""
    feats, repeat = _rate_adapt(feats, frame_rate, cfg)
    hyps: list[list[int]] = []
    for b in range(0, len(feats), cfg.batch_size):
        chunk = [norm(f) for f in feats[b: b + cfg.batch_size]]
        x, lens = _pad_batch(chunk, repeat)
        hyps += ctc_greedy(probe(x), lens)
    return hyps


@dataclass
class CTCProbeResult:
    """Label error rate on the scored split, its hypotheses, and the CTC-infeasible counts."""

    error: float
    hyps: list[list[int]] = field(default_factory=list)
    infeasible_train: int = 0
    infeasible_test: int = 0
    num_train: int = 0
    num_test: int = 0


def ctc_probe_error(train_feats: Sequence[np.ndarray], train_targets: Sequence[Sequence[int]],
                    test_feats: Sequence[np.ndarray], test_targets: Sequence[Sequence[int]],
                    num_classes: int, frame_rate: float, cfg: ProbeConfig = ProbeConfig(),
                    desc: str = "ctc probe") -> CTCProbeResult:
    """Train on one split, decode the other (see the module docstring)."""
    probe, norm = train_ctc_probe(train_feats, train_targets, num_classes, frame_rate, cfg, desc)
    hyps = ctc_decode(probe, norm, test_feats, frame_rate, cfg)
    bad_train = ~ctc_feasible(probe_frames(train_feats, frame_rate, cfg), train_targets)
    bad_test = ~ctc_feasible(probe_frames(test_feats, frame_rate, cfg), test_targets)
    return CTCProbeResult(error_rate(test_targets, hyps), hyps, int(bad_train.sum()), int(bad_test.sum()),
                          len(train_targets), len(test_targets))


def mean_pool(feats: Sequence[np.ndarray], with_std: bool = True) -> np.ndarray:
    """Utterance vectors (N, D) or (N, 2D): mean (and std) of each (T_i, D) array over time."""
    rows = []
    for f in feats:
        f = f.astype(np.float64)
        rows.append(np.concatenate([f.mean(0), f.std(0)]) if with_std else f.mean(0))
    return np.stack(rows)


def classification_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                         test_y: np.ndarray, seed: int = 0) -> float:
    """Accuracy of standardised multinomial logistic regression (L2, C=1) on the test rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(train_y)) < 2:
        raise ValueError("classification probe needs at least two classes in training")
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    clf.fit(train_x, train_y)
    return float((clf.predict(test_x) == test_y).mean())


def stratified_split(strata: Sequence[Hashable], keys: Sequence[str],
                     train_share: float = 0.5) -> tuple[list[int], list[int]]:
    """Split items into train/test inside every stratum (deterministic): each stratum's items,
    sorted by key, give their first ``train_share`` to training and the rest to test (at
    least one each when the stratum has two or more items; single-item strata are dropped).

    With strata = (speaker, language), both halves hold every speaker in every language, so
    a speaker probe is not trained on one language and tested on the other."""
    by_stratum: dict[Hashable, list[tuple[str, int]]] = {}
    for i, (st, key) in enumerate(zip(strata, keys)):
        by_stratum.setdefault(st, []).append((key, i))
    train, test = [], []
    for items in by_stratum.values():
        if len(items) < 2:
            continue
        items.sort()
        n_train = min(max(1, round(train_share * len(items))), len(items) - 1)
        train += [i for _, i in items[:n_train]]
        test += [i for _, i in items[n_train:]]
    return sorted(train), sorted(test)


def majority_share(labels: Sequence[int]) -> float:
    """Accuracy of always answering the most frequent label of ``labels`` (chance level)."""
    labels = np.asarray(labels)
    return float(np.bincount(labels).max() / len(labels)) if len(labels) else float("nan")
