"""Experiment logging: ``log/train.log`` (text), ``log/metrics.jsonl`` (one JSON object per
logging step) and TensorBoard (``tensorboard/``).  Only the main rank writes.

TensorBoard layout: every scalar metric under its own key (``loss/*``, ``weight/*``,
``kl/dim_XX``, ``train/lr``, ...), a custom chart that draws ``loss/sigreg`` beside
``sigreg/floor``, latent histograms and input-vs-reconstruction spectrogram images at
validation.
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from speechae.utils.io import atomic_path

log = logging.getLogger("speechae.train")


def add_file_handler(path: str | Path) -> logging.Handler:
    """Mirror the ``speechae`` loggers' output into ``path`` (appending)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(module)s] %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler


def truncate_jsonl(path: str | Path, max_step: int) -> None:
    """Keep only the records with ``step <= max_step``, atomically.

    A run resumed from the checkpoint of step ``max_step`` redoes every later step, so their
    records (and a last line cut short by a kill) must go.  ``max_step=0`` empties the log.
    """
    path = Path(path)
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if int(rec.get("step", 0)) <= max_step:
            keep.append(line)
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{x}\n" for x in keep), encoding="utf-8")


def format_duration(seconds: float) -> str:
    """``3h02m``, ``4m05s`` or ``12s``."""
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class Throughput:
    """Steps/s and audio-seconds/s since the last report, plus an ETA to ``max_steps``."""

    def __init__(self, start_step: int, max_steps: int) -> None:
        self.max_steps = max_steps
        self.t0 = self.t_last = time.perf_counter()
        self.step0 = self.step_last = start_step
        self.audio = 0.0

    def add_audio(self, seconds: float) -> None:
        """Audio processed (all ranks) since the last report."""
        self.audio += seconds

    def report(self, step: int) -> dict[str, float]:
        """Rates over the window since the previous call; resets the window."""
        now = time.perf_counter()
        dt = max(now - self.t_last, 1e-9)
        steps_per_s = (step - self.step_last) / dt
        overall = (step - self.step0) / max(now - self.t0, 1e-9)
        out = {"train/steps_per_s": steps_per_s, "train/audio_s_per_s": self.audio / dt,
               "train/eta_s": (self.max_steps - step) / overall if overall > 0 else float("inf"),
               "train/elapsed_s": now - self.t0}
        self.t_last, self.step_last, self.audio = now, step, 0.0
        return out


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated (MiB) on CUDA, else the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


class ExperimentLogger:
    """Writes metrics to JSONL and TensorBoard; a no-op object on non-main ranks.

    ``start_step``: the step training (re)starts from (the resumed checkpoint's, or 0).
    Records and TensorBoard events of later steps, left by an interrupted run, are dropped,
    so every step is logged exactly once however often the run was killed and resumed.
    """

    def __init__(self, exp_dir: str | Path, enabled: bool, tensorboard: bool = True,
                 start_step: int = 0) -> None:
        self.enabled = enabled
        self.exp_dir = Path(exp_dir)
        self.writer = None
        self._jsonl = None
        if not enabled:
            return
        (self.exp_dir / "log").mkdir(parents=True, exist_ok=True)
        truncate_jsonl(self.exp_dir / "log" / "metrics.jsonl", start_step)
        self._jsonl = open(self.exp_dir / "log" / "metrics.jsonl", "a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # events at steps >= purge_step from earlier runs are hidden by TensorBoard
            self.writer = SummaryWriter(str(self.exp_dir / "tensorboard"), purge_step=start_step + 1)
            self.writer.add_custom_scalars({"regularizer": {
                "SIGReg vs Gaussian floor": ["Multiline", ["loss/sigreg", "sigreg/floor"]],
                "KL": ["Multiline", ["loss/kl", "kl/nats"]]}})

    def log_metrics(self, step: int, metrics: Mapping[str, float], prefix: str = "") -> None:
        """One JSONL record ``{"step": ..., **metrics}`` and one TensorBoard scalar per key."""
        if not self.enabled:
            return
        rec: dict[str, Any] = {"step": int(step)}
        if prefix:
            rec["split"] = prefix.rstrip("/")
        for k, v in metrics.items():
            fv = float(v)
            rec[f"{prefix}{k}"] = fv if math.isfinite(fv) else str(fv)
            if self.writer is not None and math.isfinite(fv):
                self.writer.add_scalar(f"{prefix}{k}", fv, step)
        assert self._jsonl is not None
        self._jsonl.write(json.dumps(rec) + "\n")
        self._jsonl.flush()

    def log_histograms(self, step: int, tensors: Mapping[str, torch.Tensor]) -> None:
        """Histograms of (flattened) tensors, e.g. latent values."""
        if self.writer is None:
            return
        for name, t in tensors.items():
            if t.numel():
                self.writer.add_histogram(name, t.detach().float().cpu().numpy(), step)

    def log_spectrograms(self, step: int, name: str, target: torch.Tensor, recon: torch.Tensor) -> None:
        """An image with the input (top) and reconstructed (bottom) log-mel, (T, F) each."""
        if self.writer is None:
            return
        self.writer.add_image(name, spectrogram_image(target, recon), step, dataformats="HWC")

    def log_audio(self, step: int, name: str, wav: torch.Tensor, sample_rate: int) -> None:
        """A mono waveform (S,) in [-1, 1] (clipped) as TensorBoard audio."""
        if self.writer is None:
            return
        x = wav.detach().float().reshape(1, -1).clamp(-1.0, 1.0).cpu()
        self.writer.add_audio(name, x, step, sample_rate=int(sample_rate))

    def flush(self) -> None:
        """Push buffered records to disk."""
        if self.writer is not None:
            self.writer.flush()
        if self._jsonl is not None:
            self._jsonl.flush()

    def close(self) -> None:
        """Flush and close all writers."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None


def spectrogram_image(target: torch.Tensor, recon: torch.Tensor) -> np.ndarray:
    """Render two (T, F) log-mels one above the other; returns uint8 (H, W, 3)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a, b = target.detach().float().cpu().numpy().T, recon.detach().float().cpu().numpy().T
    vmin, vmax = float(np.min(a)), float(np.max(a))
    fig, axes = plt.subplots(2, 1, figsize=(8, 4.5), sharex=True)
    for ax, img, title in zip(axes, (a, b), ("input", "reconstruction")):
        ax.imshow(img, origin="lower", aspect="auto", vmin=vmin, vmax=vmax, cmap="magma")
        ax.set_ylabel("mel bin")
        ax.set_title(title, fontsize=9)
    axes[-1].set_xlabel("frame")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    buf.seek(0)
    from PIL import Image

    return np.asarray(Image.open(buf).convert("RGB"))
