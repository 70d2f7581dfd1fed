"""A compact Zipformer encoder (Yao et al., 2023, arXiv 2310.11230), written from the paper.

Data flow for a (B, T, 80) fbank at 100 Hz::

    Conv2dSubsampling          -> (B, ceil(T/2), dims[0])              50 Hz
    stack i (i = 0..5)         runs at 50 / downsampling[i] Hz, input and output at 50 Hz:
        downsample (learned softmax weights over groups of frames)
        num_layers[i] x ZipformerLayer
        upsample (repeat) and a learned per-channel bypass with the stack input
    combine stack outputs      -> (B, ceil(T/2), max(dims))  (each channel from the last stack
                                  that has it, as in the paper)
    output downsample          -> (B, ceil(T/(2*f)), max(dims))     f = 2: 25 Hz, f = 4: 12.5 Hz

Padding: every module either acts per frame, masks padded keys (attention), zeroes padded
frames before a convolution, or (downsampling) repeats the last valid frame into the padding,
so in eval mode the valid outputs of a padded batch equal those of each utterance alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechae.models.scaling import (
    Balancer,
    BiasNorm,
    Dropout,
    ScheduledFloat,
    Whiten,
    ceil_div,
    first_frames,
    has_padding,
    lengths_to_mask,
    limit_param_value,
    scheduled,
    sequence_keep_mask,
    swoosh_l,
    swoosh_r,
    track_schedule,
    zero_padded,
)


@dataclass
class StackOutput:
    """One encoder stack's hidden states at its own frame rate (before upsampling)."""

    x: Tensor  # (B, T_s, C_s)
    lengths: Tensor  # (B,)
    frame_rate: float  # Hz


@dataclass
class EncoderOutput:
    """Encoder result: ``x`` (B, T_out, C), ``lengths`` (B,), optional per-stack states."""

    x: Tensor
    lengths: Tensor
    stacks: list[StackOutput] | None = None


