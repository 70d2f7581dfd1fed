"""Model configuration and the one function that turns it into modules.

``ModelConfig`` names a preset (``tiny``, ``S``, ``M``, ``L``) and may override any encoder or
decoder setting; ``build_model`` is the only code that reads it -- module constructors take
plain keyword arguments.  Encoder presets S/M/L follow the published Zipformer tables
(arXiv 2310.11230, Table 1: layers, widths, feed-forward dims, heads); the decoder sizes are
ours (roughly a quarter to a third of the encoder).  ``tiny`` is for tests and the CPU recipe.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from speechae.config import ConfigError, from_dict, resolve_choice
from speechae.models.autoencoder import SpeechAE
from speechae.models.bottleneck import BOTTLENECKS
from speechae.models.decoder import LatentDecoder
from speechae.models.zipformer import ZipformerEncoder


@dataclass
class EncoderConfig:
    """Overrides of the preset's encoder settings (None = keep the preset value)."""

    dims: list[int] | None = None
    num_layers: list[int] | None = None
    ff_dims: list[int] | None = None
    num_heads: list[int] | None = None
    downsampling: list[int] | None = None
    kernel_sizes: list[int] | None = None
    query_head_dim: int | None = None
    pos_head_dim: int | None = None
    value_head_dim: int | None = None
    pos_dim: int | None = None
    dropout: float | None = None


@dataclass
class BottleneckConfig:
    """``kind``: gaussian | deterministic.  ``logvar_min/max``: gaussian clamp.  ``norm``
    (deterministic only): none | frame | channel; default none, so that an arm comparison
    changes the regularizer and nothing else (a gaussian bottleneck with a norm is an error).  ``noise_tau`` (deterministic): decoder-input noise
    sigma = tau * U(0,1) per utterance in training (RAE uses 0.8)."""

    kind: Literal["gaussian", "deterministic"] = "gaussian"
    latent_dim: int = 64
    logvar_min: float = -12.0
    logvar_max: float = 6.0
    norm: Literal["none", "frame", "channel"] = "none"
    noise_tau: float = 0.0


@dataclass
class DecoderConfig:
    """Overrides of the preset's decoder settings (None = keep the preset value)."""

    dim: int | None = None
    num_layers: int | None = None
    ff_dim: int | None = None
    num_heads: int | None = None
    kernel_size: int | None = None
    up_dim: int | None = None
    num_conv_blocks: int | None = None
    up_kernel_size: int | None = None
    dropout: float | None = None


@dataclass
class ModelConfig:
    """Everything needed to rebuild a SpeechAE.  ``output_rate``: latent frame rate in Hz,
    25.0 (default) or 12.5 (one extra factor-2 downsampling at the encoder output)."""

    preset: str = "tiny"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    output_rate: float = 25.0
    bottleneck: BottleneckConfig = field(default_factory=BottleneckConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    num_mel_bins: int = 80


_ZIP_COMMON: dict[str, Any] = dict(
    downsampling=[1, 2, 4, 8, 4, 2], kernel_sizes=[31, 31, 15, 15, 15, 31], query_head_dim=32,
    pos_head_dim=4, value_head_dim=12, pos_dim=48, dropout=0.1)

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "encoder": dict(_ZIP_COMMON, dims=[64, 96, 128, 128, 128, 96], num_layers=[1] * 6,
                        ff_dims=[128, 192, 256, 256, 256, 192], num_heads=[2] * 6,
                        kernel_sizes=[15, 15, 7, 7, 7, 15], query_head_dim=16, value_head_dim=8,
                        pos_dim=16),
        "decoder": dict(dim=128, num_layers=1, ff_dim=256, num_heads=2, kernel_size=7,
                        up_dim=64, num_conv_blocks=2, up_kernel_size=7, dropout=0.1),
    },
    "S": {
        "encoder": dict(_ZIP_COMMON, dims=[192, 256, 256, 256, 256, 256], num_layers=[2] * 6,
                        ff_dims=[512, 768, 768, 768, 768, 768], num_heads=[4, 4, 4, 8, 4, 4]),
        "decoder": dict(dim=256, num_layers=4, ff_dim=768, num_heads=4, kernel_size=15,
                        up_dim=128, num_conv_blocks=2, up_kernel_size=7, dropout=0.1),
    },
    "M": {
        "encoder": dict(_ZIP_COMMON, dims=[192, 256, 384, 512, 384, 256],
                        num_layers=[2, 2, 3, 4, 3, 2], ff_dims=[512, 768, 1024, 1536, 1024, 768],
                        num_heads=[4, 4, 4, 8, 4, 4]),
        "decoder": dict(dim=256, num_layers=4, ff_dim=768, num_heads=4, kernel_size=15,
                        up_dim=128, num_conv_blocks=3, up_kernel_size=7, dropout=0.1),
    },
    "L": {
        "encoder": dict(_ZIP_COMMON, dims=[192, 256, 512, 768, 512, 256],
                        num_layers=[2, 2, 4, 5, 4, 2], ff_dims=[512, 768, 1536, 2048, 1536, 768],
                        num_heads=[4, 4, 4, 8, 4, 4]),
        "decoder": dict(dim=512, num_layers=8, ff_dim=1536, num_heads=8, kernel_size=15,
                        up_dim=256, num_conv_blocks=3, up_kernel_size=7, dropout=0.1),
    },
}

