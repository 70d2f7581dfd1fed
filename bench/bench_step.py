"""The whole training step, per preset and precision: throughput, breakdown, memory, FLOPs.

    python bench/bench_step.py --presets tiny M --amp none bf16
    python bench/bench_step.py --presets tiny M --compare-ref HEAD~3     # old vs new, one process
    python bench/bench_step.py --presets M --transformer                 # + nn.TransformerEncoder row

The step is :meth:`Trainer.train_step` on the tiny recipe's configuration
(``egs/mini/ae/conf/arms/<arm>.yaml``: reconstruction + masked-unit prediction + the arm's
regularizer, ScaledAdam + Eden) with only ``model.preset`` changed, on one fixed batch of
``--utts`` x ``--utt-seconds`` of random log-mel features (lengths 80-100 %, random unit
targets).  Reported per configuration (medians over ``--rounds``):

* ``audio_s_per_s`` of the whole step;
* the step broken down: ``encoder`` (forward + backward of the encoder alone on the batch),
  ``decoder`` (forward + backward of the decoder alone on a random latent), ``optimizer``
  (``optimizer.step()`` alone) and ``rest`` = step - the three (bottleneck, losses, masking,
  gradient clipping, the trainer's bookkeeping);
* memory: CUDA peak allocated during the step, or on CPU the bytes autograd saves for
  backward (unique storages; the activation memory that dominates training memory);
* FLOPs of the step (forward + backward) counted by ``torch.utils.flop_counter`` with a
  groups-aware ``convolution_backward`` (torch's own formula ignores ``groups`` in the weight
  gradient and counts a depthwise conv as dense), and their share of the measured fp32 /
  bf16 matmul roofline (a large square ``mm`` on the same threads).

``--compare-ref REV`` extracts the ``speechae`` package at git revision ``REV`` as a
separate package (``speechae_ref``) and runs the old and the new step alternately in the
same process on the same batch, so machine noise hits both alike (the only fair A/B on a
shared machine).  Use ``--threads 1`` on CPU (OpenMP barriers on an oversubscribed machine
make small ops look far slower than they are).

``--transformer`` adds a row ``transformer``: the same step (worktree code, same config,
batch, decoder, bottleneck, losses, optimizer) with the Zipformer encoder replaced by
``bench/bench_encoder.py``'s ``TransformerBaseline`` (Conv2dSubsampling to 50 Hz, learned x2
downsampling to 25 Hz, pre-norm ``nn.TransformerEncoder``, GELU, ff = 4 x d_model; width
matched to the Zipformer encoder's parameter count, ``--transformer-layers`` deep) plus a
linear map to the Zipformer's output width.  It runs interleaved with the other variants.

Findings (issue 12; CPU, 1 thread, 4 x 7.5 s, sigreg arm; old = 7e60317~1, interleaved, on
a shared 2-core machine, so ratios move by ~0.1 between runs):

* tiny: 42.7 -> 51.3 audio-s/s (x1.20); encoder 403 -> 345 ms, decoder 93 -> 99, optimizer
  35 -> 21, rest 106 -> 64; autograd-saved memory 240 -> 213 MiB; 0.66 -> 0.51 GFLOP/audio-s.
  What is left: the front-end (3x3 convs at 100/50 Hz, ~40 % of the encoder, at ~75 % of the
  matmul roofline, so only fewer FLOPs help), SIGReg's sin/cos over 1024 frames x 256
  directions x 17 knots (~10 % of the step), i.i.d. dropout masks (~5 %), many small ops.
  bf16 autocast: x1.3 more (one round: 35 -> 46 audio-s/s; not confirmed interleaved, below).
* M: 4.67 -> 6.34 audio-s/s (x1.36; x1.45-1.50 with time-shared dropout); decoder 2111 ->
  836 ms (41 -> 14 GFLOP forward: 4 x 256 layers at 25 Hz instead of 6 x 384), optimizer
  447 -> 296 ms (bandwidth-bound: fewer passes), saved memory 1645 -> 1263 MiB.  The step is
  matmul-bound (mm/addmm ~55 % of the time).
* Rerun with ``--transformer`` (5 rounds, load average 3-5; table in docs/performance.md):
  M 3.49 -> 4.88 audio-s/s (x1.40; encoder x0.97, decoder x2.21, optimizer x1.73), saved
  memory 1646 -> 1265 MiB; the Transformer row (12 x 672, 67.2 M encoder params vs 63.9 M)
  3.55 audio-s/s, 1368 MiB, 13.8 GFLOP/audio-s vs 7.4: the Zipformer step is x1.37 faster and
  its encoder x1.52.  tiny 29.9 -> 40.4 (x1.35); Transformer 4 x 160: 36.1 (step x1.12,
  encoder x1.03: the shared front-end dominates at these widths).
* scaling.Dropout (i.i.d. masks from 16-bit slices of 64-bit draws instead of bernoulli_,
  bool mask saved): M step x1.04 against nn.Dropout in one process, saved memory 1262 -> 1172
  MiB; then against 7e60317~1 (3 rounds, --no-flops): M 4.58 -> 6.48 audio-s/s (x1.42), tiny
  30.9 -> 41.6 (x1.35).  bf16 row (--bf16-row, same run): M 8.65 audio-s/s (x1.34 over fp32,
  saved 678 MiB), tiny 38.3 (x0.92: casts outweigh the narrow matmuls).
* Tried and dropped: time-shared dropout (reference behaviour; cost 3-5 % dev recon on the
  tiny recipe); a shifted multiply-add depthwise conv (faster alone, slower inside the conv
  module than oneDNN on the (B, C, T) view); im2col + matmul for the dense front-end convs
  (2x slower than oneDNN except for the 1-input-channel conv, which is now im2col).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch._dynamo
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from bench_encoder import matched_transformer  # bench/ is sys.path[0] when run as a script
from speechae.models.scaling import ceil_div
from speechae.models.zipformer import Downsample, EncoderOutput
from speechae.optim import build_optimizer
from speechae.train import checkpoint as ck

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "egs" / "mini" / "ae" / "conf" / "arms"


def load_reference(rev: str) -> tuple[str, Path]:
    """Import the ``speechae`` package of git revision ``rev`` as ``speechae_ref`` (absolute
    ``speechae`` imports inside it are rewritten); return that name and the recipe's config
    directory at ``rev`` (the old code reads the old config)."""
    out = Path(tempfile.mkdtemp(prefix="speechae_ref_"))
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "speechae", "egs/mini/ae/conf"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    (out / "speechae").rename(out / "speechae_ref")
    pattern = re.compile(r"^(\s*)(from|import) speechae(\b)", re.M)
    for path in (out / "speechae_ref").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        path.write_text(pattern.sub(r"\1\2 speechae_ref\3", text), encoding="utf-8")
    sys.path.insert(0, str(out))
    importlib.import_module("speechae_ref")
    return "speechae_ref", out / CONF.relative_to(REPO)


def make_batch(utts: int, utt_seconds: float, num_units: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random (B, T, 80) log-mel-like features, lengths 80-100 % of T, random unit targets."""
    g = torch.Generator().manual_seed(seed)
    t = int(utt_seconds * 100)
    lens = torch.randint(int(0.8 * t), t + 1, (utts,), generator=g)
    lens[0] = t
    valid = torch.arange(t)[None, :] < lens[:, None]
    x = (torch.randn(utts, t, 80, generator=g) * 2.0 - 5.0) * valid[..., None]
    units = torch.randint(0, num_units, (utts, t), generator=g).masked_fill(~valid, -1)
    return {"features": x, "feature_lens": lens, "units": units}


