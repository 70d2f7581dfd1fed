"""Stage 2: 80-dim log-mel filterbank features stored with Lhotse's LilcomChunkyWriter.

Lhotse's ``Fbank`` (pure PyTorch, Kaldi-compatible) is the default; when ``kaldifeat`` is
importable, ``KaldifeatFbank`` is used instead (same features, faster, GPU-capable).

A multi-channel recording gives the features of its channel 0 (the channel policy of
:class:`speechae.data.validate.AudioPolicy`).  When extraction fails, every failing cut is named
with its file and reason (stage 1 should have caught it: rerun it).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from lhotse import CutSet, Fbank, FbankConfig, LilcomChunkyWriter, load_manifest
from lhotse.cut import Cut, MultiCut
from lhotse.utils import fastcopy

from speechae.data.validate import BadInputError, one_line
from speechae.utils.io import atomic_path

FRAME_SHIFT = 0.01


def make_extractor(num_mel_bins: int = 80, sampling_rate: int = 16000, use_kaldifeat: bool | None = None):  # noqa: ANN201
    """The fbank extractor: KaldifeatFbank when available (or requested), else Lhotse's Fbank."""
    if use_kaldifeat is None:
        use_kaldifeat = importlib.util.find_spec("kaldifeat") is not None
    if use_kaldifeat:
        from lhotse.features.kaldifeat import KaldifeatFbank, KaldifeatFbankConfig, KaldifeatMelOptions

        return KaldifeatFbank(KaldifeatFbankConfig(mel_opts=KaldifeatMelOptions(num_bins=num_mel_bins)))
    return Fbank(FbankConfig(num_mel_bins=num_mel_bins, sampling_rate=sampling_rate, frame_shift=FRAME_SHIFT))


def channel_zero(cut: Cut) -> Cut:
    """A multi-channel cut as the mono cut of its channel 0 (same id), per the channel policy
    of :class:`speechae.data.validate.AudioPolicy`; a mono cut unchanged."""
    if isinstance(cut, MultiCut):
        return fastcopy(cut.to_mono(mono_downmix=False)[0], id=cut.id)
    return cut


def describe_failures(cuts: CutSet, extractor, limit: int = 50) -> str:  # noqa: ANN001
    """Re-run extraction cut by cut (in this process) and name every cut that fails, with its
    file and the reason: one line each."""
    lines = []
    for cut in cuts:
        try:
            audio = cut.load_audio()
            if not np.isfinite(audio).all():
                raise ValueError(f"{int(np.isnan(audio).sum())} NaN / {int(np.isinf(audio).sum())} Inf audio samples")
            feats = extractor.extract(audio, cut.sampling_rate)
            if not np.isfinite(feats).all():
                raise ValueError("non-finite features")
        except Exception as e:
            source = cut.recording.sources[0].source if cut.has_recording else "?"
            lines.append(f"  cut {cut.id} ({source}): {one_line(e)}")
    if not lines:
        return "(every cut extracts on its own; the failure is not in one cut)"
    shown = lines[:limit] + ([f"  ... and {len(lines) - limit} more"] if len(lines) > limit else [])
    return "\n".join([f"{len(lines)} failing cut(s); rerun stage 1 to check the corpus:"] + shown)


def cuts_path(fbank_dir: str | Path, prefix: str, split: str) -> Path:
    """Where stage 2 writes the cuts of ``split``."""
    return Path(fbank_dir) / f"{prefix}_cuts_{split}.jsonl.gz"


def compute_fbank(manifest_dir: str | Path, fbank_dir: str | Path, prefix: str, split: str,
                  num_jobs: int = 2, num_mel_bins: int = 80, speed_perturb: bool = False) -> dict:
    """Compute and store features for one split; returns timing statistics (also saved as JSON).

    Feature storage goes to ``<fbank_dir>/<prefix>_feats_<split>/`` (removed first if a previous
    run was interrupted); the cut manifest, the only thing later stages read, is written last
    and atomically, so an interrupted run never leaves cuts pointing at missing features.
    """
    manifest_dir, fbank_dir = Path(manifest_dir), Path(fbank_dir)
    rec_path = manifest_dir / f"{prefix}_recordings_{split}.jsonl.gz"
    sup_path = manifest_dir / f"{prefix}_supervisions_{split}.jsonl.gz"
    for p in (rec_path, sup_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: missing; run the manifest stage first")
    cuts = CutSet.from_manifests(recordings=load_manifest(rec_path), supervisions=load_manifest(sup_path))
    cuts = CutSet.from_cuts(channel_zero(c) for c in cuts)
    num_cuts = len(cuts)
    if speed_perturb:
        cuts = (cuts + cuts.perturb_speed(0.9) + cuts.perturb_speed(1.1)).to_eager()
        num_cuts *= 3
    # Worker start-up (torch + Lhotse imports) costs seconds: small splits run in-process.
    num_jobs = max(1, min(num_jobs, num_cuts // 100))
    storage = fbank_dir / f"{prefix}_feats_{split}"
    shutil.rmtree(storage, ignore_errors=True)
    fbank_dir.mkdir(parents=True, exist_ok=True)
    if num_jobs > 1:
        torch.set_num_threads(1)  # one BLAS thread per worker; Lhotse warns of hangs otherwise
    extractor = make_extractor(num_mel_bins)
    audio_seconds = sum(c.duration for c in cuts)
    t0 = time.perf_counter()
    try:
        cuts = cuts.compute_and_store_features(
            extractor=extractor, storage_path=storage, num_jobs=num_jobs if num_jobs > 1 else None,
            storage_type=LilcomChunkyWriter, progress_bar=True,
        )
    except Exception as e:  # Lhotse names neither cut nor file: find them
        raise BadInputError(f"{rec_path}: feature extraction failed ({one_line(e)})\n"
                            f"{describe_failures(cuts, extractor)}") from e
    elapsed = time.perf_counter() - t0
    cuts = cuts.to_eager()
    with atomic_path(cuts_path(fbank_dir, prefix, split)) as tmp:
        cuts.to_file(tmp)
    stats = {
        "split": split, "num_cuts": len(cuts), "audio_seconds": round(audio_seconds, 2),
        "wall_seconds": round(elapsed, 3), "real_time_factor": round(elapsed / max(audio_seconds, 1e-9), 5),
        "extractor": type(extractor).__name__, "num_jobs": num_jobs,
    }
    with atomic_path(fbank_dir / f"{prefix}_fbank_stats_{split}.json") as tmp:
        tmp.write_text(json.dumps(stats, indent=2) + "\n")
    logging.info("fbank %s: %d cuts, %.1f s audio in %.2f s (RTF %.4f, %s)", split, len(cuts), audio_seconds,
                 elapsed, stats["real_time_factor"], stats["extractor"])
    return stats
