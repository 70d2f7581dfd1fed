"""Encoder forward+backward throughput and memory: our Zipformer vs a plain Transformer.

Fair-comparison choices:
* The baseline is ``torch.nn.TransformerEncoder`` (pre-norm, GELU, ff = 4 x d_model) behind the
  *same* Conv2dSubsampling front-end (100 -> 50 Hz) plus a learned factor-2 downsampling, so it
  runs at 25 Hz -- the usual rate of Transformer/Conformer ASR encoders and the Zipformer's
  output rate.  Its width is chosen so its parameter count matches the Zipformer encoder's
  (``--layers`` fixes the depth, default 12; tiny: 4).
* Same batch (B utterances of equal length), same loss (sum of squares of the output), same
  threads.  Throughput = audio seconds processed per wall-clock second of forward+backward.
* Memory: on CUDA, ``torch.cuda.max_memory_allocated`` during the step minus before it.  On CPU
  the process RSS is useless for a within-process comparison (it only grows), so we report the
  bytes of tensors autograd saves for backward (unique storages, via saved_tensors_hooks):
  the activation memory that dominates training memory.

Findings (CPU, 1 thread, shared 2-core machine; see the issue-3 report for numbers): at equal
parameters our Zipformer needs fewer FLOPs than the Transformer but runs at ~0.6-0.75x its
throughput.  Profiling shows why: (1) a 31-tap depthwise Conv1d costs ~3x a same-width Linear in
wall time on CPU although it has ~8x fewer FLOPs, and each layer has two; (2) the layer has many
element-wise ops (Swoosh, bypasses, BiasNorm, Balancer checks, dropout) whose cost, unlike
matmuls, is not amortised at the small widths of S/tiny; (3) the first stack attends at 50 Hz.
Fixes applied: no masking work for unpadded batches, in-place Swoosh, single-thread runs (with 2
threads on a loaded machine OpenMP barriers made small ops up to 100x slower).  The paper's
efficiency claim is against Conformer on GPU with fused kernels; rerun with ``--device cuda``.

Usage: python bench/bench_encoder.py --preset tiny [--device cpu] [--batch 4 --seconds 8] [--json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from speechae.models import ModelConfig, build_model
from speechae.models.scaling import lengths_to_mask
from speechae.models.zipformer import Conv2dSubsampling, Downsample


class TransformerBaseline(nn.Module):
    """Conv2dSubsampling -> x2 learned downsampling (25 Hz) -> nn.TransformerEncoder."""

    def __init__(self, d_model: int, num_layers: int, nhead: int, num_mel_bins: int = 80) -> None:
        super().__init__()
        self.embed = Conv2dSubsampling(num_mel_bins, d_model)
        self.down = Downsample(2)
        layer = nn.TransformerEncoderLayer(d_model, nhead, 4 * d_model, dropout=0.1, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        x, lengths = self.embed(x, lengths)
        x, lengths = self.down(x, lengths)
        return self.encoder(x, src_key_padding_mask=~lengths_to_mask(lengths, x.shape[1]))


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def matched_transformer(target: int, num_layers: int) -> TransformerBaseline:
    """Transformer whose parameter count is closest to ``target`` (width in steps of 32)."""
    best = None
    for d in range(64, 2049, 32):
        nhead = 4 if d < 256 else 8
        # per layer: attention 4d^2+4d, feed-forward 8d^2+5d, two LayerNorms 4d
        approx = num_layers * (12 * d * d + 13 * d) + 128 * 20 * d
        if best is None or abs(approx - target) < abs(best[1] - target):
            best = (d, approx, nhead)
    return TransformerBaseline(best[0], num_layers, best[2])


def _saved_bytes(fn) -> int:
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        try:
            st = t.untyped_storage()
            seen[st.data_ptr()] = max(seen.get(st.data_ptr(), 0), st.nbytes())
        except (RuntimeError, NotImplementedError):
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    out.pow(2).sum().backward()
    return sum(seen.values())


def measure(model: nn.Module, feats: Tensor, lens: Tensor, iters: int, device: str) -> dict[str, float]:
    """Forward+backward throughput (audio s / s) and memory (MiB) of ``model``."""
    model.train()

    def step() -> Tensor:
        out = model(feats, lens)
        return out.x if hasattr(out, "x") else out

    step().pow(2).sum().backward()  # warm-up (allocator, kernels)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    for _ in range(iters):
        model.zero_grad(set_to_none=True)
        step().pow(2).sum().backward()
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    if device == "cuda":
        mem = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        mem = _saved_bytes(step) / 2**20
    audio = feats.shape[0] * feats.shape[1] / 100.0 * iters
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        step()
    gflops = counter.get_total_flops() / (audio / iters) / 1e9
    return {"audio_s_per_s": audio / elapsed, "memory_mib": mem, "params": _params(model),
            "fwd_gflops_per_audio_s": gflops}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--layers", type=int, default=None, help="baseline depth (default 12; tiny 4)")
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads (default 1: on a shared/oversubscribed machine, OpenMP "
                         "barriers make many small ops look far slower than they are)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    zip_enc = build_model(ModelConfig(preset=args.preset)).encoder
    for sf_owner in zip_enc.modules():  # measure the steady state: no stochastic skipping
        for v in vars(sf_owner).values():
            if getattr(v, "name", "").endswith("skip_rate"):
                v.override = 0.0
    layers = args.layers or (4 if args.preset == "tiny" else 12)
    base = matched_transformer(_params(zip_enc), layers)
    frames = int(args.seconds * 100)
    feats = torch.randn(args.batch, frames, 80, device=args.device)
    lens = torch.full((args.batch,), frames, device=args.device)
    rows = {}
    for name, m in (("zipformer", zip_enc), ("transformer", base)):
        rows[name] = measure(m.to(args.device), feats, lens, args.iters, args.device)
    rows["ratio_zip_over_transformer"] = {
        "throughput": rows["zipformer"]["audio_s_per_s"] / rows["transformer"]["audio_s_per_s"],
        "memory": rows["zipformer"]["memory_mib"] / rows["transformer"]["memory_mib"]}
    rows["setup"] = {"preset": args.preset, "device": args.device, "batch": args.batch,
                     "seconds": args.seconds, "transformer_layers": layers,
                     "transformer_d_model": base.encoder.layers[0].linear1.in_features,
                     "threads": torch.get_num_threads(),
                     "memory_kind": "cuda max_memory_allocated" if args.device == "cuda"
                     else "autograd saved tensors"}
    if args.json:
        print(json.dumps(rows))
        return
    print(f"{'model':<12} {'params (M)':>10} {'GFLOP/s-aud':>11} {'audio s/s':>10} {'mem (MiB)':>10}")
    for name in ("zipformer", "transformer"):
        r = rows[name]
        print(f"{name:<12} {r['params'] / 1e6:10.2f} {r['fwd_gflops_per_audio_s']:11.3f} "
              f"{r['audio_s_per_s']:10.1f} {r['memory_mib']:10.1f}")
    ratio = rows["ratio_zip_over_transformer"]
    print(f"zipformer/transformer: throughput x{ratio['throughput']:.2f}, memory x{ratio['memory']:.2f} "
          f"({rows['setup']['memory_kind']}; transformer d_model {rows['setup']['transformer_d_model']},"
          f" {layers} layers)")


if __name__ == "__main__":
    main()
