"""Vocoder objectives: closed forms of the GAN losses, feature matching, mel L1."""

from __future__ import annotations

import pytest
import torch

from speechae.audio import fbank_module
from speechae.losses.adversarial import (MelL1Loss, MultiResolutionSTFTLoss, discriminator_loss,
                                         feature_matching_loss, generator_loss)


def test_hinge_losses_hand_computed() -> None:
    real = [torch.tensor([2.0, 0.5, -1.0]), torch.tensor([[0.0]])]
    fake = [torch.tensor([-2.0, 0.0, 1.0]), torch.tensor([[-0.5]])]
    loss, metrics = discriminator_loss(real, fake, "hinge")
    # D1: real relu(1-r) = [0, .5, 2] -> 2.5/3; fake relu(1+f) = [0, 1, 2] -> 1.  D2: real 1, fake .5.
    assert metrics["adv/d_real"].item() == pytest.approx(2.5 / 3 + 1.0)
    assert metrics["adv/d_fake"].item() == pytest.approx(1.0 + 0.5)
    assert loss.item() == pytest.approx(2.5 / 3 + 1.0 + 1.5)
    # G: relu(1-f) = [3, 1, 0] -> 4/3 ; [1.5].
    assert generator_loss(fake, "hinge").item() == pytest.approx(4 / 3 + 1.5)


def test_lsgan_losses_closed_form() -> None:
    real = [torch.tensor([2.0, 0.5])]
    fake = [torch.tensor([-1.0, 3.0])]
    loss, _ = discriminator_loss(real, fake, "lsgan")
    assert loss.item() == pytest.approx(((1 + 0.25) + (1 + 9)) / 2)
    assert generator_loss(fake, "lsgan").item() == pytest.approx((4 + 4) / 2)
    # The optimal LSGAN discriminator outputs 1 on real and 0 on fake: zero loss; G at 1: zero.
    assert discriminator_loss([torch.ones(5)], [torch.zeros(5)], "lsgan")[0].item() == 0.0
    assert generator_loss([torch.ones(5)], "lsgan").item() == 0.0
    with pytest.raises(ValueError):
        generator_loss(fake, "wgan")  # type: ignore[arg-type]


def test_hinge_saturates_beyond_margin() -> None:
    # Confident, correct logits give exactly zero: no gradient pushes them further.
    real = [torch.tensor([1.5, 3.0], requires_grad=True)]
    fake = [torch.tensor([-1.5, -3.0], requires_grad=True)]
    loss, _ = discriminator_loss(real, fake, "hinge")
    loss.backward()
    assert loss.item() == 0.0 and real[0].grad.abs().sum() == 0 and fake[0].grad.abs().sum() == 0


def test_feature_matching() -> None:
    g = torch.Generator().manual_seed(0)
    maps = [[torch.randn(2, 3, 4, generator=g), torch.randn(2, 5, generator=g)], [torch.randn(2, 7, generator=g)]]
    assert feature_matching_loss(maps, maps).item() == 0.0
    shifted = [[m + 0.5 for m in ms] for ms in maps]
    assert feature_matching_loss(maps, shifted).item() == pytest.approx(0.5)  # mean over 3 layers
    assert feature_matching_loss(maps, shifted, reduction="sum").item() == pytest.approx(1.5)
    # Only the generator side receives a gradient.
    real = [[maps[0][0].clone().requires_grad_(True)]]
    fake = [[torch.zeros(2, 3, 4, requires_grad=True)]]
    feature_matching_loss(real, fake).backward()
    assert real[0][0].grad is None and fake[0][0].grad.abs().sum() > 0


def _tone(n: int = 8000, f0: float = 220.0) -> torch.Tensor:
    t = torch.arange(n) / 16000
    return 0.3 * torch.sin(2 * torch.pi * f0 * t) + 0.1 * torch.sin(2 * torch.pi * 3 * f0 * t)


def test_mel_l1_is_feature_l1_and_zero_on_identity() -> None:
    wav = torch.stack([_tone(), _tone(f0=330.0)])
    other = torch.stack([_tone(f0=250.0), _tone(f0=300.0)])
    mel = MelL1Loss()
    assert mel(wav, wav).item() == 0.0
    expected = (fbank_module()(other) - fbank_module()(wav)).abs().mean()
    assert mel(other, wav).item() == pytest.approx(expected.item(), rel=1e-5)
    assert mel(other, wav, target_feats=fbank_module()(wav)).item() == pytest.approx(expected.item(), rel=1e-5)
    assert list(mel.parameters()) == [] and mel.state_dict() == {}


def test_mel_l1_ignores_padding() -> None:
    wav, other = _tone(), _tone(f0=250.0)
    mel = MelL1Loss()
    ref = mel(other[None], wav[None])
    noise = torch.randn(1600, generator=torch.Generator().manual_seed(0))
    padded = mel(torch.cat([other, noise])[None], torch.cat([wav, -noise])[None], lengths=torch.tensor([8000]))
    # Valid frames whose window reaches into the padding differ slightly (edge reflection).
    assert padded.item() == pytest.approx(ref.item(), rel=0.05)
    unmasked = mel(torch.cat([other, noise])[None], torch.cat([wav, -noise])[None])
    assert abs(unmasked.item() - ref.item()) > abs(padded.item() - ref.item())


def test_mel_l1_floor() -> None:
    silent, quiet = torch.zeros(1, 8000), 1e-2 * _tone()[None]  # log-mel at most -7.2
    assert MelL1Loss(floor=-5.0)(quiet, silent).item() == 0.0  # both below the floor
    assert MelL1Loss()(quiet, silent).item() > 1.0


def test_multires_stft_zero_on_identity_positive_otherwise() -> None:
    wav = _tone()[None]
    loss = MultiResolutionSTFTLoss(fft_sizes=(256, 512))
    lens = torch.tensor([8000])
    assert loss(wav, wav, lens)[0].item() == pytest.approx(0.0, abs=1e-6)
    assert loss(_tone(f0=300.0)[None], wav, lens)[0].item() > 0.5
