"""Every preset builds and runs; sizes match the published Zipformer encoders."""

from __future__ import annotations

import pytest
import torch

from speechae.config import ConfigError
from speechae.models import PRESETS, ModelConfig, build_model

# Published transducer sizes (encoder + small decoder/joiner), arXiv 2310.11230.
PUBLISHED_M = {"S": 23.3, "M": 65.5, "L": 148.4}


def _params(m: torch.nn.Module) -> float:
    return sum(p.numel() for p in m.parameters()) / 1e6


def test_tiny_is_small() -> None:
    assert _params(build_model(ModelConfig(preset="tiny"))) <= 3.0


@pytest.mark.parametrize("preset", ["S", "M", "L"])
def test_large_presets_forward_and_size(preset: str) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(preset=preset)).eval()
    enc = _params(model.encoder)
    assert 0.85 * PUBLISHED_M[preset] < enc < PUBLISHED_M[preset]
    with torch.no_grad():
        out = model(torch.randn(1, 37, 80), torch.tensor([37]))
    assert out.recon.shape == (1, 37, 80) and out.z.shape == (1, 10, 64)


def test_presets_table_and_strict_config() -> None:
    assert set(PRESETS) == {"tiny", "S", "M", "L"}
    with pytest.raises(ConfigError):
        build_model({"preset": "XL"})
    with pytest.raises(ConfigError):
        build_model({"preset": "tiny", "bottlenek": {}})
    with pytest.raises(ConfigError):
        build_model({"preset": "tiny", "output_rate": 50.0})


def test_overrides_apply() -> None:
    model = build_model({"preset": "tiny", "encoder": {"num_layers": [2, 1, 1, 1, 1, 1]},
                         "bottleneck": {"kind": "deterministic", "latent_dim": 16, "noise_tau": 0.8},
                         "decoder": {"num_layers": 0}})
    assert len(model.encoder.stacks[0].layers) == 2
    assert model.bottleneck.latent_dim == 16 and model.bottleneck.noise_tau == 0.8
    assert len(model.decoder.layers) == 0
