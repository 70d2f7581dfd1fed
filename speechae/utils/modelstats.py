"""Parameter and FLOP counting for ``speechae evaluate``, written to be the one implementation
that ``speechae model-summary`` and the training log's parameter count also call.

FLOPs are those of :class:`torch.utils.flop_counter.FlopCounterMode`: matmuls and convolutions
only, 2 per multiply-add.  "Per audio second" divides the count for one utterance by its
duration, so systems at different frame rates compare on the same footing.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

_aten = torch.ops.aten


def _slow_conv2d_flop(x_shape, w_shape, _kernel_size, _bias, _stride, _padding, *args, out_shape=None,  # noqa: ANN001
                      **kwargs) -> int:  # noqa: ANN003
    """FLOPs of ``aten._slow_conv2d_forward`` (the im2col kernel the Zipformer front end calls on
    CPU).  torch 2.x registers the generic convolution formula for it, whose argument list
    (dilation, transposed) this op does not have, so counting raised a TypeError."""
    return conv_flop_count(list(x_shape), list(w_shape), list(out_shape), transposed=False)


_CUSTOM = {_aten._slow_conv2d_forward: _slow_conv2d_flop}


def count_parameters(module: torch.nn.Module) -> int:
    """Number of parameters of ``module`` (trainable or not)."""
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn()`` (see the module docstring)."""
    with FlopCounterMode(display=False, custom_mapping=_CUSTOM) as counter:
        fn()
    return int(counter.get_total_flops())


def flops_per_second(fn: Callable[[], Any], seconds: float) -> float:
    """FLOPs of ``fn()``, which processes ``seconds`` of audio, divided by ``seconds``."""
    return count_flops(fn) / seconds


def autoencoder_flops(model: torch.nn.Module, num_mel_bins: int = 80, seconds: float = 10.0,
                      frame_rate: float = 100.0) -> dict[str, float]:
    """GFLOPs per audio second of a SpeechAE on one random ``seconds``-long fbank input, in eval
    mode: ``encoder_gflops_per_audio_s`` (``model.encode``: encoder + bottleneck) and
    ``gflops_per_audio_s`` (the full forward pass, decoder included)."""
    frames = int(round(seconds * frame_rate))
    feats, lens = torch.randn(1, frames, num_mel_bins), torch.tensor([frames])
    was = model.training
    model.eval()
    try:
        enc = flops_per_second(lambda: model.encode(feats, lens), seconds)
        total = flops_per_second(lambda: model(feats, lens), seconds)
    finally:
        model.train(was)
    return {"encoder_gflops_per_audio_s": enc / 1e9, "gflops_per_audio_s": total / 1e9}
