"""Benchmark the data pipeline: fbank extraction real-time factor and data-loader throughput.

    python bench/bench_data.py --cuts egs/mini/ae/data/targets/mini_cuts_train.jsonl.gz \
        --lang-dir egs/mini/ae/data/lang

Prints a table and one JSON line.  Fbank is timed single-process on the cuts' audio (Lhotse's
pure-PyTorch Fbank, or kaldifeat when importable), so the figure is per core.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from speechae.data.datamodule import DataConfig, Labels, load_cuts, make_dataloader
from speechae.data.features import make_extractor


def bench_fbank(cuts, max_cuts: int) -> dict:  # noqa: ANN001
    extractor = make_extractor(80)
    subset = cuts.subset(first=min(max_cuts, len(cuts)))
    audio = [(c.load_audio(), c.sampling_rate, c.duration) for c in subset]  # decode outside the timer
    t0 = time.perf_counter()
    for samples, sr, _ in audio:
        extractor.extract(samples, sr)
    dt = time.perf_counter() - t0
    secs = sum(d for *_, d in audio)
    return {"fbank_extractor": type(extractor).__name__, "fbank_audio_s": round(secs, 1),
            "fbank_wall_s": round(dt, 3), "fbank_rtf": round(dt / secs, 5), "fbank_x_realtime": round(secs / dt, 1)}


def bench_loader(cuts, lang_dir: str | None, max_duration: float, otf: bool) -> dict:  # noqa: ANN001
    cfg = DataConfig(max_duration=max_duration, shuffle=True, on_the_fly_feats=otf)
    dl = make_dataloader(cuts, Labels(lang_dir), cfg, train=True)
    n, audio, t0 = 0, 0.0, time.perf_counter()
    for batch in dl:
        n += 1
        audio += float(batch["feature_lens"].sum()) * 0.01
    dt = time.perf_counter() - t0
    tag = "otf" if otf else "precomputed"
    return {f"loader_{tag}_batches_per_s": round(n / dt, 1), f"loader_{tag}_audio_s_per_s": round(audio / dt, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cuts", required=True)
    p.add_argument("--lang-dir", default=None)
    p.add_argument("--max-duration", type=float, default=60.0)
    p.add_argument("--max-cuts", type=int, default=100, help="cuts used for the fbank timing")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cuts = load_cuts(args.cuts)
    res = {"threads": args.threads, **bench_fbank(cuts, args.max_cuts),
           **bench_loader(cuts, args.lang_dir, args.max_duration, otf=False),
           **bench_loader(cuts, args.lang_dir, args.max_duration, otf=True)}
    width = max(map(len, res))
    for k, v in res.items():
        print(f"{k:<{width}}  {v}")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