def build_trainer(pkg: str, conf: Path, preset: str, arm: str, amp: str, device: torch.device,
                  extra: tuple[str, ...] = ()) -> Any:
    """A Trainer of package ``pkg`` (speechae or speechae_ref) on the tiny recipe's arm config
    ``conf/<arm>.yaml`` with ``model.preset`` replaced (and ``extra`` overrides)."""
    config = importlib.import_module(f"{pkg}.train.config")
    distributed = importlib.import_module(f"{pkg}.train.distributed")
    trainer = importlib.import_module(f"{pkg}.train.trainer")
    cfg = config.load_experiment_config(conf / f"{arm}.yaml", [f"model.preset={preset}", f"train.amp={amp}",
                                                                f"train.device={device.type}", *extra])
    tmp = tempfile.mkdtemp(prefix="speechae_bench_step_")
    return trainer.Trainer(cfg, tmp, distributed.DistEnv(device=device))


class TransformerEncoderAdapter(nn.Module):
    """``bench_encoder.TransformerBaseline`` behind the Zipformer encoder's interface:
    features (B, T, F), lengths -> ``EncoderOutput`` (x: (B, ceil(T/ratio), output_dim)).

    The baseline runs at 25 Hz; a linear map gives the Zipformer's output width and, for a
    model below 25 Hz (``frame_ratio`` 8), a further learned downsampling its frame rate.
    """

    def __init__(self, zipformer: nn.Module, num_layers: int) -> None:
        super().__init__()
        self.frame_ratio, self.output_dim = zipformer.frame_ratio, zipformer.output_dim
        self.base = matched_transformer(sum(p.numel() for p in zipformer.parameters()), num_layers)
        self.d_model = self.base.encoder.layers[0].linear1.in_features
        self.proj = nn.Linear(self.d_model, self.output_dim)
        self.down = Downsample(self.frame_ratio // 4) if self.frame_ratio > 4 else None

    def forward(self, features: torch.Tensor, lengths: torch.Tensor, return_stacks: bool = False) -> Any:
        """features: (B, T, F), lengths: (B,) -> EncoderOutput (no per-stack states)."""
        x = self.proj(self.base(features, lengths))
        lens = ceil_div(lengths, 4)
        if self.down is not None:
            x, lens = self.down(x, lens)
        return EncoderOutput(x, lens, None)


def use_transformer_encoder(trainer: Any, num_layers: int) -> int:
    """Replace the (worktree) trainer's Zipformer encoder by a :class:`TransformerEncoderAdapter`
    of about its parameter count and rebuild what holds the old parameters (the autoencoder
    task's optimizer + scheduler, the averaged model).  Returns the Transformer's width."""
    task = trainer.task
    enc = TransformerEncoderAdapter(task.model.encoder, num_layers).to(trainer.device)
    task.model.encoder = enc
    params = list(task.model.named_parameters()) + [(f"composer.{n}", p) for n, p in
                                                    task.composer.named_parameters()]
    task.optimizers["model"], task.schedulers["model"] = build_optimizer(params, trainer.cfg.optim)
    if trainer.model_avg is not None:
        trainer.model_avg = ck.init_average(task.model)
    return enc.d_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


class StepParts:
    """Closures timing the whole step and its parts for one trainer and batch."""

    def __init__(self, trainer: Any, batch: dict[str, torch.Tensor]) -> None:
        self.tr, self.batch = trainer, {k: v.to(trainer.device) for k, v in batch.items()}
        self.model = trainer.model
        feats = self.batch["features"]
        with torch.no_grad():
            enc = self.model.encoder(feats, self.batch["feature_lens"])
        g = torch.Generator().manual_seed(1)
        self.enc_grad = torch.randn(enc.x.shape, generator=g).to(feats.device)
        self.z = torch.randn(*enc.x.shape[:2], self.model.decoder.in_proj.in_features, generator=g).to(feats.device)
        self.z_lens = enc.lengths
        self.dec_grad = torch.randn(feats.shape, generator=g).to(feats.device)

    def step(self) -> None:
        self.tr.train_step(self.batch)

    def encoder(self) -> None:
        with self.tr._autocast():
            out = self.model.encoder(self.batch["features"], self.batch["feature_lens"]).x
        (out.float() * self.enc_grad).sum().backward()

    def decoder(self) -> None:
        z = self.z.requires_grad_(True)
        feats = self.batch["features"]
        with self.tr._autocast():
            out = self.model.decoder(z, self.z_lens, self.batch["feature_lens"], feats.shape[1])
        (out.float() * self.dec_grad).sum().backward()

    def optimizer(self) -> None:
        self.tr.optimizer.step()

    def forward_loss(self) -> torch.Tensor:
        # the model + loss module: on the Trainer before the generic task loop, on its task after
        wrapped = getattr(self.tr, "wrapped", None) or self.tr.task.wrapped
        with self.tr._autocast():
            loss, _ = wrapped(self.batch, self.tr.step)
        return loss


def saved_bytes(fn: Callable[[], torch.Tensor]) -> int:
    """Bytes of the unique storages autograd saves for backward while ``fn()`` runs."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        with contextlib.suppress(RuntimeError, NotImplementedError):
            st = t.untyped_storage()
            seen[st.data_ptr()] = max(seen.get(st.data_ptr(), 0), st.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = fn()
    loss.backward()
    return sum(seen.values())


def _conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, out_shape, **kwargs) -> int:
    """Groups-aware: the input and the weight gradient each cost what the forward conv costs
    (``w_shape`` already holds in_channels / groups)."""
    fwd = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed)
    return fwd * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def step_flops(parts: StepParts) -> float:
    """FLOPs of one forward + backward of the step's loss (optimizer excluded)."""
    mapping = {torch.ops.aten.convolution_backward: _conv_backward_flop}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        parts.forward_loss().backward()
    parts.tr.optimizer.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def matmul_roofline(dtype: torch.dtype, device: torch.device, n: int = 1024, reps: int = 5) -> float:
    """Measured FLOP/s of a large square matmul (the practical peak on these threads)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = min(_timed(lambda: a @ b, device) for _ in range(reps))
    return 2 * n ** 3 / best


def measure(variants: dict[str, StepParts], rounds: int, device: torch.device,
            roofline: Callable[[], float] | None = None) -> tuple[dict[str, dict[str, float]], float]:
    """Alternate the variants round by round; medians of each timed part (seconds), and the
    best matmul FLOP/s sampled once per round (a single sample on a shared machine can land
    on a busy moment and make the roofline share exceed 1)."""
    times: dict[str, dict[str, list[float]]] = {k: {} for k in variants}
    names = ("step", "encoder", "decoder", "optimizer")
    peak = 0.0
    for parts in variants.values():  # warm-up: allocator, lazy state, clipping history
        for _ in range(2):
            parts.step()
    for _ in range(rounds):
        for key, parts in variants.items():
            for name in names:
                if name == "optimizer":
                    parts.step()  # fresh gradients for the optimizer's own timing
                    fn = parts.optimizer
                else:
                    fn = getattr(parts, name)
                if name in ("encoder", "decoder"):
                    parts.tr.optimizer.zero_grad(set_to_none=True)
                times[key].setdefault(name, []).append(_timed(fn, device))
            parts.tr.optimizer.zero_grad(set_to_none=True)
        if roofline is not None:
            peak = max(peak, roofline())
    out = {}
    for key, t in times.items():
        med = {name: statistics.median(v) for name, v in t.items()}
        med["rest"] = max(med["step"] - med["encoder"] - med["decoder"] - med["optimizer"], 0.0)
        out[key] = med
    return out, peak


def compile_first_step(parts: StepParts) -> dict[str, float]:
    """Run the first (compiling) step of a ``train.compile=true`` trainer and report its wall
    time, the distinct graphs Dynamo made and its graph breaks (counted since the variants were
    built: StepParts' no-grad encoder call compiles one graph more, not in ``compile_s``)."""
    from torch._dynamo.utils import counters

    seconds = _timed(parts.step, parts.tr.device)
    parts.tr.optimizer.zero_grad(set_to_none=True)
    return {"compile_s": round(seconds, 1), "graphs": counters["stats"]["unique_graphs"],
            "graph_breaks": sum(counters["graph_break"].values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["tiny", "S", "M"])
    ap.add_argument("--amp", nargs="+", default=["none"], choices=["none", "bf16", "fp16"])
    ap.add_argument("--arm", default="sigreg", choices=["none", "kl", "sigreg"])
    ap.add_argument("--utts", type=int, default=4)
    ap.add_argument("--utt-seconds", type=float, default=7.5)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compare-ref", default=None, metavar="REV",
                    help="also run the speechae package of git revision REV, interleaved")
    ap.add_argument("--compile", action="store_true",
                    help="also run the step with train.compile=true, interleaved; reports compile time, "
                         "graphs and graph breaks")
    ap.add_argument("--transformer", action="store_true",
                    help="also run the step with the encoder replaced by nn.TransformerEncoder of about "
                         "equal parameters (bench_encoder.TransformerBaseline), interleaved")
    ap.add_argument("--transformer-layers", type=int, default=None,
                    help="depth of that Transformer (default 12; tiny 4, as bench_encoder.py)")
    ap.add_argument("--bf16-row", action="store_true",
                    help="also run the worktree step with train.amp=bf16, interleaved with the others "
                         "(the fair fp32-vs-bf16 ratio on a shared machine; no FLOP row)")
    ap.add_argument("--no-flops", action="store_true")
    ap.add_argument("--json", action="store_true", help="append results to bench/results/step.jsonl")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    pkgs = {"new": ("speechae", CONF, ())}
    if args.compare_ref:
        pkgs = {"ref": (*load_reference(args.compare_ref), ()), "new": ("speechae", CONF, ())}
    if args.compile:
        pkgs["compiled"] = ("speechae", CONF, ("train.compile=true",))
    if args.transformer:
        pkgs["transformer"] = ("speechae", CONF, ())
    if args.bf16_row:
        pkgs["bf16"] = ("speechae", CONF, ("train.amp=bf16",))
    batch = make_batch(args.utts, args.utt_seconds, num_units=50)
    audio = float(batch["feature_lens"].sum()) / 100.0
    rows = []
    for preset in args.presets:
        for amp in args.amp:
            torch._dynamo.reset()
            torch._dynamo.utils.counters.clear()
            trainers = {k: build_trainer(pkg, conf, preset, args.arm, amp, device, extra)
                        for k, (pkg, conf, extra) in pkgs.items()}
            info: dict[str, dict[str, Any]] = {k: {} for k in trainers}
            if "transformer" in trainers:
                layers = args.transformer_layers or (4 if preset == "tiny" else 12)
                width = use_transformer_encoder(trainers["transformer"], layers)
                info["transformer"] = {"encoder": f"nn.TransformerEncoder {layers} x {width}"}
            for key, tr in trainers.items():
                info[key]["encoder_params_M"] = round(sum(p.numel() for p in tr.model.encoder.parameters()) / 1e6, 2)
            variants = {k: StepParts(tr, batch) for k, tr in trainers.items()}
            compile_stats = compile_first_step(variants["compiled"]) if "compiled" in variants else {}
            mm_dtype = torch.bfloat16 if amp == "bf16" else torch.float16 if amp == "fp16" else torch.float32
            med, peak = measure(variants, args.rounds, device,
                                None if args.no_flops else lambda: matmul_roofline(mm_dtype, device))
            for key, parts in variants.items():
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                    parts.step()
                    mem = torch.cuda.max_memory_allocated() / 2**20
                else:
                    mem = saved_bytes(parts.forward_loss) / 2**20
                    parts.tr.optimizer.zero_grad(set_to_none=True)
                m = med[key]
                row = {"variant": key, "rev": args.compare_ref if key == "ref" else "worktree",
                       "preset": preset, "amp": "bf16" if key == "bf16" else amp, "device": str(device), "threads": torch.get_num_threads(),
                       "params_M": round(sum(p.numel() for p in parts.tr.module.parameters()) / 1e6, 2),
                       **info[key],
                       "batch_audio_s": round(audio, 1), "audio_s_per_s": round(audio / m["step"], 2),
                       **{f"{k}_ms": round(v * 1000, 1) for k, v in m.items()},
                       "memory_mib": round(mem, 1), **(compile_stats if key == "compiled" else {})}
                # FlopCounterMode does not see into compiled code; the bf16 row has another roofline
                if not args.no_flops and key not in ("compiled", "bf16"):
                    flops = step_flops(parts)
                    row["gflop_per_audio_s"] = round(flops / audio / 1e9, 3)
                    row["roofline_share"] = round(flops / m["step"] / peak, 3)
                rows.append(row)
                print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
            if "ref" in med:
                print(f"  speed-up new/ref preset={preset} amp={amp}: "
                      f"step x{med['ref']['step'] / med['new']['step']:.2f}, "
                      + ", ".join(f"{k} x{med['ref'][k] / max(med['new'][k], 1e-9):.2f}"
                                  for k in ("encoder", "decoder", "optimizer")), flush=True)
            if "transformer" in med:
                print(f"  zipformer/transformer preset={preset} amp={amp}: "
                      f"step x{med['transformer']['step'] / med['new']['step']:.2f}, "
                      f"encoder x{med['transformer']['encoder'] / med['new']['encoder']:.2f}", flush=True)
    if args.json:
        out = REPO / "bench" / "results" / "step.jsonl"
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
