"""Optimisers and learning-rate schedules.

* :class:`ScaledAdam` -- the Zipformer paper's idea (arXiv 2310.11230, Sec. 4): Adam directions
  scaled by each parameter tensor's RMS, so the *relative* change of every tensor per step is
  about ``lr`` whatever its scale, plus an explicitly learned overall scale per tensor (a
  gradient on ``log(scale)`` with its own Adam statistics), and clipping relative to the
  median of recent gradient norms.  Written from the paper, not from icefall.
* :class:`Eden` -- lr = base * ((b^2+B^2)/B^2)^-0.25 * ((e^2+E^2)/E^2)^-0.25 * warmup(b).
* :class:`WarmupCosine` -- linear warm-up then cosine decay (for AdamW).

Uniform scheduler interface: call ``scheduler.step(batch_count, epoch)`` before every
``optimizer.step()``; ``batch_count`` is the number of updates already done (optionally
duration-normalised by the trainer) and ``epoch`` the number of completed epochs (may be
fractional).  It sets each group's ``lr`` for the coming update.  Both schedulers have
``state_dict``/``load_state_dict`` and ``get_last_lr()``.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable, Literal

import torch
from torch import Tensor, nn


class ScaledAdam(torch.optim.Optimizer):
    """Adam whose step for a tensor ``p`` is ``lr * rms(p) * adam_direction``, plus a learned
    scale: ``p <- p * (1 + delta)`` where ``delta`` is an Adam step (lr * scalar_lr_scale) on
    ``d loss / d log scale = sum(grad * p)``.  ``rms(p)`` is floored at ``param_min_rms`` (so
    zero-initialised tensors can move) and the scale stops growing above ``param_max_rms``.
    Scalars (one element) get plain Adam at ``lr * scalar_lr_scale`` clamped to
    ``[-scalar_max, scalar_max]``.  ``clipping_scale``: gradients are clipped to
    ``clipping_scale`` times the median total norm of the last ``clipping_window`` steps
    (None disables).
    """

    def __init__(self, params: Iterable[Any], lr: float = 0.045, betas: tuple[float, float] = (0.9, 0.98),
                 eps: float = 1e-8, scalar_lr_scale: float = 0.1, param_min_rms: float = 1e-5,
                 param_max_rms: float = 3.0, scalar_max: float = 10.0,
                 clipping_scale: float | None = 2.0, clipping_window: int = 128) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, scalar_lr_scale=scalar_lr_scale,
                        param_min_rms=param_min_rms, param_max_rms=param_max_rms,
                        scalar_max=scalar_max)
        super().__init__(params, defaults)
        self.clipping_scale = clipping_scale
        self.norm_history: deque[float] = deque(maxlen=clipping_window)
        self.num_clipped = 0

    def _clip_factor(self) -> float:
        """Multiplier for all gradients this step (1.0 unless the norm is an outlier)."""
        if self.clipping_scale is None:
            return 1.0
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return 1.0
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])).item()
        history = sorted(self.norm_history)
        self.norm_history.append(norm)
        if not math.isfinite(norm) or len(history) < 10:
            return 1.0  # too little history for a robust median in the first steps
        limit = self.clipping_scale * history[len(history) // 2]
        if norm > limit:
            self.num_clipped += 1
            return limit / norm
        return 1.0

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        """One update; ``closure`` re-evaluates the loss (optional)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        clip = self._clip_factor()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.float() * clip
                if p.numel() == 1:
                    self._scalar_step(p, grad, group)
                else:
                    self._tensor_step(p, grad, group)
        return loss

    def _moments(self, state: dict, name: str, value: Tensor, betas: tuple[float, float], eps: float) -> Tensor:
        """Update Adam moments stored under ``name`` and return the bias-corrected direction."""
        b1, b2 = betas
        if name + "_avg" not in state:
            state[name + "_avg"] = torch.zeros_like(value)
            state[name + "_sq"] = torch.zeros_like(value)
        avg, sq = state[name + "_avg"], state[name + "_sq"]
        avg.mul_(b1).add_(value, alpha=1 - b1)
        sq.mul_(b2).addcmul_(value, value, value=1 - b2)
        t = state["step"]
        return (avg / (1 - b1 ** t)) / ((sq / (1 - b2 ** t)).sqrt() + eps)

    def _scalar_step(self, p: Tensor, grad: Tensor, group: dict) -> None:
        state = self.state[p]
        state["step"] = state.get("step", 0) + 1
        direction = self._moments(state, "grad", grad, group["betas"], group["eps"])
        p.add_(direction.to(p.dtype), alpha=-group["lr"] * group["scalar_lr_scale"])
        p.clamp_(-group["scalar_max"], group["scalar_max"])

    def _tensor_step(self, p: Tensor, grad: Tensor, group: dict) -> None:
        state = self.state[p]
        state["step"] = state.get("step", 0) + 1
        lr, betas, eps = group["lr"], group["betas"], group["eps"]
        pf = p.float()
        rms = pf.pow(2).mean().sqrt().item()
        scale_grad = (grad * pf).sum()
        delta = -lr * group["scalar_lr_scale"] * self._moments(state, "scale", scale_grad, betas, eps).item()
        if (rms >= group["param_max_rms"] and delta > 0) or (rms <= group["param_min_rms"] and delta < 0):
            delta = 0.0
        direction = self._moments(state, "grad", grad, betas, eps)
        p.mul_(1.0 + delta)
        p.add_(direction.to(p.dtype), alpha=-lr * max(rms, group["param_min_rms"]))

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["clipping"] = {"history": list(self.norm_history), "num_clipped": self.num_clipped}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        clipping = state_dict.pop("clipping", None)
        super().load_state_dict(state_dict)
        if clipping is not None:
            self.norm_history.clear()
            self.norm_history.extend(clipping["history"])
            self.num_clipped = clipping["num_clipped"]


