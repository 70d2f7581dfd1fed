"""UniWav-style encoder-decoder (Liu et al., "UniWav: Towards Unified Pre-training for Speech
Representation Learning and Generation", ICLR 2025, arXiv 2503.00733), in this toolkit's terms.

* Encoder: the Zipformer of the autoencoder arms (same presets), fed masked log-mel in
  training (masked frames replaced by a learned embedding, as :class:`SpeechAE`).
* "Layers": the Zipformer's stacks.  Each stack's hidden states (own rate, own width) are
  resampled to the encoder's output frames (25 Hz, frame-centred linear interpolation) and
  are what the EMA teacher's codebooks cluster (top-K stacks) and what the decoder's
  weighted sum reads (all stacks).
* Decoder condition: ``c = sum_l softmax(w)_l LN(h_l)`` over the stacks (UniWav Sec. 2.2:
  the decoder is conditioned on a learned weighted sum of encoder layers; LN is a
  parameter-free layer norm over each stack's own width, then zero-padded to the widest, so
  that stacks of different width and scale weigh by ``w`` alone).
* Decoder: :class:`~speechae.models.flow_decoder.FlowDecoder` (flow matching on log-mel).
* No latent bottleneck.

Evaluation interface (what :class:`~speechae.eval.encoders.ModelEncoder` needs, same as
:class:`SpeechAE`): ``forward(features, lens) -> AEOutput`` with ``recon`` = a mel *sampled*
by the decoder (default NFE / solver / guidance of the config) and ``z`` = the probed
features; ``encode(...) -> EncodeOutput``; ``latent_frame_rate``, ``num_mel_bins``,
``encoder``, ``set_batch_count``.  ``probe`` picks the probed features: ``output`` (default,
the encoder's final output: what UniWav / DinoSR fine-tune for recognition) or
``weighted_sum`` (the decoder's condition).  ``AEOutput.z`` is therefore the probe features,
not (for ``output``) the decoder input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechae.config import from_dict
from speechae.losses.masking import resample_lengthwise
from speechae.models.autoencoder import AEOutput, EncodeOutput, FrameRates
from speechae.models.builder import EncoderConfig, build_encoder
from speechae.models.flow_decoder import FlowDecoder
from speechae.models.zipformer import ZipformerEncoder


# Velocity-network sizes per preset, chosen so that decoder parameters match the autoencoder
# arms' decoder + bottleneck of the same preset (latent_dim 32): tiny 0.486M vs 0.485M,
# S 7.97M vs 8.01M, M 8.06M vs 8.13M, L 62.7M vs 62.7M.
FLOW_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(dim=128, num_blocks=3, ff_dim=288),
    "S": dict(dim=256, num_blocks=10, ff_dim=1088),
    "M": dict(dim=256, num_blocks=10, ff_dim=1056),
    "L": dict(dim=512, num_blocks=21, ff_dim=2048),
}


@dataclass
class FlowDecoderConfig:
    """The flow-matching decoder (``model.decoder``); None = the preset's size
    (:data:`FLOW_PRESETS`).  Defaults: sigma_min 1e-4 (Matcha-TTS), condition dropout 0.2 and
    guidance alpha 0.7 are Voicebox's (Le et al. 2023, Sec. 3.3 / 4); here guidance defaults
    to 0 (one network pass per evaluation; the NFE table in docs/uniwav.md measures both)."""

    dim: int | None = None
    num_blocks: int | None = None
    ff_dim: int | None = None
    kernel_size: int = 7
    time_dim: int = 64
    sigma_min: float = 1e-4
    cond_dropout: float = 0.2
    nfe: int = 16
    method: Literal["euler", "midpoint"] = "euler"
    guidance: float = 0.0
    norm_frames: int = 100_000
    sample_seed: int = 0


@dataclass
class UniWavModelConfig:
    """Everything needed to rebuild a :class:`UniWav` (the ``model:`` block of ``task: uniwav``).

    ``preset``/``encoder``/``output_rate``/``num_mel_bins``: as the autoencoder's ModelConfig.
    ``probe``: output | weighted_sum (module docstring)."""

    preset: str = "tiny"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    output_rate: float = 25.0
    num_mel_bins: int = 80
    decoder: FlowDecoderConfig = field(default_factory=FlowDecoderConfig)
    probe: Literal["output", "weighted_sum"] = "output"


class UniWav(FrameRates, nn.Module):
    """Zipformer encoder + weighted layer sum + flow-matching decoder (module docstring)."""

    def __init__(self, encoder: ZipformerEncoder, decoder: FlowDecoder, num_mel_bins: int = 80,
                 input_frame_rate: float = 100.0, probe: str = "output") -> None:
        super().__init__()
        if probe not in ("output", "weighted_sum"):
            raise ValueError(f"probe must be output or weighted_sum, got {probe!r}")
        self.encoder, self.decoder = encoder, decoder
        self.num_mel_bins, self.input_frame_rate, self.probe = num_mel_bins, input_frame_rate, probe
        self.frame_ratio: int = int(encoder.frame_ratio)
        self.layer_dims: tuple[int, ...] = tuple(encoder.dims)
        self.layer_weights = nn.Parameter(torch.zeros(len(self.layer_dims)))
        self.mask_embedding = nn.Parameter(torch.zeros(num_mel_bins))
        self.batch_count = 0.0

    def layers(self, features: Tensor, feature_lens: Tensor,
               input_mask: Tensor | None = None) -> tuple[Any, list[Tensor]]:
        """Encoder output and every stack's states at the output frames: ``(enc, [h_l (B, T_z,
        C_l)])``; ``input_mask`` (B, T) bool replaces those input frames by the mask embedding."""
        if features.shape[-1] != self.num_mel_bins:
            raise ValueError(f"expected {self.num_mel_bins} mel bins, got {features.shape[-1]}")
        if input_mask is not None:
            features = torch.where(input_mask.unsqueeze(-1), self.mask_embedding.to(features.dtype), features)
        enc = self.encoder(features, feature_lens, return_stacks=True)
        t_z = enc.x.shape[1]
        hs = [st.x if st.x.shape[1] == t_z and torch.equal(st.lengths, enc.lengths)
              else resample_lengthwise(st.x, st.lengths, enc.lengths, t_z) for st in enc.stacks]
        return enc, hs

    def condition(self, hs: list[Tensor], z_lengths: Tensor) -> Tensor:
        """Softmax-weighted sum of the layer-normed stack states, zero-padded to the widest
        (B, T_z, max C_l); zero on padded frames."""
        width = max(h.shape[-1] for h in hs)
        w = torch.softmax(self.layer_weights, 0)
        out = 0.0
        for k, h in enumerate(hs):
            out = out + w[k] * F.pad(F.layer_norm(h, h.shape[-1:]), (0, width - h.shape[-1]))
        valid = torch.arange(out.shape[1], device=out.device)[None] < z_lengths.to(out.device)[:, None]
        return out * valid.unsqueeze(-1).to(out.dtype)

    def _probe(self, enc: Any, cond: Tensor) -> Tensor:
        return enc.x if self.probe == "output" else cond

    def forward(self, features: Tensor, feature_lens: Tensor, input_mask: Tensor | None = None) -> AEOutput:
        """features (B, T, F), feature_lens (B,) -> AEOutput with a sampled ``recon``."""
        enc, hs = self.layers(features, feature_lens, input_mask)
        cond = self.condition(hs, enc.lengths)
        recon = self.decoder.sample(cond, feature_lens, features.shape[1])
        return AEOutput(recon=recon, lengths=feature_lens, z=self._probe(enc, cond), z_mean=None, z_logvar=None,
                        z_lengths=enc.lengths, encoder_out=enc.x, frame_ratio=self.frame_ratio)

    @torch.no_grad()
    def encode(self, features: Tensor, feature_lens: Tensor, return_stacks: bool = False) -> EncodeOutput:
        """Probe features in inference mode (restores the train/eval mode afterwards)."""
        was_training = self.training
        self.eval()
        try:
            enc, hs = self.layers(features, feature_lens)
            z = self._probe(enc, self.condition(hs, enc.lengths) if self.probe == "weighted_sum" else enc.x)
        finally:
            self.train(was_training)
        return EncodeOutput(z, enc.lengths, enc.x, self.latent_frame_rate, enc.stacks if return_stacks else None)


def uniwav_config_from_dict(data: Mapping[str, Any]) -> UniWavModelConfig:
    """Strictly parse a ``model:`` block of ``task: uniwav``."""
    return from_dict(UniWavModelConfig, data, "model")


def build_uniwav(cfg: UniWavModelConfig | Mapping[str, Any]) -> UniWav:
    """Build the :class:`UniWav` described by ``cfg`` (a config or its dict form)."""
    if not isinstance(cfg, UniWavModelConfig):
        cfg = uniwav_config_from_dict(cfg)
    encoder, _ = build_encoder(cfg.preset, cfg.encoder, cfg.output_rate, cfg.num_mel_bins)
    d = cfg.decoder
    sizes = dict(FLOW_PRESETS[cfg.preset])
    sizes.update({k: getattr(d, k) for k in ("dim", "num_blocks", "ff_dim") if getattr(d, k) is not None})
    decoder = FlowDecoder(encoder.output_dim, encoder.frame_ratio, cfg.num_mel_bins, kernel_size=d.kernel_size,
                          time_dim=d.time_dim, sigma_min=d.sigma_min, cond_dropout=d.cond_dropout, nfe=d.nfe,
                          method=d.method, guidance=d.guidance, norm_frames=d.norm_frames,
                          sample_seed=d.sample_seed, **sizes)
    return UniWav(encoder, decoder, cfg.num_mel_bins, probe=cfg.probe)


__all__ = ["FLOW_PRESETS", "FlowDecoderConfig", "UniWav", "UniWavModelConfig", "build_uniwav",
           "uniwav_config_from_dict"]
