"""Benchmark the evaluation stage: wall time of each metric for one system.

    python bench/bench_eval.py --data-dir egs/mini/ae/data [--exp egs/mini/ae/exp/tiny_sigreg]
        [--baseline fbank] [--num-threads 1] [--train-cuts big.jsonl.gz] [--max-train-hours 1]
        [--device auto]

Scores the experiment's averaged model (or, without --exp, a randomly initialised tiny model)
and optionally one baseline with the recipe's default settings, and prints a per-metric timing
table plus one JSON line with the process's peak RSS.  Timings are per process; on a shared
machine run it alone.  ``bench/make_eval_corpus.py`` makes a training manifest of any length
to check that the peak stays flat when the corpus grows (the hour caps, docs/metrics.md).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch

from speechae.eval.encoders import ModelEncoder, resolve_device
from speechae.eval.pipeline import load_eval_data, make_baseline
from speechae.eval.suite import EvalConfig, score_system


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default="egs/mini/ae/data")
    ap.add_argument("--prefix", default="mini")
    ap.add_argument("--exp", default=None, help="experiment dir (default: random tiny model)")
    ap.add_argument("--baseline", default=None, help="also time this baseline (fbank, mfcc, random_init, hf:<dir>)")
    ap.add_argument("--num-threads", type=int, default=1)
    ap.add_argument("--max-train-utts", type=int, default=None)
    ap.add_argument("--max-train-hours", type=float, default=1.0, help="0: no cap")
    ap.add_argument("--train-cuts", default=None, help="training manifest [default: the recipe's]")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    torch.set_num_threads(args.num_threads)
    d = Path(args.data_dir)
    cfg = EvalConfig(max_train_utts=args.max_train_utts, max_train_hours=args.max_train_hours or None)
    device = resolve_device(args.device)
    t0 = time.perf_counter()
    cuts = {s: d / f"targets/{args.prefix}_cuts_{s}.jsonl.gz" for s in ("train", "test", "dev")}
    if args.train_cuts:
        cuts["train"] = Path(args.train_cuts)
    data = load_eval_data(cuts["train"], cuts["test"], cuts["dev"], d / "lang", cfg)
    load_s = time.perf_counter() - t0
    if args.exp:
        from speechae.eval.pipeline import load_experiment_model

        model, config, _ = load_experiment_model(args.exp)
        name = Path(args.exp).name
    else:
        from speechae.models import build_model

        torch.manual_seed(0)
        config = {"model": {"preset": "tiny"}}
        model, name = build_model(config["model"]), "random_tiny"
    systems = [ModelEncoder(model, name=name, device=device)]
    if args.baseline:
        systems.append(make_baseline(args.baseline, config.get("model"), device=device))
    audio_s = sum(len(u.log_mel) for u in data.train + data.test + data.dev) / 100.0
    result = {"load_s": round(load_s, 2), "audio_s": round(audio_s, 1), "threads": args.num_threads,
              "device": str(device), "sampling": data.sampling}
    print(f"data: {len(data.train)} train / {len(data.test)} test / {len(data.dev)} dev utterances, "
          f"{audio_s / 60:.1f} min of audio, loaded in {load_s:.1f}s")
    for system in systems:
        t = time.perf_counter()
        timings = score_system(system, data, cfg).timings
        total = time.perf_counter() - t
        print(f"\n{system.name}: {total:.1f}s")
        for k, v in sorted(timings.items(), key=lambda kv: -kv[1]):
            print(f"  {k:<16} {v:7.2f}s")
        result[system.name] = {"total_s": round(total, 2), **{k: round(v, 2) for k, v in timings.items()}}
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux
    print(json.dumps(result))


if __name__ == "__main__":
    main()
