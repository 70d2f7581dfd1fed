"""Phone ABX discrimination on frame features, Libri-light conventions (Kahn et al. 2020,
``eval/ABX_src``; ZeroSpeech 2017/2021).

**Items.**  An item is one phone occurrence: its centre phone, its context (previous and next
phone), its speaker and the feature frames of a *time window*: the phone widened by
``context_ms`` milliseconds on each side (clipped to the utterance), the same span of time for
every system whatever its frame rate.  The item holds the frames whose centre ``(i + 1/2) / r``
lies in the window.  (Libri-light's loader takes ``ceil(r*on - 1/2) <= i < floor(r*off - 1/2)``,
which drops the last centred frame; a window holding no frame centre -- only possible for
windows shorter than one frame -- takes the frame containing its midpoint, so every system
scores the same items.)

**Distance.**  Angular distance between frames, ``arccos(cos(u, v)) / pi`` in [0, 1] (an
all-zero frame is at distance 1 from any other frame and 0 from another zero frame), and
between items the DTW alignment cost along the best path (steps: diagonal, horizontal,
vertical) divided by the number of cells on that path (Libri-light ``dtw.pyx``, ties between
predecessors broken diagonal, then horizontal, then vertical).

**Triplets.**  For A and X of one phone and B of another, all with the same context, the error
is 1 when d(A, X) > d(B, X), 1/2 on a tie, else 0.

* *within speaker*: A, B, X of one speaker, X != A; a cell is (context, speaker, phone A,
  phone B); its score is the mean over its triplets.
* *across speakers*: A and B of speaker s, X of another speaker s' (phone A, same context);
  a cell is (context, s, s', phone A, phone B).

**Averaging** (Libri-light ``eval_ABX.py``): within, the mean over contexts for each
(speaker, phone A, phone B), then over speakers for each (phone A, phone B); across, the mean
over (context, s') for each (s, phone A, phone B), then over s.  Finally the mean over all
ordered phone pairs: (A, B) and (B, A) are both scored, which symmetrises the score.

Speed (tiny CPU budgets): at most ``max_triplets_per_cell`` random triplets per cell and
``max_cells`` random cells are scored (Libri-light samples at most 10 items per group and 5
speakers X); the counts are reported.  When no cell has a shared context (tiny corpora) the
context requirement is dropped and the result says ``context: none``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from itertools import permutations
from typing import Hashable, Sequence

import numpy as np


@dataclass
class AbxItem:
    """One phone occurrence: frames (n, D), centre phone, context key and speaker."""

    feats: np.ndarray
    phone: Hashable
    context: Hashable
    speaker: Hashable


def _unit_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    zero = norm[..., 0] == 0
    return x / np.where(norm == 0, 1.0, norm), zero


def angular_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Frame-to-frame angular distance arccos(cos) / pi between (..., n, D) and (..., m, D)."""
    ua, za = _unit_rows(a)
    ub, zb = _unit_rows(b)
    cos = np.clip(np.einsum("...id,...jd->...ij", ua, ub), -1.0, 1.0)
    d = np.arccos(cos) / math.pi
    za, zb = za[..., :, None], zb[..., None, :]
    return np.where(za & zb, 0.0, np.where(za | zb, 1.0, d))