class _Scheduler:
    """Shared plumbing: remembers base lrs, sets ``group['lr']`` from :meth:`factor`."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.batch_count, self.epoch = 0.0, 0.0
        self.step(0, 0)

    def factor(self, batch_count: float, epoch: float) -> float:
        raise NotImplementedError

    def step(self, batch_count: float, epoch: float = 0.0) -> None:
        """Set the lr of every group for the update after ``batch_count`` updates and
        ``epoch`` completed epochs."""
        self.batch_count, self.epoch = float(batch_count), float(epoch)
        f = self.factor(self.batch_count, self.epoch)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * f

    def get_last_lr(self) -> list[float]:
        """Current lr of every parameter group."""
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"base_lrs": list(self.base_lrs), "batch_count": self.batch_count, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base_lrs = list(state["base_lrs"])
        self.step(state["batch_count"], state["epoch"])


class Eden(_Scheduler):
    """Eden: ``((b^2+B^2)/B^2)^-0.25 * ((e^2+E^2)/E^2)^-0.25 * warmup(b)`` times the base lr;
    ``warmup`` rises linearly from ``warmup_start`` to 1 over ``warmup_batches``."""

    def __init__(self, optimizer: torch.optim.Optimizer, lr_batches: float = 7500.0,
                 lr_epochs: float = 3.5, warmup_batches: float = 500.0, warmup_start: float = 0.5) -> None:
        self.lr_batches, self.lr_epochs = lr_batches, lr_epochs
        self.warmup_batches, self.warmup_start = warmup_batches, warmup_start
        super().__init__(optimizer)

    def factor(self, batch_count: float, epoch: float) -> float:
        b, e, nb, ne = batch_count, epoch, self.lr_batches, self.lr_epochs
        f = ((b * b + nb * nb) / (nb * nb)) ** -0.25 * ((e * e + ne * ne) / (ne * ne)) ** -0.25
        if b < self.warmup_batches:
            f *= self.warmup_start + (1.0 - self.warmup_start) * b / self.warmup_batches
        return f


class WarmupCosine(_Scheduler):
    """Linear warm-up from ~0 to the base lr over ``warmup_batches``, then cosine decay to
    ``min_lr_ratio * base`` at ``total_batches`` (constant afterwards).  Ignores ``epoch``."""

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_batches: float = 500.0,
                 total_batches: float = 100000.0, min_lr_ratio: float = 0.01) -> None:
        self.warmup_batches, self.total_batches, self.min_lr_ratio = warmup_batches, total_batches, min_lr_ratio
        super().__init__(optimizer)

    def factor(self, batch_count: float, epoch: float) -> float:
        if batch_count < self.warmup_batches:
            return (batch_count + 1.0) / (self.warmup_batches + 1.0)
        span = max(self.total_batches - self.warmup_batches, 1.0)
        progress = min(max((batch_count - self.warmup_batches) / span, 0.0), 1.0)
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class OptimConfig:
    """``name``: scaled_adam | adamw; ``scheduler``: eden | warmup_cosine.  ``lr`` is the base lr
    (0.045 is the paper's ScaledAdam value; AdamW wants ~1e-3).  ``weight_decay`` (AdamW) is not
    applied to 1-D tensors (biases, norms, scales) when named parameters are given."""

    name: Literal["scaled_adam", "adamw"] = "scaled_adam"
    lr: float = 0.045
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    weight_decay: float = 0.01
    clipping_scale: float | None = 2.0
    scheduler: Literal["eden", "warmup_cosine"] = "eden"
    lr_batches: float = 7500.0
    lr_epochs: float = 3.5
    warmup_batches: float = 500.0
    warmup_start: float = 0.5
    total_batches: float = 100000.0
    min_lr_ratio: float = 0.01


Scheduler = Eden | WarmupCosine


def _param_groups(params_or_named: Iterable[Any], weight_decay: float) -> list[dict[str, Any]]:
    items = list(params_or_named.named_parameters() if isinstance(params_or_named, nn.Module)
                 else params_or_named)
    if items and isinstance(items[0], tuple):
        items = [(n, p) for n, p in items if p.requires_grad]
        decay = [p for _, p in items if p.ndim > 1]
        no_decay = [p for _, p in items if p.ndim <= 1]
        return [{"params": decay, "weight_decay": weight_decay},
                {"params": no_decay, "weight_decay": 0.0}]
    return [{"params": [p for p in items if p.requires_grad], "weight_decay": weight_decay}]


def build_optimizer(params_or_named: Iterable[Any] | nn.Module,
                    cfg: OptimConfig) -> tuple[torch.optim.Optimizer, Scheduler]:
    """Optimizer + scheduler from ``cfg``.  ``params_or_named``: a module, parameters, or
    ``(name, parameter)`` pairs (names enable the AdamW no-decay group)."""
    if cfg.name == "scaled_adam":
        groups = [{"params": g["params"]} for g in _param_groups(params_or_named, 0.0) if g["params"]]
        opt: torch.optim.Optimizer = ScaledAdam(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                                                clipping_scale=cfg.clipping_scale)
    elif cfg.name == "adamw":
        groups = [g for g in _param_groups(params_or_named, cfg.weight_decay) if g["params"]]
        opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    else:
        raise ValueError(f"unknown optimizer {cfg.name!r}")
    if cfg.scheduler == "eden":
        sched: Scheduler = Eden(opt, cfg.lr_batches, cfg.lr_epochs, cfg.warmup_batches, cfg.warmup_start)
    else:
        sched = WarmupCosine(opt, cfg.warmup_batches, cfg.total_batches, cfg.min_lr_ratio)
    return opt, sched
