"""EMA-teacher masked prediction as a semantic objective of any autoencoder arm (``ema_codebook``).

The UniWav / DinoSR objective (Liu et al. 2025, Sec. 2.1; Liu et al. 2023, DinoSR) on the
autoencoder's latent: an exponential moving average of the arm's own encoder (the *teacher*)
encodes the clean input; its top-K stacks, instance-normalised and resampled to the latent
rate, are assigned to the nearest codeword of one online codebook per stack (codebooks move by
EMA of their assigned frames); linear heads on the *masked-input* latent z predict those codes
at the masked latent frames (cross-entropy averaged over the K stacks).  After every optimizer
update the teacher takes its EMA step toward the student encoder, with a decay rising linearly
from ``decay_start`` to ``decay_end`` over ``decay_steps`` (DinoSR: 0.999 -> 0.9999 over the
first 30k of 400k updates).

It is the uniwav arm's encoder objective, here driving the latent of an autoencoder arm, so the
regularizer comparison can also be run with a self-distillation objective::

    losses:
      semantic: [ema_codebook]
      weights: {ema_codebook: 1.0}
      options:
        ema_codebook: {codebook_size: 50, top_k: 4}

The teacher and the codebooks are buffers / frozen parameters of this module, so they are in
every checkpoint (the composer's state) and resume exactly; the teacher always runs in eval mode.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Literal

import torch
from torch import nn

from speechae.losses.ema_codebook import CodebookTargets, ema_update_, teacher_decay
from speechae.losses.masking import lengths_to_mask
from speechae.losses.semantic import SEMANTIC_OBJECTIVES, LossContext, SemanticInputs, register_term


@dataclasses.dataclass
class EmaCodebookOptions:
    """``losses.options.ema_codebook``: codebook size V, the teacher's top-K stacks, codebook
    EMA decay and distance, and the teacher's decay schedule (DinoSR's values by default)."""

    codebook_size: int = 256
    top_k: int = 4
    codebook_decay: float = 0.9
    distance: Literal["l2", "cosine"] = "l2"
    decay_start: float = 0.999
    decay_end: float = 0.9999
    decay_steps: int = 30000
    seed: int = 0


class EmaCodebookPrediction(nn.Module):
    """Masked prediction of an EMA teacher's online-codebook ids from the latent (module doc).

    The composer hands it the masked view of z (``needs_mask``); the autoencoder task calls
    :meth:`attach` with the model before the optimizer is built (the teacher copies the encoder
    and the codebooks take its stack widths) and :meth:`after_update` after every update.
    """

    needs_mask = True

    def __init__(self, latent_dim: int, opts: EmaCodebookOptions) -> None:
        super().__init__()
        self.latent_dim, self.opts = latent_dim, opts
        self.teacher: nn.Module | None = None
        self.targets: CodebookTargets | None = None

    def attach(self, model: nn.Module) -> None:
        """Copy ``model.encoder`` as the teacher and build the codebooks and heads."""
        encoder = model.encoder
        self.teacher = copy.deepcopy(encoder).requires_grad_(False).eval()
        p = next(encoder.parameters())
        with torch.no_grad():
            probe = self.teacher(torch.zeros(1, 64, model.num_mel_bins, device=p.device),
                                 torch.tensor([64], device=p.device), return_stacks=True)
        k = min(self.opts.top_k, len(probe.stacks))
        dims = [st.x.shape[-1] for st in probe.stacks[-k:]]
        self.targets = CodebookTargets(dims, self.latent_dim, self.opts.codebook_size, self.opts.codebook_decay,
                                       self.opts.distance, self.opts.seed).to(p.device)

    def train(self, mode: bool = True) -> "EmaCodebookPrediction":
        """Heads and codebooks follow ``mode``; the teacher stays in eval mode."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    @torch.no_grad()
    def after_update(self, step: int, model: nn.Module) -> float:
        """The teacher's EMA step toward ``model.encoder`` after update ``step``; its decay."""
        o = self.opts
        decay = teacher_decay(step + 1, o.decay_start, o.decay_end, o.decay_steps)
        ema_update_(self.teacher, model.encoder, decay)
        return decay

    def forward(self, inp: SemanticInputs) -> tuple[torch.Tensor, dict[str, Any]]:
        """Cross-entropy on the masked latent frames (see the module doc)."""
        if self.teacher is None or self.targets is None:
            raise RuntimeError("ema_codebook: attach(model) was not called (the autoencoder task does it)")
        from speechae.train.uniwav_task import top_layers

        batch = inp.batch
        feats = batch.get("target_features")
        feats = batch["features"] if feats is None else feats  # the teacher sees the clean input
        with torch.no_grad():
            enc = self.teacher(feats, batch["feature_lens"], return_stacks=True)
            layers = top_layers(enc, len(self.targets.codebooks))
            codes = self.targets.targets(layers, enc.lengths, update=self.training)
        t = min(inp.z.shape[1], codes[0].shape[1])
        codes = [c[:, :t] for c in codes]
        select = lengths_to_mask(inp.z_lengths, t)
        if inp.latent_mask is not None:
            select = select & inp.latent_mask[:, :t]
        loss, metrics = self.targets(inp.z[:, :t], codes, select)
        return loss, {f"ema_codebook/{k.split('/')[-1]}": v for k, v in metrics.items()}


@register_term(SEMANTIC_OBJECTIVES, "ema_codebook", default_weight=1.0, options=EmaCodebookOptions)
def build_ema_codebook(opts: EmaCodebookOptions, ctx: LossContext) -> EmaCodebookPrediction:
    """``ema_codebook`` from ``losses.options.ema_codebook``."""
    return EmaCodebookPrediction(ctx.latent_dim, opts)
