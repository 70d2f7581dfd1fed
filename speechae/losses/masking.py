"""Length masks, span masking of the input and the input-frame -> latent-frame mappings.

Span masking follows the wav2vec 2.0 / HuBERT convention: every valid frame that can start a
whole span inside the utterance is chosen as a span start independently with probability
``q``, and the ``span`` frames from each start are masked (overlapping spans merge).

``mask_prob`` is read the fairseq way (wav2vec 2.0 / HuBERT configs, ``mask_prob: 0.65``,
``mask_length: 10``): ``q = mask_prob / span``, i.e. ``mask_prob`` is the fraction of frames
that *would* be masked if spans never overlapped.  Because they do overlap, the realised rate
away from the utterance edges is ``1 - (1 - q) ** span`` (about 0.49 for 0.65 / 10).  With
``realised=True`` the argument is instead the realised rate and ``q`` is solved from
``1 - (1 - q) ** span = mask_prob``.  Utterances that draw no start get one (``min_spans``),
as in fairseq's ``min_masks``, so every utterance contributes to a masked objective.

A latent frame ``j`` covers input frames ``[floor(j r), floor((j + 1) r))`` with ``r`` the
model's ``frame_ratio``; it counts as masked when more than half of its valid input frames
are masked, and its unit target is the unit of the input frame at its centre
``floor((j + 0.5) r)``.
"""

from __future__ import annotations

from typing import Optional

import torch


