"""Shape/length contracts, padding invariance, gradient flow and the frozen-feature API."""

from __future__ import annotations

import pytest
import torch

from speechae.models import AEOutput, ModelConfig, build_model
from speechae.models.testing import ODD_LENGTHS, make_batch, no_skipping


@pytest.mark.parametrize("output_rate,ratio", [(25.0, 4), (12.5, 8)])
def test_shapes_and_lengths(output_rate: float, ratio: int) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(preset="tiny", output_rate=output_rate))
    x, lens = make_batch()
    out = model(x, lens)
    assert isinstance(out, AEOutput)
    assert out.recon.shape == x.shape
    assert out.frame_ratio == ratio
    expected = torch.tensor([-(-n // ratio) for n in ODD_LENGTHS])
    assert torch.equal(out.z_lengths, expected)
    assert torch.equal(model.latent_lengths(lens), expected)
    assert out.z.shape == (3, int(expected.max()), 64)
    assert out.encoder_out.shape[:2] == out.z.shape[:2]
    assert torch.equal(out.lengths, lens)
    # padding is zero in the reconstruction and in z
    assert out.recon[2, ODD_LENGTHS[2]:].abs().sum() == 0
    assert out.z[2, expected[2]:].abs().sum() == 0
    assert all(isinstance(v, float) for v in out.metrics.values())


@pytest.mark.parametrize("kind", ["gaussian", "deterministic"])
def test_padding_invariance_eval(kind: str) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(preset="tiny")
    cfg.bottleneck.kind = kind
    model = build_model(cfg).eval()
    x, lens = make_batch()
    with torch.no_grad():
        batched = model(x, lens)
        for i, n in enumerate(ODD_LENGTHS):
            alone = model(x[i:i + 1, :n], lens[i:i + 1])
            nz = int(alone.z_lengths[0])
            torch.testing.assert_close(batched.recon[i, :n], alone.recon[0], atol=2e-5, rtol=1e-4)
            torch.testing.assert_close(batched.z[i, :nz], alone.z[0], atol=2e-5, rtol=1e-4)


def test_gradients_reach_every_parameter(tiny_model) -> None:
    model = no_skipping(tiny_model).train()
    model.set_batch_count(100000)
    x, lens = make_batch()
    mask = torch.zeros(x.shape[:2], dtype=torch.bool)
    mask[:, 5:15] = True
    out = model(x, lens, input_mask=mask)
    loss = (out.recon - x).pow(2).mean() + out.z.pow(2).mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing


def test_input_mask_replaces_frames(tiny_model) -> None:
    model = tiny_model.eval()
    x, lens = make_batch()
    mask = torch.zeros(x.shape[:2], dtype=torch.bool)
    mask[:, :20] = True
    with torch.no_grad():
        model.mask_embedding.fill_(0.5)
        a = model(x, lens, input_mask=mask).z
        x2 = x.clone()
        x2[:, :20] = 123.0  # content under the mask must not matter
        b = model(x2, lens, input_mask=mask).z
        c = model(x, lens).z
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_encode_returns_mean_and_stacks(tiny_model) -> None:
    model = tiny_model.train()
    x, lens = make_batch()
    enc = model.encode(x, lens, return_stacks=True)
    assert model.training  # mode restored
    again = model.encode(x, lens)
    torch.testing.assert_close(enc.z, again.z)  # deterministic: the posterior mean
    assert enc.frame_rate == 25.0
    assert len(enc.stacks) == 6
    for stack, ds in zip(enc.stacks, (1, 2, 4, 8, 4, 2)):
        assert stack.frame_rate == 50.0 / ds
        assert torch.equal(stack.lengths, -(-(-(-lens // 2)) // ds))
        assert stack.x.shape[1] == int(stack.lengths.max())


def test_set_batch_count_drives_schedules(tiny_model) -> None:
    layer = tiny_model.encoder.stacks[0].layers[0]
    tiny_model.set_batch_count(0)
    early = float(layer.attention_skip_rate)
    tiny_model.set_batch_count(1e6)
    assert early > 0.0 and float(layer.attention_skip_rate) == 0.0


def test_the_shortest_utterances_encode_unpadded(tiny_model) -> None:
    """Down to 9 frames (90 ms) an unpadded utterance reaches one frame at the deepest stack."""
    tiny_model.eval()
    for t in (9, 12, 16, 17, 24):
        out = tiny_model(torch.randn(1, t, 80), torch.tensor([t]))
        assert out.recon.shape == (1, t, 80) and torch.isfinite(out.recon).all(), t
