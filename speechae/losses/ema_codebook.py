"""Self-distillation with online clustering (DinoSR, Liu et al. 2023; the encoder objective of
UniWav, Liu et al. ICLR 2025, Sec. 2.1): an EMA teacher, per-layer online codebooks over the
teacher's layer outputs, and masked prediction of their codeword ids by the student.

* Teacher: an exponential moving average of the student's weights,
  ``theta_T <- d theta_T + (1 - d) theta_S`` after every student update, with the decay ``d``
  raised linearly from ``start`` to ``end`` over ``steps`` updates, then held
  (:func:`teacher_decay`; DinoSR: 0.999 -> 0.9999 over the first 30k updates).  Buffers
  (statistics, counters) are copied, not averaged.
* Targets: each of the teacher's top-K layer outputs is instance-normalised (per utterance and
  channel over valid frames, :func:`instance_norm`) and assigned to its nearest codeword
  (L2, or cosine) in that layer's codebook of V codewords (:class:`OnlineCodebook`).  The
  codebook follows its assigned frames by EMA (decay ``tau``, DinoSR 0.9)::

      s_v <- tau s_v + (1 - tau) sum_{x assigned v} x
      n_v <- tau n_v + (1 - tau) |{x assigned v}|
      e_v  = s_v / n_v

  A codeword that gets no frame keeps its value (sum and count decay alike).  Under DDP the
  per-step sums and counts are all-reduced, so every rank holds the same codebooks.
* Student loss (UniWav Eq. 1-2 / DinoSR): for each layer k a linear head maps the student's
  output to V logits; cross-entropy with the teacher's codes on masked frames only, averaged
  over the K layers (:func:`masked_prediction_loss`).
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechae.losses.masking import lengths_to_mask


def teacher_decay(step: int, start: float = 0.999, end: float = 0.9999, steps: int = 30000) -> float:
    """EMA decay of the teacher after ``step`` updates: linear from ``start`` to ``end`` over
    ``steps`` updates, then ``end`` (DinoSR's schedule)."""
    if steps <= 0:
        return float(end)
    frac = min(max(step, 0) / steps, 1.0)
    return float(start + (end - start) * frac)


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """``teacher <- decay * teacher + (1 - decay) * student`` for every parameter; floating
    buffers likewise, integer buffers copied.  Both modules must share their structure."""
    t_params, s_params = dict(teacher.named_parameters()), dict(student.named_parameters())
    if t_params.keys() != s_params.keys():
        raise ValueError("teacher and student parameters differ")
    for name, p in t_params.items():
        p.mul_(decay).add_(s_params[name].detach().to(p.dtype), alpha=1.0 - decay)
    s_bufs = dict(student.named_buffers())
    for name, b in teacher.named_buffers():
        src = s_bufs[name]
        if b.is_floating_point():
            b.mul_(decay).add_(src.to(b.dtype), alpha=1.0 - decay)
        else:
            b.copy_(src)


def instance_norm(x: Tensor, lengths: Tensor, eps: float = 1e-5) -> Tensor:
    """Per-utterance, per-channel standardisation over valid frames (B, T, C); padding -> 0
    (DinoSR / data2vec normalise each teacher layer this way before building targets)."""
    valid = lengths_to_mask(lengths.to(x.device), x.shape[1]).unsqueeze(-1).to(x.dtype)
    n = valid.sum(1, keepdim=True).clamp_min(1.0)
    mean = (x * valid).sum(1, keepdim=True) / n
    var = (((x - mean) * valid) ** 2).sum(1, keepdim=True) / n
    return (x - mean) * torch.rsqrt(var + eps) * valid


def _all_reduce(t: Tensor) -> Tensor:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(t)
    return t


class OnlineCodebook(nn.Module):
    """V codewords of dimension D updated by EMA of their assigned frames (module docstring).

    Args:
        dim: D.  size: V.  decay: tau (DinoSR 0.9).  distance: ``l2`` (DinoSR) or ``cosine``.
        seed: initial codewords are N(0, I) from this seed (the scale of instance-normed frames).
    """

    def __init__(self, dim: int, size: int, decay: float = 0.9, distance: Literal["l2", "cosine"] = "l2",
                 seed: int = 0) -> None:
        super().__init__()
        if distance not in ("l2", "cosine"):
            raise ValueError(f"distance must be l2 or cosine, got {distance!r}")
        self.dim, self.size, self.decay, self.distance = dim, size, float(decay), distance
        init = torch.randn(size, dim, generator=torch.Generator().manual_seed(seed))
        self.register_buffer("embed", init.clone())
        self.register_buffer("ema_sum", init.clone())
        self.register_buffer("ema_count", torch.ones(size))

    @torch.no_grad()
    def assign(self, x: Tensor) -> Tensor:
        """Nearest codeword id (N,) of every row of ``x`` (N, D)."""
        e = self.embed.to(x.dtype)
        if self.distance == "cosine":
            return (F.normalize(x, dim=-1) @ F.normalize(e, dim=-1).T).argmax(-1)
        # ||x - e||^2 = ||x||^2 - 2 x.e + ||e||^2; ||x||^2 is the same for every codeword
        return (2.0 * x @ e.T - (e**2).sum(-1)).argmax(-1)

    @torch.no_grad()
    def update(self, x: Tensor, codes: Tensor) -> None:
        """EMA step with frames ``x`` (N, D) assigned to ``codes`` (N,) (all ranks together)."""
        onehot = F.one_hot(codes, self.size).to(torch.float32)
        stats = torch.cat([onehot.T @ x.float(), onehot.sum(0).unsqueeze(1)], dim=1)
        stats = _all_reduce(stats)
        tau = self.decay
        self.ema_sum.mul_(tau).add_(stats[:, :-1], alpha=1.0 - tau)
        self.ema_count.mul_(tau).add_(stats[:, -1], alpha=1.0 - tau)
        self.embed.copy_(self.ema_sum / self.ema_count.clamp_min(1e-6).unsqueeze(1))


def masked_prediction_loss(logits: Sequence[Tensor], codes: Sequence[Tensor],
                           select: Tensor) -> tuple[Tensor, Tensor]:
    """Mean over layers of the cross-entropy of ``logits[k]`` (B, T, V) against ``codes[k]``
    (B, T) on the frames where ``select`` (B, T) is True; also the mean top-1 accuracy there.
    No selected frame: a zero loss that keeps the graph, accuracy 0."""
    losses, accs = [], []
    n = select.sum()
    for lg, c in zip(logits, codes):
        if int(n) == 0:
            losses.append(lg.sum() * 0.0)
            accs.append(torch.zeros((), device=lg.device))
            continue
        sel_logits, sel_codes = lg[select].float(), c[select]
        losses.append(F.cross_entropy(sel_logits, sel_codes))
        accs.append((sel_logits.argmax(-1) == sel_codes).float().mean())
    return torch.stack(losses).mean(), torch.stack(accs).mean().detach()


class CodebookTargets(nn.Module):
    """K online codebooks over teacher layers plus K linear prediction heads on the student.

    Args:
        layer_dims: D_k of each target layer (teacher's top-K).
        student_dim: C of the student features the heads read.
        codebook_size: V.  decay: codebook EMA tau.  distance: l2 | cosine.  seed: codebook init.
    """

    def __init__(self, layer_dims: Sequence[int], student_dim: int, codebook_size: int, decay: float = 0.9,
                 distance: Literal["l2", "cosine"] = "l2", seed: int = 0) -> None:
        super().__init__()
        self.codebooks = nn.ModuleList(OnlineCodebook(d, codebook_size, decay, distance, seed + k)
                                       for k, d in enumerate(layer_dims))
        self.heads = nn.ModuleList(nn.Linear(student_dim, codebook_size) for _ in layer_dims)

    @torch.no_grad()
    def targets(self, layers: Sequence[Tensor], lengths: Tensor, update: bool) -> list[Tensor]:
        """Codes (B, T) of each teacher layer (B, T, D_k); -1 on padding.  With ``update`` the
        codebooks take their EMA step on this batch's valid frames after assignment."""
        out = []
        for cb, x in zip(self.codebooks, layers):
            valid = lengths_to_mask(lengths.to(x.device), x.shape[1])
            xn = instance_norm(x.float(), lengths)
            flat = xn[valid]
            codes = cb.assign(flat)
            if update:
                cb.update(flat, codes)
            full = torch.full(valid.shape, -1, dtype=torch.long, device=x.device)
            full[valid] = codes
            out.append(full)
        return out

    def forward(self, student: Tensor, codes: Sequence[Tensor], select: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Masked-prediction loss of the student features (B, T, C) against ``codes`` on
        ``select`` frames, and metrics (accuracy, codebook perplexity of the targets)."""
        logits = [head(student) for head in self.heads]
        loss, acc = masked_prediction_loss(logits, codes, select)
        metrics = {"units/acc": acc, "units/masked_frames": select.sum().float()}
        with torch.no_grad():
            ppl = []
            for c in codes:
                valid = c[c >= 0]
                if valid.numel():
                    p = torch.bincount(valid, minlength=self.codebooks[0].size).float() / valid.numel()
                    ppl.append(torch.exp(-(p * (p + 1e-12).log()).sum()))
            if ppl:
                metrics["units/perplexity"] = torch.stack(ppl).mean()
        return loss, metrics


__all__ = ["CodebookTargets", "OnlineCodebook", "ema_update_", "instance_norm", "masked_prediction_loss",
           "teacher_decay"]
