"""Building blocks shared by the Zipformer encoder and the decoder.

* :class:`ScheduledFloat` -- a hyper-parameter that is piecewise linear in the (duration
  normalised) batch count; the trainer drives it through ``SpeechAE.set_batch_count``.
* SwooshL / SwooshR activations (closed forms from the Zipformer paper) with a memory-light
  backward that keeps only the input.
* :class:`BiasNorm` -- the Zipformer replacement for LayerNorm.
* :class:`Balancer` and :class:`Whiten` -- *gradient-only* constraints: the forward pass is the
  identity, the backward pass adds a correction only while a constraint on the activation
  statistics is violated.
* :func:`limit_param_value` -- clamp in the forward pass whose gradient never pushes further out.
* padding helpers (:func:`lengths_to_mask`, :func:`zero_padded`).

torch.compile: nothing here branches in Python on tensor data while compiling (see
:func:`compiling`): the random gates of Balancer / Whiten become 0-dim tensors drawn in the
graph, padding checks assume padding, and schedules that change every step are read from
buffers (:func:`track_schedule`), so one graph serves every step and every batch length.
"""

from __future__ import annotations

import math
import random
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ScheduledFloat:
    """A float that is piecewise linear in ``batch_count`` and constant outside its knots.

    ``batch_count`` is a duration-normalised step counter (the trainer scales the raw step by
    ``batch_duration * world_size / reference_duration``), so schedules mean the same thing for
    different batch sizes.  Use it wherever a float is expected: ``float(sf)``.
    ``override`` pins the value (tests, ablations) regardless of the batch count.
    """

    def __init__(self, *points: tuple[float, float], name: str = "") -> None:
        if not points:
            raise ValueError("ScheduledFloat needs at least one (batch_count, value) point")
        xs = [float(p[0]) for p in points]
        if xs != sorted(xs):
            raise ValueError(f"ScheduledFloat knots must be increasing, got {xs}")
        self.points = [(float(x), float(y)) for x, y in points]
        self.name = name
        self.batch_count = 0.0
        self.override: float | None = None

    def value_at(self, batch_count: float) -> float:
        """Value of the schedule at ``batch_count`` (ignores ``override``)."""
        pts = self.points
        if batch_count <= pts[0][0]:
            return pts[0][1]
        for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
            if batch_count <= x1:
                return y0 + (y1 - y0) * (batch_count - x0) / (x1 - x0)
        return pts[-1][1]

    def __float__(self) -> float:
        if self.override is not None:
            return self.override
        if len(self.points) == 1:
            # A constant never reads batch_count, so compiled code that uses it is not
            # invalidated when the trainer advances the count.
            return self.points[0][1]
        return self.value_at(self.batch_count)

    def __repr__(self) -> str:
        return f"ScheduledFloat({self.name!r}, {self.points}, now={float(self):.4g})"


FloatLike = float | ScheduledFloat


def as_schedule(value: FloatLike, name: str) -> ScheduledFloat:
    """Wrap a constant as a one-knot schedule so every knob can be driven the same way."""
    if isinstance(value, ScheduledFloat):
        if not value.name:
            value.name = name
        return value
    return ScheduledFloat((0.0, float(value)), name=name)


def iter_scheduled_floats(module: nn.Module) -> Iterator[ScheduledFloat]:
    """Every ScheduledFloat held as an attribute of ``module`` or its submodules."""
    for m in module.modules():
        for v in vars(m).values():
            if isinstance(v, ScheduledFloat):
                yield v


def compiling() -> bool:
    """Whether torch.compile is tracing the caller.  Eager code may branch on tensor values
    (skip work that is not needed); traced code must not (each branch is a graph break)."""
    return torch.compiler.is_compiling()


def track_schedule(module: nn.Module, name: str, value: FloatLike) -> None:
    """Store ``value`` as the schedule ``module.<name>`` and mirror it in a non-persistent 0-dim
    buffer ``<name>_now`` that :func:`refresh_schedules` updates.

    Compiled code reads the buffer (:func:`scheduled`), a graph input, so a value that moves
    every step causes no recompilation; eager code reads the schedule itself, so overrides
    apply at once.
    """
    sf = as_schedule(value, name)
    setattr(module, name, sf)
    module.register_buffer(f"{name}_now", torch.tensor(float(sf)), persistent=False)
    module._tracked_schedules = (*getattr(module, "_tracked_schedules", ()), name)


def scheduled(module: nn.Module, name: str) -> float | Tensor:
    """Current value of a schedule registered with :func:`track_schedule`: a float in eager
    mode, the (B-independent, 0-dim) buffer while compiling."""
    if compiling():
        return getattr(module, f"{name}_now")
    return float(getattr(module, name))


