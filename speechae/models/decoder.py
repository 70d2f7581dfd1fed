"""Decoder: latent z (B, T_z, D) -> log-mel (B, T, F) at the input frame rate.

Information flow (why the decoder sees z and nothing else): any path from encoder features to
the decoder that avoids the bottleneck (U-Net style skips, a shared stack output) would let the
decoder reconstruct without using z, and the latent would stop meaning anything.  So the only
input is z, lifted by a wide linear layer to the decoder width; capacity comes from Zipformer
layers at the latent rate (long context is cheap there) followed by a learned upsampling and a
few convolution blocks at the output rate for local detail.

Upsampling is learned and frame-local: each latent frame is mapped by a linear layer to
``ratio`` output frames (equivalent to a transposed convolution with kernel = stride), so no
padding ever leaks into valid frames; the conv blocks that follow smooth across the seams.

Decoders are chosen by name (``model.decoder.kind``, default ``zipformer``: :class:`LatentDecoder`)
in the registry :data:`DECODERS`; a new kind registers a builder with :func:`register_decoder`
and the dataclass of its ``model.decoder.options`` (docs/extending.md).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

from torch import Tensor, nn

from speechae.models.scaling import BiasNorm, first_frames, lengths_to_mask, zero_padded
from speechae.models.zipformer import ConvModule, FeedForward, ZipformerLayer, relative_position_encoding
from speechae.registry import Registry

if TYPE_CHECKING:
    from speechae.models.builder import DecoderConfig


class ConvBlock(nn.Module):
    """Residual depthwise-conv module + residual feed-forward + BiasNorm (output-rate layers)."""

    def __init__(self, dim: int, kernel_size: int, ff_dim: int, dropout: float) -> None:
        super().__init__()
        self.conv = ConvModule(dim, kernel_size)
        self.ff = FeedForward(dim, ff_dim, dropout)
        self.norm = BiasNorm(dim)

    def forward(self, x: Tensor, valid: Tensor | None) -> Tensor:
        x = x + self.conv(x, valid)
        return self.norm(x + self.ff(x))


class LatentDecoder(nn.Module):
    """z -> wide linear -> Zipformer layers (latent rate) -> learned upsampling x ``ratio`` ->
    conv blocks (output rate) -> linear to ``num_mel_bins``.  Output length is exactly the
    requested input length (extra upsampled frames are cut)."""

    def __init__(self, latent_dim: int, ratio: int, num_mel_bins: int = 80, dim: int = 256,
                 num_layers: int = 4, ff_dim: int = 768, num_heads: int = 4,
                 kernel_size: int = 15, up_dim: int = 128, num_conv_blocks: int = 2,
                 up_kernel_size: int = 7, dropout: float = 0.1, pos_dim: int = 48) -> None:
        super().__init__()
        self.ratio, self.up_dim, self.pos_dim = ratio, up_dim, pos_dim
        self.in_proj = nn.Linear(latent_dim, dim)
        self.layers = nn.ModuleList(
            ZipformerLayer(dim, ff_dim, num_heads, kernel_size, pos_dim=pos_dim, dropout=dropout)
            for _ in range(num_layers))
        self.upsample = nn.Linear(dim, ratio * up_dim)
        self.blocks = nn.ModuleList(
            ConvBlock(up_dim, up_kernel_size, 2 * up_dim, dropout) for _ in range(num_conv_blocks))
        self.out_proj = nn.Linear(up_dim, num_mel_bins)

    def forward(self, z: Tensor, z_lengths: Tensor, lengths: Tensor, length: int) -> Tensor:
        """z: (B, T_z, D), z_lengths: (B,); lengths: (B,) output lengths; length: padded T.

        Returns (B, length, num_mel_bins) with padded frames set to zero.
        """
        b, tz, _ = z.shape
        if tz * self.ratio < length:
            raise ValueError(f"{tz} latent frames x {self.ratio} < {length} output frames")
        x = self.in_proj(z)
        valid_z = lengths_to_mask(z_lengths, tz)
        if self.layers:
            pos_emb = relative_position_encoding(tz, self.pos_dim, x.device, x.dtype)
            for layer in self.layers:
                x = layer(x, pos_emb, valid_z)
        x = first_frames(self.upsample(x).view(b, tz * self.ratio, self.up_dim), length)
        valid = lengths_to_mask(lengths, length)
        for block in self.blocks:
            x = block(x, valid)
        return zero_padded(self.out_proj(x), valid)


@dataclass(frozen=True)
class DecoderContext:
    """What a decoder builder gets besides its settings.

    Attributes:
        latent_dim: D of z.  frame_ratio: output frames per latent frame.
        num_mel_bins: F of the output.  pos_dim: the encoder's relative-position dimension.
        preset: the model preset's decoder settings (``speechae.models.builder.PRESETS``).
    """

    latent_dim: int
    frame_ratio: int
    num_mel_bins: int
    pos_dim: int
    preset: Mapping[str, Any]


@dataclass(frozen=True)
class DecoderEntry:
    """A registry entry: ``build(settings, ctx) -> nn.Module`` with the decoder contract
    ``forward(z, z_lengths, lengths, length) -> (B, length, num_mel_bins)``.  ``settings`` is the
    typed ``model.decoder`` block when ``options`` is None (the built-in kind), else
    ``model.decoder.options`` parsed strictly into the ``options`` dataclass."""

    build: Callable[[Any, DecoderContext], nn.Module]
    options: Optional[type] = None


DECODERS: Registry[DecoderEntry] = Registry("decoder", builtins=("speechae.models.decoder",
                                                                  "speechae.models.flow_decoder"))
"""Decoder kinds (``model.decoder.kind``): ``zipformer`` (here) and ``flow`` (a conditional
flow-matching decoder, :mod:`speechae.models.flow_decoder`)."""


def register_decoder(name: str, options: Optional[type] = None) -> Callable[[Callable[..., nn.Module]],
                                                                            Callable[..., nn.Module]]:
    """Decorator: register a builder ``fn(settings, ctx) -> nn.Module`` as decoder kind ``name``
    (see :class:`DecoderEntry`); a name can be registered once.  Returns ``fn``."""
    def add(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        DECODERS.register(name, DecoderEntry(fn, options))
        return fn

    return add


@register_decoder("zipformer")
def build_latent_decoder(cfg: DecoderConfig, ctx: DecoderContext) -> LatentDecoder:
    """``zipformer`` (:class:`LatentDecoder`): the preset's decoder settings, overridden by the
    typed keys of ``model.decoder`` that are set."""
    kwargs = dict(ctx.preset)
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name not in ("kind", "options") and value is not None:
            kwargs[f.name] = value
    return LatentDecoder(ctx.latent_dim, ctx.frame_ratio, num_mel_bins=ctx.num_mel_bins, pos_dim=ctx.pos_dim,
                         **kwargs)
