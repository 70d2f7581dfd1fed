"""The speech autoencoder, composed from an injected encoder, bottleneck and decoder.

See docs/CONTRACTS.md ("Model output") for the public shapes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from speechae.models.bottleneck import BottleneckOutput
from speechae.models.scaling import iter_scheduled_floats, refresh_schedules
from speechae.models.zipformer import StackOutput


@dataclass
class AEOutput:
    """Result of :meth:`SpeechAE.forward`.

    recon (B, T, F) and lengths (B,); z (B, T_z, D) -- what the decoder saw, before
    decoder-input noise; z_mean / z_logvar (gaussian only, else None); z_lengths (B,);
    encoder_out (B, T_z, C); frame_ratio -- input frames per latent frame; metrics -- floats.
    """

    recon: Tensor
    lengths: Tensor
    z: Tensor
    z_mean: Tensor | None
    z_logvar: Tensor | None
    z_lengths: Tensor
    encoder_out: Tensor
    frame_ratio: int
    metrics: dict[str, float] = field(default_factory=dict)
    # a generative decoder's training loss (flow matching) on the rows given as ``target``
    decoder_loss: Tensor | None = None


@dataclass
class EncodeOutput:
    """Frozen-feature view: z (B, T_z, D) (gaussian: the mean), z_lengths, encoder_out
    (B, T_z, C), frame_rate of z in Hz, and, on request, every encoder stack's states."""

    z: Tensor
    z_lengths: Tensor
    encoder_out: Tensor
    frame_rate: float
    stacks: list[StackOutput] | None = None


class FrameRates:
    """What the trainer and the evaluation read of a model besides its forward: the latent frame
    rate and lengths, and the batch count that drives its ScheduledFloats.  Mixed into
    :class:`SpeechAE` and :class:`speechae.models.uniwav.UniWav`, which set ``input_frame_rate``
    (Hz), ``frame_ratio`` (input frames per latent frame) and ``batch_count``."""

    input_frame_rate: float
    frame_ratio: int
    batch_count: float

    @property
    def latent_frame_rate(self) -> float:
        """Latent (output) frames per second."""
        return self.input_frame_rate / self.frame_ratio

    def latent_lengths(self, feature_lens: Tensor) -> Tensor:
        """Latent frames for ``feature_lens`` input frames: ceil(T / frame_ratio)."""
        return torch.div(feature_lens + self.frame_ratio - 1, self.frame_ratio, rounding_mode="floor")

    def set_batch_count(self, batch_count: float) -> None:
        """Drive every ScheduledFloat (skip rates, bypass minima, ...) from the trainer."""
        self.batch_count = float(batch_count)
        for sf in iter_scheduled_floats(self):
            sf.batch_count = self.batch_count
        refresh_schedules(self)


class SpeechAE(FrameRates, nn.Module):
    """encoder -> bottleneck -> decoder.

    Interfaces of the parts (duck-typed): ``encoder(features, lengths, return_stacks)`` returns
    an object with ``x``, ``lengths``, ``stacks`` and has ``frame_ratio`` and ``output_dim``;
    ``bottleneck(x, lengths) -> BottleneckOutput``; ``decoder(z, z_lengths, lengths, T)``.
    """

    def __init__(self, encoder: nn.Module, bottleneck: nn.Module, decoder: nn.Module,
                 num_mel_bins: int = 80, input_frame_rate: float = 100.0) -> None:
        super().__init__()
        self.encoder, self.bottleneck, self.decoder = encoder, bottleneck, decoder
        self.num_mel_bins = num_mel_bins
        self.input_frame_rate = input_frame_rate
        self.frame_ratio: int = int(encoder.frame_ratio)
        # Replaces masked input frames (masked prediction objectives); zeros = "no information"
        # in the scale of the first conv, learned from there.
        self.mask_embedding = nn.Parameter(torch.zeros(num_mel_bins))
        self.batch_count = 0.0

    def compile_parts(self, **kwargs) -> None:
        """torch.compile the encoder and the decoder in place (parameter names and checkpoints
        are unchanged); ``kwargs`` go to :func:`torch.compile`.

        Only these two: they hold nearly all the compute and trace without a graph break, as
        one graph each, whereas the bottleneck and the losses read metrics with ``.item()``.
        Call :meth:`set_batch_count` every step (the graphs read the skip and bypass schedules
        from buffers it refreshes).  Default ``dynamic=False``: with ``dynamic=True`` the model
        traces as one graph for every batch shape (tests/models/test_compile.py), but Inductor
        in torch 2.13 fails to generate the encoder's code; static shapes compile once per
        batch shape (pad batches to a few lengths).  See docs/performance.md for when it pays.
        """
        kwargs.setdefault("dynamic", False)
        self.encoder.compile(**kwargs)
        self.decoder.compile(**kwargs)

    def _encode(self, features: Tensor, feature_lens: Tensor, input_mask: Tensor | None,
                return_stacks: bool):
        if features.shape[-1] != self.num_mel_bins:
            raise ValueError(f"expected {self.num_mel_bins} mel bins, got {features.shape[-1]}")
        if input_mask is not None:
            m = input_mask.unsqueeze(-1)
            features = torch.where(m, self.mask_embedding.to(features.dtype), features)
        enc = self.encoder(features, feature_lens, return_stacks=return_stacks)
        return enc, self.bottleneck(enc.x, enc.lengths)

    def forward(self, features: Tensor, feature_lens: Tensor, input_mask: Tensor | None = None,
                target: Tensor | None = None, target_rows: slice | None = None) -> AEOutput:
        """features: (B, T, F) log-mel, feature_lens: (B,), input_mask: bool (B, T) or None.

        A generative decoder (``decoder.generative``, e.g. ``flow``) is trained from ``target``
        (the clean log-mel of the rows ``target_rows``, default all) into
        ``AEOutput.decoder_loss``; in training mode it does not sample (``recon`` is zeros),
        in eval mode ``recon`` is a sample."""
        enc, bn = self._encode(features, feature_lens, input_mask, False)
        bn: BottleneckOutput
        dec_in = bn.decoder_input if bn.decoder_input is not None else bn.z
        decoder_loss, metrics = None, dict(bn.metrics)
        if getattr(self.decoder, "generative", False):
            if target is not None:
                rows = target_rows if target_rows is not None else slice(None)
                decoder_loss, extra = self.decoder.loss(target, feature_lens[rows], dec_in[rows])
                metrics.update({k: float(v) for k, v in extra.items()})
            recon = (features.new_zeros(features.shape) if self.training
                     else self.decoder(dec_in, bn.lengths, feature_lens, features.shape[1]))
        else:
            recon = self.decoder(dec_in, bn.lengths, feature_lens, features.shape[1])
        return AEOutput(recon=recon, lengths=feature_lens, z=bn.z, z_mean=bn.mean,
                        z_logvar=bn.logvar, z_lengths=bn.lengths, encoder_out=enc.x,
                        frame_ratio=self.frame_ratio, metrics=metrics, decoder_loss=decoder_loss)

    @torch.no_grad()
    def encode(self, features: Tensor, feature_lens: Tensor,
               return_stacks: bool = False) -> EncodeOutput:
        """Latents for probes: inference mode (gaussian mean, no noise, no layer skipping);
        restores the previous train/eval mode afterwards."""
        was_training = self.training
        self.eval()
        try:
            enc, bn = self._encode(features, feature_lens, None, return_stacks)
        finally:
            self.train(was_training)
        z = bn.mean if bn.mean is not None else bn.z
        return EncodeOutput(z, bn.lengths, enc.x, self.latent_frame_rate, enc.stacks)