_OUTPUT_DOWNSAMPLING = {25.0: 2, 12.5: 4}


def _merge(preset: Mapping[str, Any], overrides: Any) -> dict[str, Any]:
    out = dict(preset)
    for f in dataclasses.fields(overrides):
        value = getattr(overrides, f.name)
        if value is not None:
            out[f.name] = tuple(value) if isinstance(value, list) else value
    return {k: tuple(v) if isinstance(v, list) else v for k, v in out.items()}


def model_config_from_dict(data: Mapping[str, Any]) -> ModelConfig:
    """Strictly parse a ``model:`` config block (unknown keys raise ConfigError)."""
    return from_dict(ModelConfig, data, "model")


def build_model(cfg: ModelConfig | Mapping[str, Any]) -> SpeechAE:
    """Build the SpeechAE described by ``cfg`` (a ModelConfig or its dict form)."""
    if not isinstance(cfg, ModelConfig):
        cfg = model_config_from_dict(cfg)
    preset = resolve_choice("model preset", cfg.preset, PRESETS)
    if cfg.output_rate not in _OUTPUT_DOWNSAMPLING:
        raise ConfigError(f"model.output_rate: {cfg.output_rate} is not one of {sorted(_OUTPUT_DOWNSAMPLING)}")
    enc_kwargs = _merge(preset["encoder"], cfg.encoder)
    encoder = ZipformerEncoder(num_mel_bins=cfg.num_mel_bins,
                               output_downsampling=_OUTPUT_DOWNSAMPLING[cfg.output_rate],
                               **enc_kwargs)
    bn = cfg.bottleneck
    bn_cls = resolve_choice("bottleneck", bn.kind, BOTTLENECKS)
    if bn.kind == "gaussian" and bn.norm != "none":
        raise ConfigError(f"model.bottleneck.norm={bn.norm!r} applies to the deterministic bottleneck only; "
                          "a gaussian posterior is not normalised (set norm: none)")
    if bn.kind == "gaussian":
        bottleneck = bn_cls(encoder.output_dim, bn.latent_dim, logvar_min=bn.logvar_min,
                            logvar_max=bn.logvar_max)
    else:
        bottleneck = bn_cls(encoder.output_dim, bn.latent_dim, norm=bn.norm, noise_tau=bn.noise_tau)
    dec_kwargs = _merge(preset["decoder"], cfg.decoder)
    decoder = LatentDecoder(bn.latent_dim, encoder.frame_ratio, num_mel_bins=cfg.num_mel_bins,
                            pos_dim=enc_kwargs["pos_dim"], **dec_kwargs)
    return SpeechAE(encoder, bottleneck, decoder, num_mel_bins=cfg.num_mel_bins)
