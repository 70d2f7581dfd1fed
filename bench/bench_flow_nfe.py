"""Sampling cost vs quality of a flow-matching decoder (the uniwav arm, or any arm with
``model.decoder.kind: flow``): mel-LSD / mel L1 / MCD of log-mels sampled with each number of
function evaluations (NFE), and the decoder's seconds per audio second.

    python bench/bench_flow_nfe.py egs/mini/ae/exp/tiny_uniwav_s1 --test-cuts egs/mini/ae/data/fbank/mini_cuts_test.jsonl.gz

Uses the weights ``speechae evaluate`` scores (``load_experiment_model``), the first ``--utts``
test utterances and one fixed noise seed per call (the decoder's ``sample_seed``).  Time: the
whole model forward (encoder + sampling) per audio second, best of ``--repeats``; the cost of one
function evaluation is the slope between the smallest and the largest NFE.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import torch

from speechae.eval.pipeline import load_experiment_model, open_cuts
from speechae.eval.reconstruction import reconstruction_metrics


def main() -> None:  # noqa: D103
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("exp_dir")
    ap.add_argument("--test-cuts", required=True, help="cuts with stage-2 features")
    ap.add_argument("--utts", type=int, default=20)
    ap.add_argument("--nfe", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    ap.add_argument("--method", default="euler", choices=["euler", "midpoint"])
    ap.add_argument("--guidance", type=float, default=None, help="classifier-free guidance (default: the config's)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", default=None, help="write the table here as JSON")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, _, info = load_experiment_model(args.exp_dir)
    decoder = model.decoder
    if not hasattr(decoder, "nfe"):
        raise SystemExit(f"{args.exp_dir}: the decoder ({type(decoder).__name__}) is not a flow-matching decoder")
    path = Path(args.test_cuts).resolve()
    # manifests store feature paths relative to the recipe directory (the one holding data/)
    recipe = next((p.parent for p in path.parents if p.name == "data"), Path.cwd())
    with contextlib.chdir(recipe):
        cuts = sorted(open_cuts(path), key=lambda c: c.id)[: args.utts]
        feats = [torch.as_tensor(c.load_features(), dtype=torch.float32) for c in cuts]
    seconds = sum(f.shape[0] for f in feats) / 100.0

    @torch.inference_mode()
    def run(nfe: int) -> tuple[list, float]:
        decoder.nfe, decoder.method = nfe, args.method
        if args.guidance is not None:
            decoder.guidance = args.guidance
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            recon = [model(f[None], torch.tensor([f.shape[0]])).recon[0] for f in feats]
            best = min(best, time.perf_counter() - t0)
        return recon, best

    rows = []
    for nfe in args.nfe:
        recon, total = run(nfe)
        m = reconstruction_metrics((f.numpy(), r.numpy()) for f, r in zip(feats, recon))
        rows.append({"nfe": nfe, "method": args.method, "mel_lsd_db": m["mel_lsd_db"], "mel_l1": m["mel_l1"],
                     "mcd_db": m["mcd_db"], "model_s_per_audio_s": total / seconds})
    lo, hi = rows[0], rows[-1]
    per_nfe = (hi["model_s_per_audio_s"] - lo["model_s_per_audio_s"]) / max(hi["nfe"] - lo["nfe"], 1)
    print(f"{args.exp_dir} ({info.get('weights')}), {len(feats)} utterances, {seconds:.1f} s, "
          f"{args.threads} thread(s); one function evaluation ~{per_nfe * 1000:.2f} ms per audio s")
    print("| NFE | solver | mel-LSD dB | mel L1 | MCD dB | model s / audio s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['nfe']} | {r['method']} | {r['mel_lsd_db']:.2f} | {r['mel_l1']:.3f} | {r['mcd_db']:.2f} | "
              f"{r['model_s_per_audio_s']:.4f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
