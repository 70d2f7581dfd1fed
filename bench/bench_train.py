"""Training throughput of one :meth:`Trainer.train_step` (model + objectives + optimiser).

    python bench/bench_train.py --preset tiny --batch-seconds 30 --steps 10 --threads 1
    python bench/bench_train.py --preset S --device cuda --amp bf16 --batch-seconds 600

Batches are random log-mel-like features (no corpus needed) of ``--utt-seconds`` utterances
filling ``--batch-seconds``; the objective is reconstruction + the chosen regularizer (no
semantic targets).  Prints steps/s, audio seconds/s and peak memory; ``--json`` appends the
result to bench/results/train.jsonl.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from speechae.train.config import experiment_config_from_dict
from speechae.train.distributed import DistEnv, choose_device
from speechae.train.logger import peak_memory_mb
from speechae.train.trainer import Trainer


def make_batch(batch_seconds: float, utt_seconds: float, seed: int) -> dict[str, torch.Tensor]:
    """Random (B, T, 80) features with lengths between 70% and 100% of ``utt_seconds``."""
    g = torch.Generator().manual_seed(seed)
    b = max(1, int(batch_seconds // utt_seconds))
    t = int(utt_seconds * 100)
    lens = torch.randint(int(0.7 * t), t + 1, (b,), generator=g)
    lens[0] = t
    x = torch.randn(b, t, 80, generator=g) * 2.0 - 5.0
    x = x * (torch.arange(t)[None, :, None] < lens[:, None, None])
    return {"features": x, "feature_lens": lens}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--regularizer", default="sigreg", choices=["sigreg", "kl"])
    ap.add_argument("--batch-seconds", type=float, default=30.0)
    ap.add_argument("--utt-seconds", type=float, default=4.0)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    ap.add_argument("--json", action="store_true", help="append the result to bench/results/train.jsonl")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    kind = "gaussian" if args.regularizer == "kl" else "deterministic"
    cfg = experiment_config_from_dict({
        "model": {"preset": args.preset, "bottleneck": {"kind": kind, "latent_dim": 32}},
        "losses": {"regularizer": args.regularizer, "weights": {"recon": 1.0}},
        "train": {"amp": args.amp, "device": args.device}})
    device = choose_device(args.device, 0)
    trainer = Trainer(cfg, "/tmp/speechae_bench_train", DistEnv(device=device))
    batch = make_batch(args.batch_seconds, args.utt_seconds, 0)
    audio = float(batch["feature_lens"].sum()) / 100.0
    for _ in range(args.warmup):
        trainer.train_step(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        trainer.train_step(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    params = sum(p.numel() for p in trainer.model.parameters())
    result = {"preset": args.preset, "regularizer": args.regularizer, "device": str(device), "amp": args.amp,
              "threads": torch.get_num_threads(), "params_M": round(params / 1e6, 3),
              "batch_utts": int(batch["features"].shape[0]), "batch_audio_s": round(audio, 1),
              "steps_per_s": round(args.steps / dt, 3), "audio_s_per_s": round(args.steps * audio / dt, 1),
              "peak_memory_mb": round(peak_memory_mb(device), 1)}
    print(" ".join(f"{k}={v}" for k, v in result.items()))
    if args.json:
        out = Path(__file__).resolve().parent / "results" / "train.jsonl"
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "a", encoding="utf-8") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
