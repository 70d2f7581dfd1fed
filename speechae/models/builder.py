"""Model configuration and the one function that turns it into modules.

``ModelConfig`` names a preset (``tiny``, ``S``, ``M``, ``L``) and may override any encoder or
decoder setting; ``build_model`` is the only code that reads it -- module constructors take
plain keyword arguments.  Encoder presets S/M/L follow the published Zipformer tables
(arXiv 2310.11230, Table 1: layers, widths, feed-forward dims, heads); the decoder sizes are
ours (roughly a quarter to a third of the encoder).  ``tiny`` is for tests and the CPU recipe.

The bottleneck and the decoder are looked up by name (``model.bottleneck.kind``,
``model.decoder.kind``) in the registries :data:`~speechae.models.bottleneck.BOTTLENECKS` and
:data:`~speechae.models.decoder.DECODERS`.  The built-in kinds read the typed keys below; a
registered kind that is not built in reads its ``options:`` mapping, parsed strictly by the
dataclass it registered (docs/extending.md).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from speechae.config import ConfigError, from_dict, resolve_choice
from speechae.models.autoencoder import SpeechAE
from speechae.models.bottleneck import BOTTLENECKS, BottleneckContext
from speechae.models.decoder import DECODERS, DecoderContext
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


def _settings(where: str, entry: Any, block: Any, typed: tuple[str, ...]) -> Any:
    """What the registered builder of ``block.kind`` receives: ``block`` itself when the entry
    has no options dataclass (the built-in kinds, which read the typed keys ``typed``), else
    ``block.options`` parsed strictly by that dataclass (then the typed keys must keep their
    defaults: they would be silently ignored)."""
    if entry.options is None:
        if block.options:
            raise ConfigError(f"{where}.options: kind '{block.kind}' takes no options; its settings are the keys "
                              f"of {where} itself")
        return block
    defaults = {f.name: f.default for f in dataclasses.fields(block)}
    ignored = sorted(n for n in typed if getattr(block, n) != defaults[n])
    if ignored:
        raise ConfigError(f"{where}: {ignored} apply to the built-in kinds only; kind '{block.kind}' takes its "
                          f"settings from {where}.options")
    return from_dict(entry.options, block.options, f"{where}.options")


@dataclass
class BottleneckConfig:
    """``kind``: a registered bottleneck (built in: gaussian | deterministic).  ``logvar_min/max``:
    gaussian clamp.  ``norm`` (deterministic only): none | frame | channel; default none, so that
    an arm comparison changes the regularizer and nothing else (a gaussian bottleneck with a norm
    is an error).  ``noise_tau`` (deterministic): decoder-input noise sigma = tau * U(0,1) per
    utterance in training (RAE uses 0.8).  ``options``: the settings of a registered kind that is
    not built in (parsed by its own dataclass)."""

    kind: str = "gaussian"
    latent_dim: int = 64
    logvar_min: float = -12.0
    logvar_max: float = 6.0
    norm: Literal["none", "frame", "channel"] = "none"
    noise_tau: float = 0.0
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.settings()  # an unknown kind or bad options fail when the config is read

    def settings(self) -> Any:
        """The settings the registered builder of ``kind`` receives (see :func:`_settings`)."""
        return _settings("model.bottleneck", BOTTLENECKS.get(self.kind), self,
                         ("logvar_min", "logvar_max", "norm", "noise_tau"))


@dataclass
class DecoderConfig:
    """``kind``: a registered decoder (built in: ``zipformer``, :class:`LatentDecoder`).  The typed
    keys override the preset's settings of the built-in decoder (None = keep the preset value);
    ``options``: the settings of a registered kind that is not built in."""

    kind: str = "zipformer"
    dim: int | None = None
    num_layers: int | None = None
    ff_dim: int | None = None
    num_heads: int | None = None
    kernel_size: int | None = None
    up_dim: int | None = None
    num_conv_blocks: int | None = None
    up_kernel_size: int | None = None
    dropout: float | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.settings()

    def settings(self) -> Any:
        """The settings the registered builder of ``kind`` receives (see :func:`_settings`)."""
        typed = tuple(f.name for f in dataclasses.fields(self) if f.name not in ("kind", "options"))
        return _settings("model.decoder", DECODERS.get(self.kind), self, typed)


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


def build_encoder(preset: str, overrides: EncoderConfig, output_rate: float,
                  num_mel_bins: int) -> tuple[ZipformerEncoder, dict[str, Any]]:
    """The Zipformer encoder of ``preset`` with the set keys of ``overrides``, at ``output_rate``
    Hz; also returns its resolved settings.  Shared by every model that has this encoder
    (:func:`build_model`, :func:`speechae.models.uniwav.build_uniwav`)."""
    table = resolve_choice("model preset", preset, PRESETS)
    if output_rate not in _OUTPUT_DOWNSAMPLING:
        raise ConfigError(f"model.output_rate: {output_rate} is not one of {sorted(_OUTPUT_DOWNSAMPLING)}")
    enc_kwargs = _merge(table["encoder"], overrides)
    encoder = ZipformerEncoder(num_mel_bins=num_mel_bins, output_downsampling=_OUTPUT_DOWNSAMPLING[output_rate],
                               **enc_kwargs)
    return encoder, enc_kwargs


def build_model(cfg: ModelConfig | Mapping[str, Any]) -> SpeechAE:
    """Build the SpeechAE described by ``cfg`` (a ModelConfig or its dict form)."""
    if not isinstance(cfg, ModelConfig):
        cfg = model_config_from_dict(cfg)
    preset = resolve_choice("model preset", cfg.preset, PRESETS)
    encoder, enc_kwargs = build_encoder(cfg.preset, cfg.encoder, cfg.output_rate, cfg.num_mel_bins)
    bn = cfg.bottleneck
    bottleneck = BOTTLENECKS.get(bn.kind).build(bn.settings(), BottleneckContext(encoder.output_dim, bn.latent_dim))
    dec = cfg.decoder
    decoder = DECODERS.get(dec.kind).build(dec.settings(), DecoderContext(
        bn.latent_dim, encoder.frame_ratio, cfg.num_mel_bins, enc_kwargs["pos_dim"], preset["decoder"]))
    return SpeechAE(encoder, bottleneck, decoder, num_mel_bins=cfg.num_mel_bins)