class Conv2dSubsampling(nn.Module):
    """Three 3x3 convolutions over (time, freq) taking 100 Hz fbank to 50 Hz.

    "Same" padding in time plus zeroing of padded frames before each conv keeps valid outputs
    independent of how much padding follows (output length is exactly ``ceil(T/2)``).
    """

    def __init__(self, num_mel_bins: int, out_dim: int, channels: tuple[int, int, int] = (8, 32, 128),
                 dropout: float = 0.1) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(c2, c3, 3, stride=(1, 2), padding=1)
        freq = math.ceil(math.ceil(num_mel_bins / 2) / 2)
        self.out = nn.Linear(c3 * freq, out_dim)
        self.norm = BiasNorm(out_dim)
        self.dropout = Dropout(dropout)

    @staticmethod
    def output_lengths(lengths: Tensor) -> Tensor:
        """Frames after subsampling: ceil(T / 2)."""
        return ceil_div(lengths, 2)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """x: (B, T, F) -> ((B, ceil(T/2), out_dim), lengths)."""
        t = x.shape[1]
        lens2 = self.output_lengths(lengths)
        h = x.unsqueeze(1)
        if has_padding(lengths, t):
            valid = lengths_to_mask(lengths, t)[:, None, :, None]
            valid2 = lengths_to_mask(lens2, (t + 1) // 2)[:, None, :, None]
            h = swoosh_r(self._conv1(h * valid)) * valid
            h = swoosh_r(self.conv2(h)) * valid2
        else:
            h = swoosh_r(self.conv2(swoosh_r(self._conv1(h))))
        h = swoosh_r(self.conv3(h))
        b, c, t2, f = h.shape
        h = h.permute(0, 2, 1, 3).reshape(b, t2, c * f)
        return self.dropout(self.norm(self.out(h))), lens2

    def _conv1(self, h: Tensor) -> Tensor:
        """The one-input-channel 3x3 conv.  On CPU as im2col (9 taps) + a batched matmul:
        oneDNN's backward for a single input channel is ~2.5x slower (measured 70 vs 29 ms on
        30 s of fbank), and the input gradient is needed (it reaches the mask embedding)."""
        if h.device.type != "cpu":
            return self.conv1(h)
        b, _, t, f = h.shape
        c = self.conv1.out_channels
        cols = F.unfold(h, 3, padding=1)  # (B, 9, T*F)
        w = self.conv1.weight.to(h.dtype).view(1, c, 9).expand(b, c, 9)
        return torch.baddbmm(self.conv1.bias.to(h.dtype)[None, :, None], w, cols).view(b, c, t, f)


def relative_position_encoding(length: int, dim: int, device: torch.device,
                               dtype: torch.dtype = torch.float32) -> Tensor:
    """Fixed encoding of relative offsets ``-(length-1) .. length-1``: (2*length-1, dim).

    Offsets are first compressed logarithmically and squashed by atan into (-pi/2, pi/2), then
    encoded by cos/sin at integer frequencies 1..dim/2: near offsets stay distinguishable,
    far ones share a few coarse codes, so the encoding works at any length (the paper's
    "compact" relative encoding idea).  The last channel is a constant 1 (a per-head bias).
    """
    offsets = torch.arange(-(length - 1), length, device=device, dtype=torch.float32)
    c = float(dim)
    compressed = offsets.sign() * c * torch.log1p(offsets.abs() / c)
    angle = torch.atan(compressed / c)
    freqs = torch.arange(1, dim // 2 + 1, device=device, dtype=torch.float32)
    phases = angle[:, None] * freqs[None, :]
    enc = torch.cat([phases.cos(), phases.sin()], dim=-1)
    enc[:, -1] = 1.0
    return enc.to(dtype)


def rel_shift(pos_scores: Tensor) -> Tensor:
    """(..., T, 2T-1) scores of query i against offsets -(T-1)..T-1 -> (..., T, T) scores of
    query i against key j, i.e. column ``j - i + T - 1`` of row i.

    A view, not a gather: in a contiguous row-major tensor that element sits at
    ``i * (2T-1) + (T-1) - i + j = (T-1) + i * (2T-2) + j``, so the flattened rows, read from
    ``T-1`` in rows of ``2T-2``, hold it in column j.  Nothing is copied or saved for
    backward, and only slices and views are used (``as_strided`` needs the storage offset,
    which torch.compile cannot trace).
    """
    pos_scores = pos_scores.contiguous()
    *lead, t, n = pos_scores.shape
    if n != 2 * t - 1:
        raise ValueError(f"expected 2T-1 = {2 * t - 1} offsets, got {n}")
    if t == 1:  # one frame (a short utterance at the deepest stack): the single offset 0
        return pos_scores
    flat = pos_scores.reshape(*lead, t * n)[..., t - 1: t - 1 + t * (n - 1)]
    return flat.reshape(*lead, t, n - 1)[..., :t]


class RelPositionAttentionWeights(nn.Module):
    """Multi-head attention *weights* with relative positions, computed once per layer and
    shared by the non-linear attention and both self-attention modules (the main saving of
    the Zipformer layer).  Returns (B, H, T, T)."""

    def __init__(self, embed_dim: int, num_heads: int, query_head_dim: int, pos_head_dim: int,
                 pos_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.h, self.qd, self.pd = num_heads, query_head_dim, pos_head_dim
        self.in_proj = nn.Linear(embed_dim, num_heads * (2 * query_head_dim + pos_head_dim))
        self.linear_pos = nn.Linear(pos_dim, num_heads * pos_head_dim, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor, pos_emb: Tensor, key_padding: Tensor | None) -> Tensor:
        b, t, _ = x.shape
        h, qd, pd = self.h, self.qd, self.pd
        q, k, p = self.in_proj(x).split([h * qd, h * qd, h * pd], dim=-1)
        q = q.view(b, t, h, qd).transpose(1, 2) * qd ** -0.5
        k = k.view(b, t, h, qd).transpose(1, 2)
        p = p.view(b, t, h, pd).transpose(1, 2)
        scores = q @ k.transpose(-2, -1)  # (B, H, T, T)
        pe = self.linear_pos(pos_emb).view(-1, h, pd).permute(1, 2, 0)  # (H, pd, 2T-1)
        pos_scores = p @ pe  # (B, H, T, 2T-1): query i against every offset
        scores = scores + rel_shift(pos_scores)
        if key_padding is not None:
            scores.masked_fill_(key_padding[:, None, None, :], float("-inf"))
        return self.dropout(scores.softmax(dim=-1))


class SelfAttention(nn.Module):
    """Value projection + weighted sum with precomputed attention weights."""

    def __init__(self, embed_dim: int, num_heads: int, value_head_dim: int) -> None:
        super().__init__()
        self.h, self.vd = num_heads, value_head_dim
        self.in_proj = nn.Linear(embed_dim, num_heads * value_head_dim)
        self.out_proj = nn.Linear(num_heads * value_head_dim, embed_dim)

    def forward(self, x: Tensor, weights: Tensor) -> Tensor:
        b, t, _ = x.shape
        v = self.in_proj(x).view(b, t, self.h, self.vd).transpose(1, 2)
        out = (weights @ v).transpose(1, 2).reshape(b, t, self.h * self.vd)
        return self.out_proj(out)


class NonlinAttention(nn.Module):
    """Gated attention with one head's weights: ``out(y * A (x * tanh(s)))``."""

    def __init__(self, embed_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.hidden = hidden_dim
        self.in_proj = nn.Linear(embed_dim, 3 * hidden_dim)
        self.out_proj = nn.Linear(hidden_dim, embed_dim)
        self.balancer = Balancer(hidden_dim, min_positive=0.3, max_positive=0.7, min_abs=0.2)

    def forward(self, x: Tensor, weights: Tensor) -> Tensor:
        s, v, gate = self.in_proj(x).chunk(3, dim=-1)
        v = self.balancer(v) * torch.tanh(s)
        v = weights[:, 0] @ v  # first head only: (B, T, T) @ (B, T, hidden)
        return self.out_proj(v * gate)


class FeedForward(nn.Module):
    """Linear -> SwooshL -> dropout -> Linear, with a Balancer on the hidden units."""

    def __init__(self, embed_dim: int, hidden_dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.in_proj = nn.Linear(embed_dim, hidden_dim)
        self.balancer = Balancer(hidden_dim, min_positive=0.3, max_positive=1.0, min_abs=0.75,
                                 max_abs=5.0)
        # i.i.d. dropout on purpose.  The reference shares the mask along time (a (B, 1, hidden)
        # mask, scaling.SharedDropout; ~5 % faster at preset tiny), but on the tiny recipe
        # (sigreg arm, 400 steps) it raised dev recon from 3.61 / 3.70 to 3.77 / 3.81 (seeds
        # 42 / 43): dropping a channel for a whole utterance regularises too hard for short runs.
        # scaling.Dropout: the same i.i.d. masks, drawn ~10x faster on CPU than nn.Dropout's.
        self.dropout = Dropout(dropout)
        self.out_proj = nn.Linear(hidden_dim, embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_proj(self.dropout(swoosh_l(self.balancer(self.in_proj(x)))))


class ConvModule(nn.Module):
    """Gated depthwise convolution over time; padded frames are zeroed before the conv so
    they never leak into valid ones."""

    def __init__(self, embed_dim: int, kernel_size: int) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError("kernel_size must be odd (symmetric 'same' padding)")
        self.in_proj = nn.Linear(embed_dim, 2 * embed_dim)
        self.balancer1 = Balancer(2 * embed_dim, min_positive=0.05, max_positive=1.0, min_abs=0.2,
                                  max_abs=10.0)
        self.depthwise = nn.Conv1d(embed_dim, embed_dim, kernel_size, padding=kernel_size // 2,
                                   groups=embed_dim)
        self.balancer2 = Balancer(embed_dim, channel_dim=1, min_positive=0.1, max_positive=0.9,
                                  min_abs=0.2, max_abs=10.0)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, x: Tensor, valid: Tensor | None) -> Tensor:
        x, s = self.balancer1(self.in_proj(x)).chunk(2, dim=-1)
        x = zero_padded(x * torch.sigmoid(s), valid)
        x = self.depthwise(x.transpose(1, 2))
        x = swoosh_r(self.balancer2(x)).transpose(1, 2)
        return self.out_proj(x)


class Bypass(nn.Module):
    """``orig + c * (new - orig)`` with a learned per-channel ``c``.

    In training ``c`` is kept in ``[scale_min, scale_max]`` (``scale_min`` is scheduled: high
    early so layers start close to "use the new value", lower later); with probability
    ``skip_rate`` per sequence ``c = 0``, i.e. the whole layer is skipped (layer skipping).
    """

    def __init__(self, embed_dim: int, scale_min: float | ScheduledFloat = 0.2,
                 scale_max: float = 1.0, skip_rate: float | ScheduledFloat = 0.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((embed_dim,), 0.5))
        self.scale_max = float(scale_max)
        track_schedule(self, "scale_min", scale_min)
        # A constant 0 skip rate never draws a mask (known when built, so no branch at run time).
        self.can_skip = isinstance(skip_rate, ScheduledFloat) or float(skip_rate) > 0.0
        track_schedule(self, "skip_rate", skip_rate)

    def forward(self, orig: Tensor, new: Tensor) -> Tensor:
        c = self.scale
        if self.training:
            c = limit_param_value(c, scheduled(self, "scale_min"), self.scale_max)
            if self.can_skip:
                keep = sequence_keep_mask(new.shape[0], scheduled(self, "skip_rate"), new)
                if keep is not None:
                    c = c * keep
        return orig + (new - orig) * c


def _layer_schedules() -> dict[str, ScheduledFloat]:
    """Per-layer stochastic-skip and bypass schedules (values in the spirit of the paper:
    aggressive regularisation early, switched off later)."""
    return {
        "attention_skip_rate": ScheduledFloat((0.0, 0.2), (4000.0, 0.05), (16000.0, 0.0)),
        "conv_skip_rate": ScheduledFloat((0.0, 0.2), (4000.0, 0.05), (16000.0, 0.0)),
        "ff_skip_rate": ScheduledFloat((0.0, 0.1), (4000.0, 0.01), (50000.0, 0.0)),
        "layer_skip_rate": ScheduledFloat((0.0, 0.5), (4000.0, 0.02)),
        "bypass_scale_min": ScheduledFloat((0.0, 0.9), (20000.0, 0.2)),
        "mid_bypass_scale_min": ScheduledFloat((0.0, 0.5), (20000.0, 0.2)),
    }


class ZipformerLayer(nn.Module):
    """One Zipformer block: FF, non-linear attention, self-attention, conv, FF, mid-bypass,
    self-attention, conv, FF, BiasNorm, bypass; attention weights computed once."""

    def __init__(self, embed_dim: int, ff_dim: int, num_heads: int, kernel_size: int,
                 query_head_dim: int = 32, pos_head_dim: int = 4, value_head_dim: int = 12,
                 pos_dim: int = 48, dropout: float = 0.1) -> None:
        super().__init__()
        sched = _layer_schedules()
        for name in ("attention_skip_rate", "conv_skip_rate", "ff_skip_rate"):
            sched[name].name = name
            track_schedule(self, name, sched[name])
        self.attn_weights = RelPositionAttentionWeights(embed_dim, num_heads, query_head_dim,
                                                        pos_head_dim, pos_dim)
        self.ff1 = FeedForward(embed_dim, ff_dim * 3 // 4, dropout)
        self.ff2 = FeedForward(embed_dim, ff_dim, dropout)
        self.ff3 = FeedForward(embed_dim, ff_dim * 5 // 4, dropout)
        self.nonlin_attn = NonlinAttention(embed_dim, embed_dim * 3 // 4)
        self.self_attn1 = SelfAttention(embed_dim, num_heads, value_head_dim)
        self.self_attn2 = SelfAttention(embed_dim, num_heads, value_head_dim)
        self.conv1 = ConvModule(embed_dim, kernel_size)
        self.conv2 = ConvModule(embed_dim, kernel_size)
        self.bypass_mid = Bypass(embed_dim, scale_min=sched["mid_bypass_scale_min"])
        self.bypass = Bypass(embed_dim, scale_min=sched["bypass_scale_min"],
                             skip_rate=sched["layer_skip_rate"])
        sched["layer_skip_rate"].name = "layer_skip_rate"
        self.balancer = Balancer(embed_dim, min_positive=0.45, max_positive=0.55, min_abs=0.2,
                                 max_abs=4.0)
        self.norm = BiasNorm(embed_dim)
        self.whiten = Whiten(whitening_limit=5.0)

    def _keep(self, x: Tensor, rate_name: str) -> Tensor | float:
        if not self.training:
            return 1.0
        keep = sequence_keep_mask(x.shape[0], scheduled(self, rate_name), x)
        return 1.0 if keep is None else keep

    def forward(self, x: Tensor, pos_emb: Tensor, valid: Tensor | None) -> Tensor:
        """x: (B, T, C); pos_emb: (2T-1, pos_dim); valid: (B, T) bool, None = no padding."""
        orig = x
        weights = self.attn_weights(x, pos_emb, None if valid is None else ~valid)
        attn_keep = self._keep(x, "attention_skip_rate")
        conv_keep = self._keep(x, "conv_skip_rate")
        x = x + self.ff1(x)
        x = x + self.nonlin_attn(x, weights) * attn_keep
        x = x + self.self_attn1(x, weights) * attn_keep
        x = x + self.conv1(x, valid) * conv_keep
        x = x + self.ff2(x) * self._keep(x, "ff_skip_rate")
        x = self.bypass_mid(orig, x)
        x = x + self.self_attn2(x, weights) * attn_keep
        x = x + self.conv2(x, valid) * conv_keep
        x = x + self.ff3(x) * self._keep(x, "ff_skip_rate")
        x = self.norm(self.balancer(x))
        return self.whiten(self.bypass(orig, x))


class Downsample(nn.Module):
    """Average groups of ``factor`` frames with learned (softmax) weights.

    The padding of each utterance is first filled with its last valid frame, so the partial
    last group is the same whether or not the utterance is padded in a batch.
    """

    def __init__(self, factor: int) -> None:
        super().__init__()
        self.factor = factor
        self.weights = nn.Parameter(torch.zeros(factor))

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        f = self.factor
        b, t, c = x.shape
        t_out = (t + f - 1) // f
        # has_padding first: while compiling it is True without a guard on t % f
        if has_padding(lengths, t) or t != t_out * f:
            idx = torch.arange(t_out * f, device=x.device)[None, :]
            idx = torch.minimum(idx, (lengths - 1).clamp(min=0)[:, None])
            x = x.gather(1, idx.unsqueeze(-1).expand(b, t_out * f, c))
        w = self.weights.softmax(dim=0).to(x.dtype)
        x = (x.view(b, t_out, f, c) * w[None, None, :, None]).sum(dim=2)
        return x, ceil_div(lengths, f)


def upsample(x: Tensor, factor: int, length: int) -> Tensor:
    """Repeat each frame ``factor`` times and cut to ``length`` frames."""
    return first_frames(x.repeat_interleave(factor, dim=1), length)


class ZipformerStack(nn.Module):
    """Layers running at ``downsampling`` times the input frame period, with learned
    downsampling in, repeat-upsampling out and a learned bypass to the stack input."""

    def __init__(self, embed_dim: int, num_layers: int, downsampling: int, pos_dim: int,
                 **layer_kwargs) -> None:
        super().__init__()
        self.ds = downsampling
        self.pos_dim = pos_dim
        self.layers = nn.ModuleList(
            ZipformerLayer(embed_dim, pos_dim=pos_dim, **layer_kwargs) for _ in range(num_layers))
        if downsampling > 1:
            self.downsample = Downsample(downsampling)
            self.out_combiner = Bypass(embed_dim, scale_min=0.0)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x: (B, T, C) -> (output (B, T, C), hidden (B, T_s, C), hidden lengths)."""
        orig, t = x, x.shape[1]
        if self.ds > 1:
            x, lengths = self.downsample(x, lengths)
        valid = lengths_to_mask(lengths, x.shape[1]) if has_padding(lengths, x.shape[1]) else None
        pos_emb = relative_position_encoding(x.shape[1], self.pos_dim, x.device, x.dtype)
        for layer in self.layers:
            x = layer(x, pos_emb, valid)
        hidden = x
        if self.ds > 1:
            x = self.out_combiner(orig, upsample(x, self.ds, t))
        return x, hidden, lengths


def _convert_channels(x: Tensor, dim: int) -> Tensor:
    """Zero-pad or truncate the channel dim to ``dim`` (between stacks of different width)."""
    c = x.shape[-1]
    if c == dim:
        return x
    if c > dim:
        return x[..., :dim]
    return F.pad(x, (0, dim - c))


def default_subsampling_channels(first_dim: int) -> tuple[int, int, int]:
    """Front-end channels for a first stack of width ``first_dim``: the reference's
    (8, 32, 128) from width 128 up (S/M/L: 192), else (8, 32, first_dim).

    Why: the last front-end conv is a dense 3x3 conv at 50 Hz over 20 frequency bins whose
    cost does not shrink with the encoder.  In the reference its 128 x 20 output is ~13x the
    first stack's width (192); at width 64 (preset tiny) 128 channels made it 40x and the
    front-end half of the training step's FLOPs.  With 64 channels the tiny recipe (sigreg
    arm, 400 steps, one seed) reached dev recon 3.77 vs 3.83 with 128.
    """
    return (8, 32, min(128, first_dim))


class ZipformerEncoder(nn.Module):
    """Zipformer encoder: fbank (B, T, F) at 100 Hz -> (B, T_out, max(dims)).

    ``output_downsampling`` 2 gives 25 Hz (T_out = ceil(T/4)); 4 gives 12.5 Hz (ceil(T/8)).
    """

    def __init__(self, num_mel_bins: int = 80, dims: tuple[int, ...] = (192, 256, 384, 512, 384, 256),
                 num_layers: tuple[int, ...] = (2, 2, 3, 4, 3, 2),
                 ff_dims: tuple[int, ...] = (512, 768, 1024, 1536, 1024, 768),
                 num_heads: tuple[int, ...] = (4, 4, 4, 8, 4, 4),
                 downsampling: tuple[int, ...] = (1, 2, 4, 8, 4, 2),
                 kernel_sizes: tuple[int, ...] = (31, 31, 15, 15, 15, 31),
                 query_head_dim: int = 32, pos_head_dim: int = 4, value_head_dim: int = 12,
                 pos_dim: int = 48, output_downsampling: int = 2, dropout: float = 0.1,
                 subsampling_channels: tuple[int, int, int] | None = None) -> None:
        super().__init__()
        n = len(dims)
        for name, v in (("num_layers", num_layers), ("ff_dims", ff_dims), ("num_heads", num_heads),
                        ("downsampling", downsampling), ("kernel_sizes", kernel_sizes)):
            if len(v) != n:
                raise ValueError(f"{name} has {len(v)} entries, dims has {n}")
        self.dims = tuple(dims)
        self.downsampling = tuple(downsampling)
        self.output_dim = max(dims)
        self.output_downsampling = output_downsampling
        self.frame_ratio = 2 * output_downsampling  # input frames per output frame
        if subsampling_channels is None:
            subsampling_channels = default_subsampling_channels(dims[0])
        self.embed = Conv2dSubsampling(num_mel_bins, dims[0], subsampling_channels, dropout)
        self.stacks = nn.ModuleList(
            ZipformerStack(dims[i], num_layers[i], downsampling[i], pos_dim, ff_dim=ff_dims[i],
                           num_heads=num_heads[i], kernel_size=kernel_sizes[i],
                           query_head_dim=query_head_dim, pos_head_dim=pos_head_dim,
                           value_head_dim=value_head_dim, dropout=dropout)
            for i in range(n))
        self.out_downsample = Downsample(output_downsampling)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Output frames for input lengths: ceil(T / frame_ratio)."""
        return ceil_div(lengths, self.frame_ratio)

    def _full_dim_output(self, outputs: list[Tensor]) -> Tensor:
        """Channel c of the result comes from the last stack whose width exceeds c."""
        pieces = [outputs[-1]]
        width = outputs[-1].shape[-1]
        for out in reversed(outputs[:-1]):
            if out.shape[-1] > width:
                pieces.append(out[..., width:])
                width = out.shape[-1]
        return torch.cat(pieces, dim=-1)

    def forward(self, features: Tensor, lengths: Tensor, return_stacks: bool = False) -> EncoderOutput:
        """features: (B, T, F), lengths: (B,) -> EncoderOutput (x: (B, ceil(T/ratio), C))."""
        x, lens = self.embed(features, lengths)
        outputs, stacks = [], []
        for stack, dim, ds in zip(self.stacks, self.dims, self.downsampling):
            x, hidden, hidden_lens = stack(_convert_channels(x, dim), lens)
            outputs.append(x)
            if return_stacks:
                stacks.append(StackOutput(hidden, hidden_lens, 50.0 / ds))
        x = self._full_dim_output(outputs)
        x, lens = self.out_downsample(x, lens)
        return EncoderOutput(x, lens, stacks if return_stacks else None)
