"""Span masking rates and span lengths; input -> latent frame mappings; resampling."""

import pytest
import torch

from speechae.losses.masking import (expected_mask_rate, frames_to_latent, latent_frame_mask,
                                     resample_lengthwise, span_mask, start_probability)


def _runs(row: torch.Tensor) -> list[int]:
    runs, n = [], 0
    for v in row.tolist() + [False]:
        if v:
            n += 1
        elif n:
            runs.append(n)
            n = 0
    return runs


@pytest.mark.parametrize("realised", [False, True])
def test_realised_rate_matches_config(realised):
    lens = torch.full((64,), 1000)
    mask = span_mask(lens, 1000, 0.65, 10, torch.Generator().manual_seed(0), realised=realised)
    interior = mask[:, 10:-10].float().mean().item()
    expected = expected_mask_rate(0.65, 10, realised)
    assert abs(interior - expected) < 0.01
    if realised:
        assert abs(interior - 0.65) < 0.01
    else:  # fairseq reading: 6.5 % of frames start a span, ~48 % end up masked
        assert abs(start_probability(0.65, 10) - 0.065) < 1e-12 and 0.45 < interior < 0.51


def test_span_lengths_and_padding():
    lens = torch.tensor([300, 200, 35, 8])
    mask = span_mask(lens, 320, 0.1, 10, torch.Generator().manual_seed(1))
    runs = [r for b in range(3) for r in _runs(mask[b])]
    assert runs and min(runs) >= 10  # every masked run is at least one whole span
    assert sum(r == 10 for r in runs) / len(runs) > 0.8  # rare overlaps at this low rate
    for b, n in enumerate(lens.tolist()):
        assert not mask[b, n:].any()
    assert not mask[3].any()  # shorter than one span: nothing fits
    assert mask[2].any()  # min_spans guarantees a span when one fits
    # more padding does not change the mask
    again = span_mask(lens, 400, 0.1, 10, torch.Generator().manual_seed(1))
    assert torch.equal(again[:, :320], mask) and not again[:, 320:].any()


def test_latent_mask_is_majority_vote():
    feature_lens = torch.tensor([12, 10])
    m = torch.zeros(2, 12, dtype=torch.bool)
    m[0, 0:3] = True  # latent 0: 3 of 4 masked -> masked
    m[0, 4:6] = True  # latent 1: 2 of 4 -> not masked (needs more than half)
    m[1, 8:10] = True  # latent 2 of utt 1 covers 2 valid frames, both masked -> masked
    lat = latent_frame_mask(m, feature_lens, 3, 4)
    assert lat.tolist() == [[True, False, False], [False, False, True]]


def test_units_at_latent_centres():
    units = torch.arange(12).unsqueeze(0).repeat(2, 1)
    out = frames_to_latent(units, torch.tensor([12, 9]), 3, 4)
    assert out.tolist() == [[2, 6, 10], [2, 6, 8]]  # centre frames 2, 6, 10 (clipped to 8)


def test_resample_lengthwise():
    feats = torch.arange(8.0).view(1, 8, 1).repeat(2, 1, 1)
    out = resample_lengthwise(feats, torch.tensor([8, 4]), torch.tensor([4, 4]), 5)
    assert torch.allclose(out[0, :4, 0], torch.tensor([0.5, 2.5, 4.5, 6.5]))  # centre-aligned
    assert torch.allclose(out[1, :4, 0], torch.tensor([0.0, 1.0, 2.0, 3.0]))
    assert out[:, 4].abs().sum() == 0
