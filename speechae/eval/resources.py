"""Resource and stability figures: parameters, FLOPs per audio second, and what the training
logs (``<exp>/log/metrics.jsonl``) say about throughput, memory, non-finite steps and spikes.

A **loss spike** is a logged training step whose loss exceeds the median of the previous
``window`` logged values by more than ``k`` median absolute deviations (robust to the slow
downward trend of a training curve; MAD floored at 1e-3 of the median so a flat curve does not
turn noise into spikes).  ``loss_spikes`` counts them on ``loss/recon``, the term every arm
has (``loss/total`` adds a different regularizer in each arm, so its spikes would not compare);
``loss_spikes_by_term`` counts them on every logged ``loss/*`` term, ``loss_spike_key`` names
the key counted (``loss/total`` only for logs without ``loss/recon``).

Parameters and FLOPs come from :mod:`speechae.utils.modelstats` (shared with
``speechae model-summary``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from speechae.utils.modelstats import autoencoder_flops, count_parameters, flops_per_second

__all__ = ["count_parameters", "flops_per_second", "loss_spikes", "model_resources", "read_metrics_jsonl",
           "training_resources"]

RECON_KEY = "loss/recon"


def model_resources(model: torch.nn.Module, num_mel_bins: int = 80, seconds: float = 10.0) -> dict[str, float]:
    """Parameters and GFLOPs per audio second (encoder only, and encoder + decoder) of a SpeechAE."""
    return {"params": count_parameters(model), "encoder_params": count_parameters(model.encoder),
            **autoencoder_flops(model, num_mel_bins, seconds)}


def read_metrics_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Records of a metrics.jsonl (lines cut short by a kill are skipped)."""
    out = []
    path = Path(path)
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def loss_spikes(losses: np.ndarray, window: int = 20, k: float = 5.0) -> int:
    """Count of values above median + k * MAD of the trailing ``window`` (see module doc)."""
    spikes = 0
    for i in range(5, len(losses)):
        past = losses[max(0, i - window): i]
        past = past[np.isfinite(past)]
        if len(past) < 5 or not np.isfinite(losses[i]):
            continue
        med = np.median(past)
        mad = max(np.median(np.abs(past - med)), 1e-3 * abs(med), 1e-8)
        spikes += int(losses[i] > med + k * mad)
    return spikes


def training_resources(exp_dir: str | Path, loss_key: str = RECON_KEY) -> dict[str, Any]:
    """Throughput, peak memory and stability from ``<exp>/log/metrics.jsonl`` (train records)."""
    recs = [r for r in read_metrics_jsonl(Path(exp_dir) / "log" / "metrics.jsonl") if "split" not in r]
    if not recs:
        return {}
    col = lambda k: np.array([_num(r.get(k)) for r in recs])  # noqa: E731
    if not any(loss_key in r for r in recs):
        loss_key = "loss/total"
    losses = col(loss_key)
    out: dict[str, Any] = {"logged_steps": len(recs), "last_step": int(max(r["step"] for r in recs))}
    for key, name, agg in (("train/audio_s_per_s", "audio_seconds_per_second", np.nanmedian),
                           ("train/steps_per_s", "steps_per_second", np.nanmedian),
                           ("train/peak_memory_mb", "peak_memory_mb", np.nanmax),
                           ("train/nonfinite_steps", "nonfinite_steps", np.nanmax),
                           ("train/elapsed_s", "train_elapsed_s", np.nanmax),
                           ("train/audio_seconds", "audio_seconds_seen", np.nanmax)):
        v = col(key)
        if np.isfinite(v).any():
            out[name] = float(agg(v))
    # the logger writes non-finite values as strings ("nan", "inf"): _num turns them back
    has_loss = [loss_key in r for r in recs]
    out["nonfinite_logged_losses"] = int((~np.isfinite(losses[has_loss])).sum())
    out["loss_spikes"] = loss_spikes(losses[has_loss])
    out["loss_spike_key"] = loss_key
    terms = sorted({k for r in recs for k in r if k.startswith("loss/")})
    out["loss_spikes_by_term"] = {k[5:]: loss_spikes(col(k)[[k in r for r in recs]]) for k in terms}
    for key, name in (("loss/total", "final_loss"), (RECON_KEY, "final_recon_loss")):
        finite = (v := col(key))[np.isfinite(v)]
        if finite.size:
            out[name] = float(finite[-1])
    if "nonfinite_steps" not in out:
        out["nonfinite_steps"] = out["nonfinite_logged_losses"]
    return {k: (v if not (isinstance(v, float) and math.isnan(v)) else 0.0) for k, v in out.items()}
