"""Reconstruction losses: zero on identity, padding invariance, known values, waveform losses."""

import torch

from speechae.losses import MultiResolutionSTFTLoss, ReconstructionLoss, WaveformLoss, masked_l1
from speechae.losses.reconstruction import delta_l1, pooled_l1


def _pair(seed=0, t=37, extra=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, t, 16, generator=g)
    y = x + 0.3 * torch.randn(3, t, 16, generator=g)
    if extra:
        x = torch.cat([x, torch.full((3, extra, 16), 5.0)], 1)
        y = torch.cat([y, torch.full((3, extra, 16), -5.0)], 1)
    return y, x, torch.tensor([37, 20, 9])


def test_identity_is_zero_and_different_is_positive():
    loss_fn = ReconstructionLoss(l1=1, l2=1, multires=1, delta=1)
    y, x, lens = _pair()
    loss, metrics = loss_fn(x, x, lens)
    assert float(loss) == 0.0
    loss, metrics = loss_fn(y, x, lens)
    assert float(loss) > 0 and set(metrics) == {"recon/l1", "recon/l2", "recon/multires", "recon/delta"}


def test_padding_never_changes_a_term():
    loss_fn = ReconstructionLoss(l1=1, l2=1, multires=1, delta=1, scales=[[2, 2], [4, 8], [16, 16]])
    y, x, lens = _pair()
    y2, x2, _ = _pair(extra=13)
    a, ma = loss_fn(y, x, lens)
    b, mb = loss_fn(y2, x2, lens)
    assert torch.allclose(a, b)
    for k in ma:
        assert torch.allclose(ma[k], mb[k]), k


def test_known_values():
    x = torch.zeros(2, 4, 2)
    y = torch.zeros(2, 4, 2)
    y[0, :2] = 1.0  # utterance 0 (len 2): error 1 everywhere; utterance 1 (len 4): none
    lens = torch.tensor([2, 4])
    assert abs(float(masked_l1(y, x, lens)) - 4 / 12) < 1e-6  # per valid frame x bin
    # pooled over 2x2: windows of utt 0: one valid (err 1); utt 1: two valid (err 0)
    assert abs(float(pooled_l1(y, x, lens, 2, 2)) - 1 / 3) < 1e-6
    ramp = torch.arange(4.0).view(1, 4, 1).expand(2, 4, 2)
    assert float(delta_l1(ramp + 3.0, ramp, lens)) == 0.0  # offsets are invisible to deltas


def test_gradient_reaches_only_valid_frames():
    y, x, lens = _pair()
    y.requires_grad_(True)
    ReconstructionLoss(l1=1, l2=1, multires=1, delta=1)(y, x, lens)[0].backward()
    assert y.grad[1, 20:].abs().sum() == 0 and y.grad[2, 9:].abs().sum() == 0
    assert y.grad[2, :9].abs().sum() > 0


def test_waveform_stft_loss():
    g = torch.Generator().manual_seed(0)
    wav = torch.randn(2, 4000, generator=g)
    hat = wav + 0.1 * torch.randn(2, 4000, generator=g)
    lens = torch.tensor([4000, 2500])
    for fn in (MultiResolutionSTFTLoss((128, 256)), MultiResolutionSTFTLoss((128, 256), n_mels=20)):
        assert isinstance(fn, WaveformLoss)
        assert float(fn(wav, wav, lens)[0]) == 0.0
        a = fn(hat, wav, lens)[0]
        assert float(a) > 0
        pad = torch.full((2, 700), 3.0)
        b = fn(torch.cat([hat, pad], 1), torch.cat([wav, -pad], 1), lens)[0]
        assert torch.allclose(a, b, rtol=1e-5)