def refresh_schedules(model: nn.Module) -> None:
    """Copy every tracked schedule's current value into its buffer (once per step)."""
    for m in model.modules():
        for name in getattr(m, "_tracked_schedules", ()):
            getattr(m, f"{name}_now").fill_(float(getattr(m, name)))


def random_gate(prob: float, ref: Tensor) -> Tensor | None | bool:
    """Whether a stochastic check runs on this call, with probability ``prob``.

    Eager: Python's RNG decides and the result is ``True`` or ``False`` (a skipped check costs
    nothing).  Compiled: a 0-dim tensor in {0, 1} drawn with torch's RNG inside the graph; the
    check always runs and its effect is multiplied by the gate.
    """
    if compiling():
        return (torch.rand((), device=ref.device) < prob).float()
    return random.random() < prob


# ---------------------------------------------------------------------------------------------
# Swoosh activations
# ---------------------------------------------------------------------------------------------

# (shift, linear slope, constant): Swoosh(x) = log(1 + e^(x - shift)) - slope * x - constant.
# The constants make SwooshR(0) = 0 and SwooshL(0) ~= 0 (paper, Sec. 3.5).
_SWOOSH_R = (1.0, 0.08, 0.313261687)
_SWOOSH_L = (4.0, 0.08, 0.035)


class _SwooshFunction(torch.autograd.Function):
    """Swoosh with a backward that stores only ``x``; saves one activation-sized tensor per
    call compared with autograd through softplus (FF hidden layers are the largest tensors)."""

    @staticmethod
    def forward(ctx, x: Tensor, shift: float, slope: float, const: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.shift, ctx.slope = shift, slope
        # in place: one allocation instead of four (these are the largest activations)
        return F.softplus(x - shift).sub_(x, alpha=slope).sub_(const)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return torch.sigmoid(x - ctx.shift).sub_(ctx.slope).mul_(grad), None, None, None


def _swoosh(x: Tensor, shift: float, slope: float, const: float) -> Tensor:
    if compiling():
        # Plain ops: the compiler fuses them and its partitioner already keeps only ``x`` for
        # backward; the autograd.Function trips dynamo on inputs of derived symbolic size
        # (e.g. a strided conv's output under dynamic=True, torch 2.13).
        return F.softplus(x - shift) - slope * x - const
    return _SwooshFunction.apply(x, shift, slope, const)


def swoosh_r(x: Tensor) -> Tensor:
    """SwooshR(x) = log(1 + e^(x-1)) - 0.08 x - 0.313261687."""
    return _swoosh(x, *_SWOOSH_R)


def swoosh_l(x: Tensor) -> Tensor:
    """SwooshL(x) = log(1 + e^(x-4)) - 0.08 x - 0.035."""
    return _swoosh(x, *_SWOOSH_L)


class SwooshR(nn.Module):
    """Module wrapper of :func:`swoosh_r`."""

    def forward(self, x: Tensor) -> Tensor:
        return swoosh_r(x)


class SwooshL(nn.Module):
    """Module wrapper of :func:`swoosh_l`."""

    def forward(self, x: Tensor) -> Tensor:
        return swoosh_l(x)


# ---------------------------------------------------------------------------------------------
# BiasNorm
# ---------------------------------------------------------------------------------------------


class BiasNorm(nn.Module):
    """``x * mean((x - b)^2)^(-1/2) * exp(log_scale)`` over the channel (last) dim.

    Unlike LayerNorm it does not remove the mean, so the length of the vector can still carry
    information; the learned bias ``b`` keeps the normaliser away from zero.
    """

    def __init__(self, num_channels: int, eps: float = 1e-8) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.log_scale = nn.Parameter(torch.zeros(()))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        ms = (x - self.bias).pow(2).mean(dim=-1, keepdim=True)
        return x * (ms + self.eps).rsqrt() * self.log_scale.exp()


# ---------------------------------------------------------------------------------------------
# Gradient-only constraints
# ---------------------------------------------------------------------------------------------


def _channel_view(x: Tensor, channel_dim: int) -> Tensor:
    """(N, C) view with the channel dimension last."""
    return x.movedim(channel_dim, -1).reshape(-1, x.shape[channel_dim])


class _BalancerFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, channel_dim: int, limits: tuple[float, float, float, float],
                grad_scale: float, gate: Tensor | None) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, gate)
        ctx.channel_dim, ctx.limits, ctx.grad_scale = channel_dim, limits, grad_scale
        return x

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, gate = ctx.saved_tensors
        min_pos, max_pos, min_abs, max_abs = ctx.limits
        dim = ctx.channel_dim % x.ndim
        xs = _channel_view(x.detach().float(), dim)
        pos_frac = (xs > 0).float().mean(dim=0)
        rms = xs.pow(2).mean(dim=0).sqrt()
        # +1: the channel should move up (too few positives), -1: down, 0: fine.
        sign_push = (pos_frac < min_pos).float() - (pos_frac > max_pos).float()
        # +1: magnitudes should grow, -1: shrink.
        abs_push = (rms < min_abs).float() - (rms > max_abs).float()
        # No early exit when nothing is violated: the correction is then exactly zero, and a
        # branch on tensor data would be a host sync (GPU) and a graph break (torch.compile).
        shape = [1] * x.ndim
        shape[dim] = -1
        g_mag = _channel_view(grad.abs().float(), dim).mean(dim=0) * ctx.grad_scale
        # Gradient descent moves x by -grad, so subtracting `push * g_mag` moves x by +push.
        extra = -(sign_push * g_mag).view(shape) - (abs_push * g_mag).view(shape) * x.sign()
        if gate is not None:
            extra = extra * gate
        return grad + extra.to(grad.dtype), None, None, None, None