def dtw_batch(dist: np.ndarray, n: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Path-normalised DTW of a batch of distance matrices (B, N, M), each valid on its
    top-left (n_b, m_b) block; returns (B,).  See the module docstring for the recursion."""
    b_size, nn_, mm = dist.shape
    cost = np.full((b_size, nn_, mm), np.inf)
    steps = np.zeros((b_size, nn_, mm))
    cost[:, 0, 0], steps[:, 0, 0] = dist[:, 0, 0], 1.0
    for i in range(nn_):
        for j in range(mm):
            if i == 0 and j == 0:
                continue
            # candidates in tie-break order: diagonal, horizontal (j-1), vertical (i-1)
            cands = []
            if i > 0 and j > 0:
                cands.append((cost[:, i - 1, j - 1], steps[:, i - 1, j - 1]))
            if j > 0:
                cands.append((cost[:, i, j - 1], steps[:, i, j - 1]))
            if i > 0:
                cands.append((cost[:, i - 1, j], steps[:, i - 1, j]))
            best_c, best_s = cands[0]
            for c, s in cands[1:]:
                better = c < best_c
                best_c, best_s = np.where(better, c, best_c), np.where(better, s, best_s)
            cost[:, i, j] = dist[:, i, j] + best_c
            steps[:, i, j] = best_s + 1.0
    idx = np.arange(b_size)
    return cost[idx, n - 1, m - 1] / steps[idx, n - 1, m - 1]


def dtw_angular(a: np.ndarray, b: np.ndarray) -> float:
    """DTW distance between items (n, D) and (m, D) under the angular frame distance."""
    return float(dtw_batch(angular_distance(a, b)[None], np.array([len(a)]), np.array([len(b)]))[0])


def window_frames(start_s: float, end_s: float, frame_rate: float, num_frames: int) -> tuple[int, int]:
    """[first, last) frames of rate ``frame_rate`` whose centres lie in [start_s, end_s);
    an empty window takes the frame holding its midpoint.  (0, 0) when outside the features."""
    eps = 1e-9  # 0.6 s * 25 Hz is 15.000000000000002 in floating point
    s = max(0, math.ceil(frame_rate * start_s - 0.5 - eps))
    e = min(num_frames, math.ceil(frame_rate * end_s - 0.5 - eps))
    if e <= s:
        mid = int(math.floor(frame_rate * 0.5 * (start_s + end_s)))
        if not 0 <= mid < num_frames:
            return 0, 0
        s, e = mid, mid + 1
    return s, e


def phone_items(feats: np.ndarray, alignment: Sequence[tuple[str, float, float]], speaker: Hashable,
                frame_rate: float, context_ms: float = 40.0) -> list[AbxItem]:
    """Items of one utterance: ``alignment`` is (symbol, start_s, duration_s) per phone, in
    seconds from the start of the features; windows are widened by ``context_ms`` each side."""
    items = []
    n = len(feats)
    end_of_utt = n / frame_rate
    ctx = context_ms / 1000.0
    symbols = [a[0] for a in alignment]
    for k, (sym, start, dur) in enumerate(alignment):
        s, e = window_frames(max(0.0, start - ctx), min(end_of_utt, start + dur + ctx), frame_rate, n)
        if e <= s:
            continue
        prev = symbols[k - 1] if k > 0 else "<s>"
        nxt = symbols[k + 1] if k + 1 < len(symbols) else "</s>"
        items.append(AbxItem(feats[s:e], sym, (prev, nxt), speaker))
    return items


class _Dist:
    """DTW distances between item pairs, computed in batches of similar sizes."""

    def __init__(self, items: Sequence[AbxItem], chunk: int = 512) -> None:
        self.items = items
        self.chunk = chunk
        self.cache: dict[tuple[int, int], float] = {}

    def fill(self, pairs: set[tuple[int, int]]) -> None:
        todo = sorted({(min(p), max(p)) for p in pairs} - set(self.cache),
                      key=lambda p: (len(self.items[p[0]].feats), len(self.items[p[1]].feats)))
        for c in range(0, len(todo), self.chunk):
            block = todo[c: c + self.chunk]
            n = np.array([len(self.items[i].feats) for i, _ in block])
            m = np.array([len(self.items[j].feats) for _, j in block])
            dim = self.items[block[0][0]].feats.shape[1]
            a = np.zeros((len(block), n.max(), dim))
            b = np.zeros((len(block), m.max(), dim))
            for k, (i, j) in enumerate(block):
                a[k, : n[k]] = self.items[i].feats
                b[k, : m[k]] = self.items[j].feats
            # padding frames are zero vectors; they sit outside each pair's valid block
            for (i, j), d in zip(block, dtw_batch(angular_distance(a, b), n, m)):
                self.cache[(i, j)] = float(d)

    def __call__(self, i: int, j: int) -> float:
        return self.cache[(i, j) if i < j else (j, i)]


def _cells(items: Sequence[AbxItem], across: bool, use_context: bool) -> list[tuple]:
    """(context, speaker of A/B, speaker of X, phone A, phone B, A ids, B ids, X ids)."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        groups[(it.context if use_context else None, it.speaker, it.phone)].append(i)
    by_ctx_spk: dict[tuple, dict] = defaultdict(dict)
    for (ctx, spk, ph), ids in groups.items():
        by_ctx_spk[(ctx, spk)][ph] = ids
    speakers_by_ctx: dict = defaultdict(set)
    for ctx, spk in by_ctx_spk:
        speakers_by_ctx[ctx].add(spk)
    cells = []
    for (ctx, spk), phones in sorted(by_ctx_spk.items(), key=lambda kv: repr(kv[0])):
        for pa, pb in permutations(sorted(phones, key=repr), 2):
            if not across:
                if len(phones[pa]) >= 2:
                    cells.append((ctx, spk, spk, pa, pb, phones[pa], phones[pb], phones[pa]))
                continue
            for spk_x in sorted(speakers_by_ctx[ctx] - {spk}, key=repr):
                xs = by_ctx_spk[(ctx, spk_x)].get(pa)
                if xs:
                    cells.append((ctx, spk, spk_x, pa, pb, phones[pa], phones[pb], xs))
    return cells


def _triplets(a_ids: list[int], b_ids: list[int], x_ids: list[int], rng: np.random.Generator,
              max_triplets: int) -> list[tuple[int, int, int]]:
    trip = [(a, b, x) for a in a_ids for b in b_ids for x in x_ids if x != a]
    if len(trip) > max_triplets:
        trip = [trip[i] for i in rng.choice(len(trip), max_triplets, replace=False)]
    return trip


def _mean_of_means(scores: dict[tuple, float], inner: int) -> dict[tuple, float]:
    """Group keys by their first ``inner`` fields and average each group's values."""
    groups: dict[tuple, list[float]] = defaultdict(list)
    for key, v in scores.items():
        groups[key[:inner]].append(v)
    return {k: float(np.mean(v)) for k, v in groups.items()}


def abx_aggregate(cell_errors: dict[tuple, float]) -> float:
    """Libri-light averaging of cell errors keyed ``(phone A, phone B, speaker, speaker X,
    context)``: mean over (context, speaker X), then over speaker, then over phone pairs.
    (Within speaker, speaker X is the speaker itself, so the first mean is over contexts.)"""
    per_speaker = _mean_of_means(cell_errors, 3)  # (pa, pb, s)
    per_pair = _mean_of_means(per_speaker, 2)  # (pa, pb)
    return float(np.mean(list(per_pair.values())))


def abx_error(items: Sequence[AbxItem], across: bool = False, max_triplets_per_cell: int = 5,
              max_cells: int = 2000, seed: int = 0, use_context: bool = True) -> dict[str, float]:
    """ABX error (fraction, 0..1) of ``items``; see the module docstring.

    Returns ``{error, num_triplets, num_cells, context}``; raises ValueError when nothing is
    scorable even without the context requirement."""
    rng = np.random.default_rng(seed)
    cells = _cells(items, across, use_context)
    if not cells and use_context:
        return abx_error(items, across, max_triplets_per_cell, max_cells, seed, use_context=False)
    if not cells:
        raise ValueError("no ABX cell: need two phones (and, across, two speakers) with repeats")
    if len(cells) > max_cells:
        cells = [cells[i] for i in sorted(rng.choice(len(cells), max_cells, replace=False))]
    sampled = [(c, _triplets(c[5], c[6], c[7], rng, max_triplets_per_cell)) for c in cells]
    sampled = [(c, t) for c, t in sampled if t]
    if not sampled:
        raise ValueError("no ABX triplet could be formed")
    dist = _Dist(items)
    dist.fill({(a, x) for _, t in sampled for a, _, x in t} | {(b, x) for _, t in sampled for _, b, x in t})
    cell_errors: dict[tuple, float] = {}
    for (ctx, spk, spk_x, pa, pb, *_), trip in sampled:
        errs = []
        for a, b, x in trip:
            dax, dbx = dist(a, x), dist(b, x)
            errs.append(1.0 if dax > dbx else 0.5 if dax == dbx else 0.0)
        cell_errors[(pa, pb, spk, spk_x, ctx)] = float(np.mean(errs))
    return {"error": abx_aggregate(cell_errors), "num_triplets": sum(len(t) for _, t in sampled),
            "num_cells": len(sampled), "context": "triphone" if use_context else "none"}
