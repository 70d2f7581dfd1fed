"""Phone ABX discrimination (Zero Resource / Libri-light style) on frame features.

An *item* is one phone occurrence: its centre phone, its context (previous and next phone) and
speaker, and the feature frames of the segment widened by ``context_frames`` frames on each
side (at 25 Hz a phone spans only 1-3 latent frames; one frame of context on each side keeps
DTW meaningful and matches the Libri-light practice of scoring windows around the phone).

For a triplet (A, B, X): A and X share the centre phone, B has another centre phone, all three
share the context.  The error is 1 when d(A, X) > d(B, X), 0.5 on a tie, else 0, with d the
DTW alignment cost under the cosine distance ``1 - cos(u, v)`` averaged along the best path.

* **within speaker**: A, B, X from one speaker;
* **across speakers**: A and B from speaker s, X from another speaker s'.

Scores are averaged hierarchically: over triplets of a cell (context, speaker(s), phone pair),
then over contexts, then over speakers, then over phone pairs.  Triplets are subsampled
(``max_triplets_per_cell``, ``max_cells``) for speed; the number scored is reported.  When no
cell has a shared context (tiny corpora) the context requirement is dropped and the result says
``context: none``.
"""

from __future__ import annotations

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


def dtw_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """DTW cost between (n, D) and (m, D) with cosine distance, averaged along the best path."""
    an = a / (np.linalg.norm(a, axis=1, keepdims=True) + 1e-8)
    bn = b / (np.linalg.norm(b, axis=1, keepdims=True) + 1e-8)
    cost = 1.0 - an @ bn.T
    n, m = cost.shape
    acc = np.full((n + 1, m + 1), np.inf)
    steps = np.zeros((n + 1, m + 1))
    acc[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            cands = ((acc[i - 1, j - 1], steps[i - 1, j - 1]), (acc[i - 1, j], steps[i - 1, j]),
                     (acc[i, j - 1], steps[i, j - 1]))
            best, length = min(cands, key=lambda c: c[0])
            acc[i, j] = best + cost[i - 1, j - 1]
            steps[i, j] = length + 1
    return float(acc[n, m] / steps[n, m])


def phone_items(feats: np.ndarray, alignment: Sequence[tuple[str, float, float]], speaker: Hashable,
                frame_rate: float, context_frames: int = 1) -> list[AbxItem]:
    """Items of one utterance: ``alignment`` is (symbol, start_s, duration_s) per phone."""
    items = []
    n = len(feats)
    symbols = [a[0] for a in alignment]
    for k, (sym, start, dur) in enumerate(alignment):
        # tolerance: 0.6 s * 25 Hz is 15.000000000000002 in floating point
        s = int(np.floor(start * frame_rate + 1e-6)) - context_frames
        e = int(np.ceil((start + dur) * frame_rate - 1e-6)) + context_frames
        s, e = max(s, 0), min(max(e, s + 1), n)
        if e <= s:
            continue
        prev = symbols[k - 1] if k > 0 else "<s>"
        nxt = symbols[k + 1] if k + 1 < len(symbols) else "</s>"
        items.append(AbxItem(feats[s:e], sym, (prev, nxt), speaker))
    return items


class _Dist:
    """Memoised DTW distances between items."""

    def __init__(self, items: Sequence[AbxItem]) -> None:
        self.items = items
        self.cache: dict[tuple[int, int], float] = {}

    def __call__(self, i: int, j: int) -> float:
        key = (i, j) if i < j else (j, i)
        if key not in self.cache:
            self.cache[key] = dtw_cosine(self.items[key[0]].feats, self.items[key[1]].feats)
        return self.cache[key]


def _cell_error(a_idx: list[int], b_idx: list[int], x_idx: list[int], dist: _Dist, rng: np.random.Generator,
                max_triplets: int) -> tuple[float, int]:
    triplets = [(a, b, x) for a in a_idx for b in b_idx for x in x_idx if x != a]
    if not triplets:
        return float("nan"), 0
    if len(triplets) > max_triplets:
        triplets = [triplets[i] for i in rng.choice(len(triplets), max_triplets, replace=False)]
    errs = []
    for a, b, x in triplets:
        dax, dbx = dist(a, x), dist(b, x)
        errs.append(1.0 if dax > dbx else 0.5 if dax == dbx else 0.0)
    return float(np.mean(errs)), len(triplets)


def _cells(items: Sequence[AbxItem], across: bool, use_context: bool) -> list[tuple]:
    """(context, speaker_key, phone_a, phone_b, A ids, B ids, X ids) for every scorable cell."""
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
    for (ctx, spk), phones in by_ctx_spk.items():
        for pa, pb in permutations(phones, 2):
            if not across:
                if len(phones[pa]) >= 2:
                    cells.append((ctx, spk, pa, pb, phones[pa], phones[pb], phones[pa]))
                continue
            for spk_x in speakers_by_ctx[ctx] - {spk}:
                xs = by_ctx_spk[(ctx, spk_x)].get(pa)
                if xs:
                    cells.append((ctx, (spk, spk_x), pa, pb, phones[pa], phones[pb], xs))
    return cells


def _hierarchical_mean(scored: list[tuple[Hashable, Hashable, Hashable, float]]) -> float:
    """scored: (context, speaker key, phone pair, error) -> mean over context, speaker, pair."""
    by_sp: dict[tuple, list[float]] = defaultdict(list)
    for ctx, spk, pair, err in scored:
        by_sp[(spk, pair)].append(err)
    by_pair: dict[Hashable, list[float]] = defaultdict(list)
    for (spk, pair), errs in by_sp.items():
        by_pair[pair].append(float(np.mean(errs)))
    return float(np.mean([np.mean(v) for v in by_pair.values()]))


def abx_error(items: Sequence[AbxItem], across: bool = False, max_triplets_per_cell: int = 5,
              max_cells: int = 2000, seed: int = 0, use_context: bool = True) -> dict[str, float]:
    """ABX error (fraction, 0..1) of ``items``; see the module docstring.

    Returns ``{error, num_triplets, num_cells, context}``; raises ValueError when nothing is
    scorable even without the context requirement."""
    rng = np.random.default_rng(seed)
    cells = _cells(items, across, use_context)
    if not cells and use_context:
        out = abx_error(items, across, max_triplets_per_cell, max_cells, seed, use_context=False)
        return out
    if not cells:
        raise ValueError("no ABX cell: need two phones (and, across, two speakers) with repeats")
    if len(cells) > max_cells:
        cells = [cells[i] for i in sorted(rng.choice(len(cells), max_cells, replace=False))]
    dist = _Dist(items)
    scored, total = [], 0
    for ctx, spk, pa, pb, a_ids, b_ids, x_ids in cells:
        err, n = _cell_error(a_ids, b_ids, x_ids, dist, rng, max_triplets_per_cell)
        if n:
            scored.append((ctx, spk, (pa, pb), err))
            total += n
    if not scored:
        raise ValueError("no ABX triplet could be formed")
    return {"error": _hierarchical_mean(scored), "num_triplets": total, "num_cells": len(scored),
            "context": "triphone" if use_context else "none"}