class Balancer(nn.Module):
    """Keep per-channel statistics of an activation inside a range, through gradients only.

    Constraints per channel (statistics over all other dims): the fraction of positive values in
    ``[min_positive, max_positive]`` and the RMS in ``[min_abs, max_abs]``.  The forward pass is
    the identity.  In backward, a channel that violates a constraint receives an extra gradient
    of magnitude ``grad_scale * mean|grad|`` (of that channel) that pushes it back; channels that
    satisfy every constraint get their gradient unchanged.  The check runs with probability
    ``prob`` per call (it costs a pass over the tensor; see :func:`random_gate`).
    """

    def __init__(self, num_channels: int, channel_dim: int = -1, min_positive: FloatLike = 0.05,
                 max_positive: FloatLike = 0.95, min_abs: FloatLike = 0.2, max_abs: FloatLike = 100.0,
                 grad_scale: FloatLike = 0.04, prob: FloatLike = 0.25) -> None:
        super().__init__()
        self.num_channels, self.channel_dim = num_channels, channel_dim
        self.min_positive = as_schedule(min_positive, "balancer.min_positive")
        self.max_positive = as_schedule(max_positive, "balancer.max_positive")
        self.min_abs = as_schedule(min_abs, "balancer.min_abs")
        self.max_abs = as_schedule(max_abs, "balancer.max_abs")
        self.grad_scale = as_schedule(grad_scale, "balancer.grad_scale")
        self.prob = as_schedule(prob, "balancer.prob")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and x.requires_grad):
            return x
        gate = random_gate(float(self.prob), x)
        if gate is False:
            return x
        limits = (float(self.min_positive), float(self.max_positive),
                  float(self.min_abs), float(self.max_abs))
        return _BalancerFunction.apply(x, self.channel_dim, limits, float(self.grad_scale),
                                       None if gate is True else gate)


