"""speechae.audio: the feature module equals stage 2's features; Griffin-Lim inverts them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from lhotse import Fbank, FbankConfig

from speechae.audio import (HOP, PREEMPH, _istft, _povey_window, _stft, deemphasis, fbank_module, griffin_lim,
                            mel_to_power, num_frames, num_samples)


def _synthetic(n: int, seed: int = 0) -> np.ndarray:
    """A chirp plus a harmonic tone plus noise: energy across the whole mel range."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    chirp = np.sin(2 * np.pi * (100 * t + 3000 * t ** 2))
    tone = sum(0.3 / k * np.sin(2 * np.pi * 150 * k * t) for k in range(1, 12))
    return (0.3 * chirp + tone + 0.05 * rng.standard_normal(n)).astype(np.float32) * 0.3


@pytest.fixture(scope="module")
def espeak_utt() -> np.ndarray:
    """One espeak-ng English sentence at 16 kHz, as stage 0 writes it (see data/synth.py)."""
    from scipy.signal import resample_poly

    from speechae.data.espeak import Espeak, EspeakUnavailable

    try:
        engine = Espeak.get()
    except EspeakUnavailable as e:
        pytest.skip(str(e))
    syn = engine.synthesize("The quick brown fox jumps over the lazy dog.", voice="en-us+m1")
    g = math.gcd(16000, syn.sample_rate)
    audio = resample_poly(syn.audio.astype(np.float32) / 32768.0, 16000 // g, syn.sample_rate // g)
    return np.clip(audio, -1, 1).astype(np.float32)


@pytest.mark.parametrize("n", [16000, 16079, 16080, 12345, 400, 161])
def test_fbank_module_equals_lhotse_fbank(n: int, single_thread) -> None:
    audio = _synthetic(n)
    ref = Fbank(FbankConfig(num_mel_bins=80)).extract(audio, 16000)
    ours = fbank_module()(torch.from_numpy(audio)[None])[0].numpy()
    assert ours.shape == ref.shape == (num_frames(n), 80)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_frame_count_contract() -> None:
    # T = S/HOP rounded half up; the vocoders' T*HOP samples give back exactly T frames.
    assert [num_frames(s) for s in (79, 80, 159, 160, 239, 240)] == [0, 1, 1, 1, 1, 2]
    for t in (1, 7, 100):
        assert num_samples(t) == t * HOP
        assert num_frames(num_samples(t)) == t
        assert fbank_module()(torch.zeros(1, num_samples(t)) + 1e-3).shape[1] == t


def test_fbank_module_is_differentiable(single_thread) -> None:
    x = torch.from_numpy(_synthetic(4000))[None].requires_grad_(True)
    fbank_module()(x).mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in fbank_module().parameters())


def test_stft_istft_perfect_reconstruction() -> None:
    # Least-squares overlap-add inverts the analysis exactly where the window sum is non-zero.
    window = _povey_window(dtype=torch.float64)
    y = torch.randn(2, 30 * HOP, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    spec = _stft(y, window, 30)
    assert spec.shape == (2, 30, 257)
    torch.testing.assert_close(_istft(spec, window), y, atol=1e-10, rtol=0)


def test_mel_to_power_nonnegative_and_no_worse_than_clamped_pinv() -> None:
    fb = fbank_module()._fb.detach().double()  # (257, 80)
    g = torch.Generator().manual_seed(0)
    true_power = torch.rand(20, 257, generator=g, dtype=torch.float64) ** 4
    mel = true_power @ fb
    p = mel_to_power(mel.log(), fb)
    assert (p >= 0).all()
    clamped = (mel @ torch.linalg.pinv(fb)).clamp_min(0)
    err = ((p @ fb - mel) ** 2).sum()
    assert err <= ((clamped @ fb - mel) ** 2).sum()
    assert err < 1e-2 * (mel ** 2).sum()


def test_deemphasis_inverts_preemphasis() -> None:
    x = torch.randn(3, 1000, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = x - PREEMPH * torch.nn.functional.pad(x, (1, 0))[:, :-1]
    torch.testing.assert_close(deemphasis(y), x, atol=1e-9, rtol=0)


def _mel_l1(audio: torch.Tensor, ref: torch.Tensor) -> float:
    feats = fbank_module()(audio[None].float())[0]
    t = min(len(feats), len(ref))
    return (feats[:t] - ref[:t]).abs().mean().item()


def test_griffin_lim_reconstructs_espeak_fbank(espeak_utt: np.ndarray, single_thread) -> None:
    ref = fbank_module()(torch.from_numpy(espeak_utt)[None])[0]
    wav = griffin_lim(ref, n_iter=32)
    assert wav.shape == (len(ref) * HOP,)
    assert num_frames(len(wav)) == len(ref)
    good = _mel_l1(wav, ref)
    # Measured 0.31 (natural-log mel L1 over all frames, silence included); random phase: 1.39.
    assert good < 0.45
    assert _mel_l1(griffin_lim(ref, n_iter=0), ref) > 0.9  # no iterations: fails the bound
    # A hop error (the signal played at half speed) fails it too.
    stretched = torch.nn.functional.interpolate(wav[None, None], scale_factor=2.0, mode="linear")[0, 0]
    assert _mel_l1(stretched, ref) > 0.9
    assert _mel_l1(griffin_lim(ref, n_iter=8), ref) > good  # iterating helps
    assert _mel_l1(griffin_lim(ref, n_iter=32, momentum=0.0), ref) > good  # momentum helps (0.35 measured)


def test_griffin_lim_batched_shape() -> None:
    feats = fbank_module()(torch.from_numpy(_synthetic(3200)).repeat(2, 1))
    out = griffin_lim(feats, n_iter=2)
    assert out.shape == (2, feats.shape[1] * HOP) and torch.isfinite(out).all()
