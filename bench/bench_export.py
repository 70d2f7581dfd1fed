"""Eager PyTorch vs ONNX Runtime (CPU) for the exported parts: encoder+bottleneck, decoder, vocoder.

    OMP_NUM_THREADS=1 python bench/bench_export.py --out bench/results/export_tiny.json

Builds the tiny preset (or loads ``--exp-dir``'s model with the weights ``speechae evaluate``
uses), exports it with :func:`speechae.export.export_model` (``--export-dir`` to reuse files
already there), and times one utterance of ``--seconds`` (batch 1) per part with 1 and 2 threads:
eager ``torch.inference_mode`` vs an ``onnxruntime`` CPU session with as many intra-op threads.
Weights do not change the timing, so without ``--vocoder-dir`` a randomly initialised vocoder of
``--vocoder-preset`` stands in for a trained one.  Reports the median of ``--repeats`` runs
(eager and ORT interleaved) after two warm-ups and the real-time factor (wall / audio seconds); prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from speechae.export import example_inputs, export_model, load_exported, make_part, run_exported


def _median_times(fns, repeats: int) -> list[float]:  # noqa: ANN001
    """Median seconds of each of ``fns`` after two warm-ups, timed interleaved (one run of each
    per round), so that load from other processes affects them alike."""
    for _ in range(2):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


def bench(model: torch.nn.Module, vocoder: torch.nn.Module | None, export_dir: Path, seconds: float,
          threads: list[int], repeats: int) -> list[dict]:
    """One row per (part, threads): eager and ORT seconds, RTFs, speed-up."""
    frames = int(round(seconds * 100))
    rows = []
    parts = ["encoder", "decoder"] + (["vocoder"] if vocoder is not None else [])
    for part in parts:
        module = make_part(part, model, vocoder)
        inputs = example_inputs(part, module, (frames,))
        for n in threads:
            torch.set_num_threads(n)
            sess = load_exported(export_dir / f"{part}.onnx", num_threads=n)

            def eager() -> None:
                with torch.inference_mode():
                    module(*inputs)

            t_eager, t_ort = _median_times([eager, lambda: run_exported(sess, inputs)], repeats)
            rows.append({"part": part, "threads": n, "audio_s": seconds, "eager_s": round(t_eager, 4),
                         "ort_s": round(t_ort, 4), "eager_rtf": round(t_eager / seconds, 5),
                         "ort_rtf": round(t_ort / seconds, 5), "ort_speedup": round(t_eager / t_ort, 2)})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp-dir", default=None, help="an experiment (default: the tiny preset, random weights)")
    p.add_argument("--vocoder-dir", default=None, help="a trained vocoder experiment")
    p.add_argument("--vocoder-preset", default="cpu", help="preset of the stand-in vocoder ('none': no vocoder)")
    p.add_argument("--export-dir", default=None, help="reuse / write the exported files here (default: a temp dir)")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=None, help="JSON output")
    args = p.parse_args()

    from speechae.models import build_model
    from speechae.models.vocoder import VocoderConfig, build_vocoder, load_vocoder

    torch.manual_seed(0)
    if args.exp_dir:
        from speechae.eval.pipeline import load_experiment_model

        model, _, _ = load_experiment_model(args.exp_dir)
    else:
        model = build_model({"preset": "tiny"})
    model = model.eval()
    if args.vocoder_dir:
        vocoder = load_vocoder(args.vocoder_dir)
    elif args.vocoder_preset != "none":
        vocoder = build_vocoder(VocoderConfig(preset=args.vocoder_preset)).eval()
    else:
        vocoder = None
    if args.export_dir:
        export_dir = Path(args.export_dir)
    else:
        import tempfile

        export_dir = Path(tempfile.mkdtemp(prefix="speechae_export_"))
    parts = ["encoder", "decoder"] + (["vocoder"] if vocoder is not None else [])
    report = None
    if not all((export_dir / f"{p}.onnx").is_file() for p in parts):
        torch.set_num_threads(2)
        report = export_model(model, export_dir, formats=("onnx",), vocoder=vocoder)
    rows = bench(model, vocoder, export_dir, args.seconds, [int(t) for t in args.threads.split(",")], args.repeats)
    head = ("part", "threads", "eager_s", "ort_s", "eager_rtf", "ort_rtf", "ort_speedup")
    print(" | ".join(f"{h:>11}" for h in head))
    for r in rows:
        print(" | ".join(f"{r[h]!s:>11}" for h in head))
    result = {"model": args.exp_dir or "preset tiny (random init)",
              "vocoder": args.vocoder_dir or (f"preset {args.vocoder_preset} (random init)" if vocoder else None),
              "torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__,
              "cpu": platform.processor() or platform.machine(), "rows": rows,
              "parity_max_abs": (report or {}).get("parity_max_abs")}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({"rows": len(rows), "out": args.out}))


if __name__ == "__main__":
    main()
