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

    Each group is updated by a fixed number of ``torch._foreach_*`` calls over its tensor lists
    (no per-tensor Python loop around the math) and without host syncs: the norm history, the
    clip factor and the per-tensor scale updates stay on the parameters' device.  The
    per-parameter state keys are those of the original per-tensor version, whose results this
    one reproduces to float rounding (tests/test_optim.py).
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
        self.clipping_window = clipping_window
        # Ring buffer of recent total gradient norms, created on first use on the gradients'
        # device; ``_num_norms`` counts appends (a host int that never depends on data).
        self._norms: Tensor | None = None
        self._num_norms = 0
        self._num_clipped: Tensor | int = 0

    @property
    def norm_history(self) -> list[float]:
        """Recent total gradient norms, oldest first (reads the device: not for the hot path)."""
        n, w = self._num_norms, self.clipping_window
        if self._norms is None or n == 0:
            return []
        if n <= w:
            return self._norms[:n].tolist()
        pos = n % w
        return torch.cat([self._norms[pos:], self._norms[:pos]]).tolist()

    @property
    def num_clipped(self) -> int:
        """Steps whose gradients were clipped so far (reads the device)."""
        return int(self._num_clipped)

    def _clip_factor(self, grads: list[Tensor]) -> Tensor | None:
        """0-d multiplier for every gradient this step, or None where it is 1 for sure."""
        if self.clipping_scale is None or not grads:
            return None
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        w, n = self.clipping_window, self._num_norms
        if self._norms is None:
            self._norms = torch.zeros(w, dtype=torch.float32, device=norm.device)
        filled = min(n, w)
        # sorted(history)[len // 2] over the history *before* this step
        median = self._norms[:filled].sort().values[filled // 2] if filled >= 10 else None
        self._norms[n % w] = norm
        self._num_norms = n + 1
        if median is None:
            return None  # too little history for a robust median in the first steps
        limit = self.clipping_scale * median
        clipped = torch.isfinite(norm) & (norm > limit)
        self._num_clipped = self._num_clipped + clipped.long()
        return torch.where(clipped, limit / norm, torch.ones_like(norm))

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        """One update; ``closure`` re-evaluates the loss (optional)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        clip = self._clip_factor([g.float() for g in grads])
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            scalars = [p for p in params if p.numel() == 1]
            tensors = [p for p in params if p.numel() != 1]
            if scalars:
                self._scalar_step(scalars, self._grads(scalars, clip), group)
            if tensors:
                self._tensor_step(tensors, self._grads(tensors, clip), group)
        return loss

    @staticmethod
    def _grads(params: list[Tensor], clip: Tensor | None) -> list[Tensor]:
        """fp32 gradients times the clip factor (read only; ``.grad`` itself is not changed)."""
        grads = [p.grad.float() for p in params]
        return grads if clip is None else torch._foreach_mul(grads, clip)

    def _states(self, params: list[Tensor], names: tuple[str, ...]) -> tuple[list[int], list[list[Tensor]]]:
        """Advance every tensor's step count; return the counts and the moment buffers
        ``state[name + "_avg"]`` / ``state[name + "_sq"]`` for each name (created as zeros)."""
        steps, buffers = [], [[] for _ in range(2 * len(names))]
        for p in params:
            state = self.state[p]
            state["step"] = state.get("step", 0) + 1
            steps.append(state["step"])
            for i, name in enumerate(names):
                if name + "_avg" not in state:
                    shape = p.shape if name == "grad" else ()
                    state[name + "_avg"] = torch.zeros(shape, dtype=torch.float32, device=p.device)
                    state[name + "_sq"] = torch.zeros(shape, dtype=torch.float32, device=p.device)
                buffers[2 * i].append(state[name + "_avg"])
                buffers[2 * i + 1].append(state[name + "_sq"])
        return steps, buffers

    @staticmethod
    def _update_moments(avg: list[Tensor], sq: list[Tensor], values: list[Tensor], b1: float, b2: float) -> None:
        """avg <- b1 avg + (1 - b1) v;  sq <- b2 sq + (1 - b2) v^2 (in place)."""
        torch._foreach_lerp_(avg, values, 1 - b1)
        torch._foreach_mul_(sq, b2)
        torch._foreach_addcmul_(sq, values, values, value=1 - b2)

    @staticmethod
    def _denominator(sq: list[Tensor], steps: list[int], b2: float, eps: float) -> list[Tensor]:
        """``sqrt(sq) + eps * sqrt(1 - b2^t)``: the Adam direction
        ``(avg / (1 - b1^t)) / (sqrt(sq / (1 - b2^t)) + eps)`` equals
        ``avg / denominator * sqrt(1 - b2^t) / (1 - b1^t)`` (two passes fewer)."""
        denom = torch._foreach_sqrt(sq)
        torch._foreach_add_(denom, [eps * math.sqrt(1 - b2 ** t) for t in steps])
        return denom

    @staticmethod
    def _host_or_device(values: Tensor) -> list:
        """Per-tensor factors as host floats on CPU (the cheap scalar-list kernels; no device
        to wait for), as 0-d device tensors elsewhere (no host sync)."""
        return values.tolist() if values.device.type == "cpu" else list(values.unbind())

    def _scalar_step(self, params: list[Tensor], grads: list[Tensor], group: dict) -> None:
        (b1, b2), eps = group["betas"], group["eps"]
        steps, (avg, sq) = self._states(params, ("grad",))
        self._update_moments(avg, sq, grads, b1, b2)
        denom = self._denominator(sq, steps, b2, eps)
        lr = group["lr"] * group["scalar_lr_scale"]
        torch._foreach_addcdiv_(params, avg, denom,
                                [-lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t) for t in steps])
        torch._foreach_clamp_min_(params, -group["scalar_max"])
        torch._foreach_clamp_max_(params, group["scalar_max"])

    def _tensor_step(self, params: list[Tensor], grads: list[Tensor], group: dict) -> None:
        lr, (b1, b2), eps = group["lr"], group["betas"], group["eps"]
        min_rms, max_rms = group["param_min_rms"], group["param_max_rms"]
        steps, (avg, sq, s_avg, s_sq) = self._states(params, ("grad", "scale"))
        device = params[0].device
        numel = torch.tensor([p.numel() for p in params], dtype=torch.float32, device=device)
        rms = torch.stack(torch._foreach_norm(params)) / numel.sqrt()
        # d loss / d log(scale) = sum(grad * p) per tensor: one fused read of both
        scale_grads = [torch.dot(g.reshape(-1), p.reshape(-1)) for g, p in zip(grads, params)]
        self._update_moments(s_avg, s_sq, scale_grads, b1, b2)
        bc1 = torch.tensor([1 - b1 ** t for t in steps], dtype=torch.float32, device=device)
        bc2 = torch.tensor([1 - b2 ** t for t in steps], dtype=torch.float32, device=device)
        scale_dir = (torch.stack(s_avg) / bc1) / ((torch.stack(s_sq) / bc2).sqrt() + eps)
        delta = scale_dir * (-lr * group["scalar_lr_scale"])
        frozen = ((rms >= max_rms) & (delta > 0)) | ((rms <= min_rms) & (delta < 0))
        delta = torch.where(frozen, torch.zeros_like(delta), delta)
        self._update_moments(avg, sq, grads, b1, b2)
        denom = self._denominator(sq, steps, b2, eps)
        torch._foreach_mul_(params, self._host_or_device(1.0 + delta))
        factor = -lr * rms.clamp_min(min_rms) * bc2.sqrt() / bc1
        if device.type == "cpu":
            torch._foreach_addcdiv_(params, avg, denom, factor.tolist())
        else:
            torch._foreach_div_(denom, list(factor.unbind()))
            torch._foreach_addcdiv_(params, avg, denom)

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["clipping"] = {"history": self.norm_history, "num_clipped": self.num_clipped}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        clipping = state_dict.pop("clipping", None)
        super().load_state_dict(state_dict)
        if clipping is not None:
            history = list(clipping["history"])[-self.clipping_window:]
            device = next((p.device for g in self.param_groups for p in g["params"]), None)
            self._norms = torch.zeros(self.clipping_window, dtype=torch.float32, device=device)
            self._norms[:len(history)] = torch.tensor(history, dtype=torch.float32)
            self._num_norms = len(history)
            self._num_clipped = int(clipping["num_clipped"])


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