def lengths_to_mask(lengths: torch.Tensor, max_len: Optional[int] = None) -> torch.Tensor:
    """Bool (B, T) mask, True on valid frames, from int lengths (B,)."""
    max_len = int(lengths.max().item()) if max_len is None else int(max_len)
    ar = torch.arange(max_len, device=lengths.device)
    return ar.unsqueeze(0) < lengths.unsqueeze(1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` (B, T, ...) over the True entries of ``mask`` (B, T) and trailing dims.

    Returns 0 (with gradient path) when no entry is valid, so empty batches do not give NaN.
    """
    m = mask.to(x.dtype)
    while m.dim() < x.dim():
        m = m.unsqueeze(-1)
    count = m.expand_as(x).sum()
    return (x * m).sum() / count.clamp_min(1.0)


def start_probability(mask_prob: float, span: int, realised: bool = False) -> float:
    """Per-frame probability of starting a span (see module docstring for both readings)."""
    if not 0.0 <= mask_prob < 1.0 + 1e-9:
        raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob}")
    if realised:
        return 1.0 - (1.0 - min(mask_prob, 1.0 - 1e-6)) ** (1.0 / span)
    return min(1.0, mask_prob / span)


def expected_mask_rate(mask_prob: float, span: int, realised: bool = False) -> float:
    """Realised masking rate of frames at least ``span`` frames away from the edges."""
    q = start_probability(mask_prob, span, realised)
    return 1.0 - (1.0 - q) ** span


def span_mask(
    lengths: torch.Tensor,
    max_len: int,
    mask_prob: float,
    span: int,
    generator: Optional[torch.Generator] = None,
    realised: bool = False,
    min_spans: int = 1,
) -> torch.Tensor:
    """Random span mask, bool (B, max_len), never True on padding.

    Args:
        lengths: valid frames per utterance (B,), any device; the mask is returned there.
        max_len: padded length T.
        mask_prob: see the module docstring (fairseq reading unless ``realised``).
        span: span length in frames (HuBERT: 10).
        generator: CPU generator for reproducible masks (seed it from step and rank).
        realised: interpret ``mask_prob`` as the realised masking rate.
        min_spans: utterances with fewer starts get this many random starts (if they fit).
    """
    device = lengths.device
    lens = lengths.detach().to("cpu", torch.long)
    batch = lens.shape[0]
    q = start_probability(mask_prob, span, realised)
    # A start at t masks [t, t + span); it must fit inside the utterance.
    n_pos = (lens - span + 1).clamp_min(0)
    # Draw over the longest valid length, not the padded one, so that the mask (given the
    # generator state) depends only on the lengths: extra padding never changes it.
    width = int(lens.max()) if batch > 0 else 0
    allowed = torch.arange(width).unsqueeze(0) < n_pos.unsqueeze(1)
    starts = (torch.rand(batch, width, generator=generator) < q) & allowed
    if min_spans > 0:
        for b in range(batch):
            have = int(starts[b].sum())
            if have < min_spans and int(n_pos[b]) > 0:
                extra = torch.randint(0, int(n_pos[b]), (min_spans - have,), generator=generator)
                starts[b, extra] = True
    # Dilate the starts forward by span-1 frames: frame t is masked if any start in (t-span, t].
    csum = torch.cumsum(starts.to(torch.int32), dim=1)
    shifted = torch.cat([torch.zeros(batch, span, dtype=csum.dtype), csum], dim=1)[:, :width]
    mask = torch.zeros(batch, max_len, dtype=torch.bool)
    mask[:, :width] = (csum - shifted) > 0
    return mask.to(device)


def _latent_bounds(t_z: int, ratio: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    j = torch.arange(t_z, device=device, dtype=torch.float64)
    lo = torch.floor(j * ratio).long()
    hi = torch.floor((j + 1) * ratio).long().clamp_min(lo + 1)
    return lo, hi


def latent_frame_mask(
    input_mask: torch.Tensor, feature_lens: torch.Tensor, t_z: int, frame_ratio: float
) -> torch.Tensor:
    """Map an input-frame mask (B, T) to latent frames (B, T_z): masked if > half its inputs are.

    Only valid input frames count, so a latent frame straddling the end of an utterance is
    judged on its valid part.
    """
    valid = lengths_to_mask(feature_lens, input_mask.shape[1])
    m = (input_mask & valid).to(torch.float64)
    v = valid.to(torch.float64)
    pad = torch.zeros(m.shape[0], 1, dtype=m.dtype, device=m.device)
    cm = torch.cat([pad, m.cumsum(1)], dim=1)
    cv = torch.cat([pad, v.cumsum(1)], dim=1)
    lo, hi = _latent_bounds(t_z, float(frame_ratio), m.device)
    t = m.shape[1]
    lo, hi = lo.clamp(max=t), hi.clamp(max=t)
    n_masked = cm[:, hi] - cm[:, lo]
    n_valid = cv[:, hi] - cv[:, lo]
    return (n_masked * 2 > n_valid) & (n_valid > 0)


def frames_to_latent(
    values: torch.Tensor, feature_lens: torch.Tensor, t_z: int, frame_ratio: float, pad_value: int = -1
) -> torch.Tensor:
    """Pick, for each latent frame, the per-input-frame value (B, T) at its centre frame.

    Used for unit targets: ``units`` at 100 Hz -> one id per latent frame.  Centres beyond the
    utterance's last valid frame are clipped to it; positions past ``t_z`` lengths are the
    caller's to ignore.
    """
    j = torch.arange(t_z, device=values.device, dtype=torch.float64)
    centre = torch.floor((j + 0.5) * float(frame_ratio)).long()
    last = (feature_lens.to(values.device).long() - 1).clamp_min(0)
    idx = torch.minimum(centre.unsqueeze(0), last.unsqueeze(1))
    idx = idx.clamp(max=values.shape[1] - 1)
    out = torch.gather(values, 1, idx)
    empty = feature_lens.to(values.device).unsqueeze(1) <= 0
    return out.masked_fill(empty, pad_value)


def resample_lengthwise(
    feats: torch.Tensor, feat_lens: torch.Tensor, out_lens: torch.Tensor, out_len: int
) -> torch.Tensor:
    """Linearly resample each utterance of ``feats`` (B, T_in, C) from its own length to ``out_lens``.

    Frame centres are aligned (frame k of an L-frame sequence sits at (k + 0.5) / L of the
    utterance), so e.g. a 50 Hz teacher maps onto a 25 Hz latent without a half-frame shift.
    Output frames past ``out_lens`` are zero.
    """
    batch, t_in, _ = feats.shape
    dev = feats.device
    lin = feat_lens.to(dev).double().clamp_min(1).unsqueeze(1)
    lout = out_lens.to(dev).double().clamp_min(1).unsqueeze(1)
    j = torch.arange(out_len, device=dev, dtype=torch.float64).unsqueeze(0)
    pos = (j + 0.5) * lin / lout - 0.5
    pos = torch.minimum(pos.clamp_min(0.0), lin - 1)
    lo = pos.floor().long().clamp(max=t_in - 1)
    hi = (lo + 1).clamp(max=t_in - 1)
    hi = torch.minimum(hi, (lin - 1).long())
    frac = (pos - lo.double()).to(feats.dtype).unsqueeze(-1)
    c = feats.shape[-1]
    f_lo = torch.gather(feats, 1, lo.unsqueeze(-1).expand(batch, out_len, c))
    f_hi = torch.gather(feats, 1, hi.unsqueeze(-1).expand(batch, out_len, c))
    out = f_lo * (1 - frac) + f_hi * frac
    valid = lengths_to_mask(out_lens.to(dev), out_len).unsqueeze(-1)
    return out * valid.to(out.dtype)