def _whitening_stats(x: Tensor, num_groups: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Grouped view (G, N, c_g), uncentred covariance (G, c_g, c_g) / N, mean eigenvalue
    ``tr(C) / d`` and mean squared eigenvalue ``tr(C^2) / d`` (C symmetric) per group."""
    n, c = x.shape
    xg = x.reshape(n, num_groups, c // num_groups).transpose(0, 1)
    cov = xg.transpose(1, 2) @ xg / n
    d = cov.shape[-1]
    mean_eig = cov.diagonal(dim1=-2, dim2=-1).sum(-1) / d
    mean_eig_sq = (cov * cov).sum(dim=(-2, -1)) / d
    return xg, cov, mean_eig, mean_eig_sq


def whitening_metric(x: Tensor, num_groups: int) -> Tensor:
    """``mean(eig(C)^2) / mean(eig(C))^2`` of the (uncentred) channel covariance ``C`` per group,
    averaged over groups; equals 1 iff ``C`` is a multiple of the identity, grows with anisotropy.

    x: (N, C) with C divisible by ``num_groups``.
    """
    _, _, mean_eig, mean_eig_sq = _whitening_stats(x, num_groups)
    return (mean_eig_sq / (mean_eig.pow(2) + 1e-20)).mean()


def whitening_metric_and_grad(x: Tensor, num_groups: int) -> tuple[Tensor, Tensor]:
    """:func:`whitening_metric` of ``x`` (N, C) and its gradient with respect to ``x``, in
    closed form (no autograd inside a backward pass, nothing that stops torch.compile).

    Per group, with ``C = X^T X / N``, ``m = tr(C) / d`` and ``s = tr(C^2) / d``, the metric is
    ``r = s / (m^2 + eps)``; ``dr/dC = A = (2 / d) (C / (m^2 + eps) - s m I / (m^2 + eps)^2)``
    (symmetric), so ``dr/dX = 2 X A / N``, and the mean over ``G`` groups divides by ``G``.
    """
    n, c = x.shape
    xg, cov, mean_eig, mean_eig_sq = _whitening_stats(x, num_groups)
    d = cov.shape[-1]
    denom = mean_eig.pow(2) + 1e-20
    metric = (mean_eig_sq / denom).mean()
    eye = torch.eye(d, device=x.device, dtype=x.dtype)
    a = (2.0 / d) * (cov / denom[:, None, None]
                     - (mean_eig_sq * mean_eig / denom.pow(2))[:, None, None] * eye)
    grad = (xg @ a) * (2.0 / (n * num_groups))  # (G, N, c_g)
    return metric, grad.transpose(0, 1).reshape(n, c)


class _WhitenFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, num_groups: int, limit: float, grad_scale: float,
                gate: Tensor | None) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, gate)
        ctx.num_groups, ctx.limit, ctx.grad_scale = num_groups, limit, grad_scale
        return x

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, gate = ctx.saved_tensors
        metric, mgrad = whitening_metric_and_grad(x.detach().float().reshape(-1, x.shape[-1]),
                                                  ctx.num_groups)
        # Active only above the limit; a multiplier rather than a branch on metric.item().
        active = (metric > ctx.limit).float()
        if gate is not None:
            active = active * gate
        # Scale the correction relative to the incoming gradient so it never dominates it.
        scale = active * ctx.grad_scale * grad.float().norm() / (mgrad.norm() + 1e-20)
        return grad + (mgrad.view(x.shape) * scale).to(grad.dtype), None, None, None, None


class Whiten(nn.Module):
    """Discourage a few directions from dominating the channel covariance, via gradients only.

    Forward is the identity.  In backward, if :func:`whitening_metric` of the input exceeds
    ``whitening_limit``, the gradient of the metric, rescaled to ``grad_scale`` times the norm of
    the incoming gradient, is added; otherwise the gradient passes unchanged.  Checked with
    probability ``prob`` per call.  Input: (..., C), channels last.
    """

    def __init__(self, num_groups: int = 1, whitening_limit: FloatLike = 5.0,
                 grad_scale: FloatLike = 0.01, prob: FloatLike = 0.25) -> None:
        super().__init__()
        self.num_groups = num_groups
        self.whitening_limit = as_schedule(whitening_limit, "whiten.limit")
        self.grad_scale = as_schedule(grad_scale, "whiten.grad_scale")
        self.prob = as_schedule(prob, "whiten.prob")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and x.requires_grad):
            return x
        gate = random_gate(float(self.prob), x)
        if gate is False:
            return x
        return _WhitenFunction.apply(x, self.num_groups, float(self.whitening_limit),
                                     float(self.grad_scale), None if gate is True else gate)


class _LimitValue(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, lo: float | Tensor, hi: float) -> Tensor:  # type: ignore[override]
        lo_t = lo if torch.is_tensor(lo) else None
        ctx.save_for_backward(x, lo_t)
        ctx.lo, ctx.hi = (None if lo_t is not None else lo), hi
        return x.clamp(min=lo).clamp(max=hi)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, lo_t = ctx.saved_tensors
        lo = lo_t if lo_t is not None else ctx.lo
        # Drop only the gradient components that would move x further outside [lo, hi];
        # unlike clamp(), a parameter outside the range still learns its way back.
        outward = ((x < lo) & (grad > 0)) | ((x > ctx.hi) & (grad < 0))
        return grad.masked_fill(outward, 0.0), None, None


def limit_param_value(x: Tensor, lo: float | Tensor, hi: float) -> Tensor:
    """Clamp ``x`` to ``[lo, hi]``; gradients still flow to out-of-range entries when they point
    back into the range.  ``lo`` may be a 0-dim tensor (a tracked schedule while compiling)."""
    return _LimitValue.apply(x, lo, hi)


# ---------------------------------------------------------------------------------------------
# Padding helpers
# ---------------------------------------------------------------------------------------------


def lengths_to_mask(lengths: Tensor, max_len: int) -> Tensor:
    """Bool (B, max_len), True on valid frames."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def has_padding(lengths: Tensor, t: int) -> bool:
    """Whether any sequence is shorter than ``t``; unpadded batches skip all masking work.

    While compiling: always True (masking an unpadded batch changes nothing, and reading the
    answer from the tensor would be a host sync and a graph break)."""
    if compiling():
        return True
    return bool((lengths < t).any())


def first_frames(x: Tensor, length: int) -> Tensor:
    """``x[:, :length]`` for ``length <= x.shape[1]``.  While compiling, an ``index_select``
    instead: on a slice the compiler guards on whether it is the whole tensor (``length ==
    T``), which costs a second graph for lengths that are multiples of an upsampling factor."""
    if compiling():
        return x.index_select(1, torch.arange(length, device=x.device))
    return x[:, :length]


def zero_padded(x: Tensor, valid: Tensor | None) -> Tensor:
    """Zero the padded frames of ``x`` (B, T, C) given ``valid`` (B, T) bool (None: no-op)."""
    if valid is None:
        return x
    return x * valid.unsqueeze(-1).to(x.dtype)


class _MaskedScale(torch.autograd.Function):
    """``x * keep * scale`` saving only the bool mask (1 byte an element, not a float mask)."""

    @staticmethod
    def forward(ctx, x: Tensor, keep: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return x.mul(keep).mul_(scale)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (keep,) = ctx.saved_tensors
        return grad.mul(keep).mul_(ctx.scale), None, None


def keep_mask(shape: torch.Size | list[int], p: float, device: torch.device) -> tuple[Tensor, float]:
    """i.i.d. bool keep mask of ``shape`` (each element dropped with probability ``p``, to within
    2^-17) and the scale ``1 / P(keep)`` that keeps expectations unchanged.

    Why not ``bernoulli_``: torch's CPU kernel draws a double per element (~13 ns an element on
    one thread, 15 ms for a (4, 375, 768) mask; at preset M the 64 dropout masks of a training
    step were 4.4 % of its CPU time in ``bernoulli_`` alone, torch.profiler).  Here each 64-bit
    draw of the generator gives four uniform 16-bit integers, compared with ``round(p * 2^16)``:
    ~1.3 ns an element (1.5 ms for the same mask), from the same seeded generator.
    """
    n = math.prod(shape)
    threshold = round(p * 65536)
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-2**63, None)
    keep = bits.view(torch.int16)[:n].view(shape) >= threshold - 32768
    return keep, 65536.0 / (65536 - threshold)


class Dropout(nn.Dropout):
    """``nn.Dropout`` (i.i.d. mask, same ``p``) with a faster mask on CPU: :func:`keep_mask`
    instead of ``bernoulli_``, and a bool mask saved for backward instead of a float one.  On
    other devices and while compiling it is ``nn.Dropout`` (fused kernels / the compiler's RNG)."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu" or compiling() or self.inplace or self.p >= 1.0:
            return super().forward(x)
        keep, scale = keep_mask(x.shape, self.p, x.device)
        return _MaskedScale.apply(x, keep, scale)


class SharedDropout(nn.Module):
    """Dropout whose mask is shared along one dimension (``shared_dim``, default the time axis
    of a (B, T, C) tensor): each (sequence, channel) is kept or dropped for every frame, as in
    the Zipformer reference's feed-forward and front-end dropout.  The mask is a (B, 1, C)
    tensor instead of a full-size one, which costs T times less random numbers and memory."""

    def __init__(self, p: float, shared_dim: int = 1) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p, self.shared_dim = float(p), shared_dim

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        shape = list(x.shape)
        shape[self.shared_dim] = 1
        keep = torch.empty(shape, device=x.device, dtype=x.dtype).bernoulli_(1.0 - self.p)
        return x * keep.div_(1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}, shared_dim={self.shared_dim}"


def sequence_keep_mask(batch: int, drop_rate: float | Tensor, ref: Tensor) -> Tensor | None:
    """Per-sequence Bernoulli keep mask (B, 1, 1) for stochastic module skipping, or None when a
    float ``drop_rate`` is 0.  A tensor rate (compiled code) always draws the mask."""
    if not torch.is_tensor(drop_rate) and drop_rate <= 0.0:
        return None
    return (torch.rand(batch, 1, 1, device=ref.device) >= drop_rate).to(ref.dtype)


def ceil_div(lengths: Tensor, factor: int) -> Tensor:
    """ceil(lengths / factor) for integer tensors."""
    return torch.div(lengths + factor - 1, factor, rounding_mode="floor")

