"""Listening evaluation: resynthesise test utterances and judge them as waveforms.

For a sample of test utterances (the same ones for every system, languages in turn: see
:func:`select_cuts`) this scores, with
:class:`speechae.eval.waveform.WaveformScorer`:

* ``original``: the recorded audio (single-signal judges: DNSMOS, pocketsphinx WER);
* ``copy_vocoder``: the vocoder on the ground-truth log-mel (the ceiling any autoencoder can
  reach through this vocoder: the loss due to the latent is ``copy_vocoder - system``);
* ``copy_griffin_lim``: Griffin-Lim on the ground-truth log-mel (the no-training preview);
* ``system``: the autoencoder's reconstruction of the log-mel, then the vocoder (Griffin-Lim
  when there is none).

The first three do not depend on the autoencoder: they are computed once per test set and
vocoder and shared through the evaluation cache (``<exp>/../.eval_cache``), like the feature
baselines.  A few examples per system go to ``<out>/examples/`` (original, copy-synthesis and
resynthesis wavs, and a log-mel image of each).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from speechae.audio import HOP, SAMPLING_RATE, griffin_lim
from speechae.eval.waveform import JUDGES, Utt, WaveformScorer
from speechae.utils.io import atomic_path

log = logging.getLogger("speechae.eval")


@dataclass
class ListenConfig:
    """``num_utts`` test utterances are resynthesised and judged; ``num_examples`` of them are
    written as wavs; ``judges`` is a subset of :data:`speechae.eval.waveform.JUDGES`."""

    num_utts: int = 12
    num_examples: int = 3
    judges: Sequence[str] = field(default_factory=lambda: tuple(JUDGES))
    griffin_lim_iters: int = 32


@dataclass
class Item:
    """One test utterance: audio (S,) at 16 kHz, its stage-2 log-mel (T, F), text, language."""

    id: str
    audio: np.ndarray
    fbank: torch.Tensor
    text: str | None
    language: str | None


def select_cuts(cuts: Any, num_utts: int) -> list[Any]:
    """``num_utts`` cuts that have a recording and features, the same for every system: the
    languages take turns (so the English-only ASR judge sees about its share), each in cut-id
    order."""
    by_lang: dict[str, list[Any]] = {}
    for c in cuts:
        if c.has_recording and c.has_features:
            lang = (c.supervisions[0].language if c.supervisions else None) or ""
            by_lang.setdefault(lang, []).append(c)
    queues = [sorted(v, key=lambda c: c.id) for _, v in sorted(by_lang.items())]
    chosen: list[Any] = []
    while len(chosen) < num_utts and any(queues):
        for q in queues:
            if q and len(chosen) < num_utts:
                chosen.append(q.pop(0))
    return chosen


def load_items(cuts: Any, num_utts: int) -> list[Item]:
    """Audio (16 kHz, channel 0), stage-2 log-mel, text and language of :func:`select_cuts`."""
    chosen = select_cuts(cuts, num_utts)
    items = []
    for cut in chosen:
        c = cut.resample(SAMPLING_RATE) if cut.sampling_rate != SAMPLING_RATE else cut
        audio = np.asarray(c.load_audio(), dtype=np.float32)
        audio = audio[0] if audio.ndim > 1 else audio
        sup = cut.supervisions[0] if cut.supervisions else None
        items.append(Item(cut.id, audio, torch.as_tensor(cut.load_features(), dtype=torch.float32),
                          sup.text if sup else None, sup.language if sup else None))
    return items


def _fit(wav: np.ndarray, n: int) -> np.ndarray:
    """``wav`` cut or zero-padded to ``n`` samples (T*HOP vs the recording's own length)."""
    return wav[:n] if len(wav) >= n else np.pad(wav, (0, n - len(wav)))


def make_synth(vocoder: torch.nn.Module | None, gl_iters: int) -> Callable[[torch.Tensor, int], np.ndarray]:
    """``synth(fbank (T, F), num_samples) -> wav``: the vocoder, or Griffin-Lim without one."""
    @torch.inference_mode()
    def synth(fbank: torch.Tensor, n: int) -> np.ndarray:
        if vocoder is None:
            wav = griffin_lim(fbank.float(), n_iter=gl_iters)
        else:
            p = next(vocoder.parameters())
            wav = vocoder(fbank[None].to(p.device, p.dtype))[0].float().cpu()
        return _fit(wav.numpy().astype(np.float32), n)

    return synth


@torch.inference_mode()
def reconstruct(model: torch.nn.Module, fbank: torch.Tensor) -> torch.Tensor:
    """The autoencoder's log-mel reconstruction of one utterance (inference mode)."""
    was = model.training
    model.eval()
    try:
        p = next(model.parameters())
        x = fbank[None].to(p.device, p.dtype)
        out = model(x, torch.tensor([x.shape[1]], device=p.device))
    finally:
        model.train(was)
    return out.recon[0].float().cpu()


def _utts(items: Sequence[Item], hyps: Sequence[np.ndarray] | None) -> list[Utt]:
    return [Utt(it.id, it.audio, None if hyps is None else h, SAMPLING_RATE, it.text, it.language)
            for it, h in zip(items, hyps if hyps is not None else [None] * len(items))]


def _digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _cached(path: Path | None, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``compute()`` once per ``path`` across processes (flock), stored as JSON."""
    if path is None:
        return compute()
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.is_file():
            try:
                return json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                log.warning("ignoring unreadable listening cache %s (%s)", path, e)
        result = compute()
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(result, default=float), encoding="utf-8")
        return result


def _summary(scored: dict[str, Any]) -> dict[str, Any]:
    return {**scored["metrics"], "num_utterances": scored["num_utterances"], "notes": scored["notes"]}


def _write_examples(out_dir: Path, items: Sequence[Item], wavs: dict[str, Sequence[np.ndarray]],
                    mels: dict[str, Sequence[torch.Tensor]], n: int) -> list[str]:
    import soundfile as sf

    from speechae.train.logger import spectrogram_image

    ex = out_dir / "examples"
    ex.mkdir(parents=True, exist_ok=True)
    written = []
    for i, it in enumerate(items[:n]):
        for kind, seq in wavs.items():
            path = ex / f"{it.id}_{kind}.wav"
            with atomic_path(path) as tmp:
                sf.write(str(tmp), np.clip(seq[i], -1.0, 1.0), SAMPLING_RATE, format="WAV", subtype="PCM_16")
            written.append(path.name)
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        img = spectrogram_image(mels["original"][i], mels["system"][i])
        path = ex / f"{it.id}_logmel.png"
        with atomic_path(path) as tmp:
            plt.imsave(str(tmp), img, format="png")
        written.append(path.name)
    return written


def own_waveform_head(exp_dir: str | Path) -> torch.nn.Module | None:
    """The generator of an end-to-end arm's waveform head (``waveform.enabled``) from the newest
    checkpoint of ``exp_dir`` (trained weights), or None when the arm decodes log-mel only."""
    from speechae.models.vocoder import build_vocoder, vocoder_config_from_dict
    from speechae.train.checkpoint import load_checkpoint

    state = load_checkpoint(exp_dir)
    wave = (state.get("config") or {}).get("waveform") or {}
    head = (state.get("modules") or {}).get("waveform_head")
    if not wave.get("enabled") or head is None:
        return None
    gen = build_vocoder(vocoder_config_from_dict(wave["vocoder"]))
    gen.load_state_dict({k[len("generator."):]: v for k, v in head.items() if k.startswith("generator.")})
    gen.name = f"{exp_dir} (its own waveform head)"
    return gen.eval()


def evaluate_listening(model: torch.nn.Module, cuts: Any, out_dir: str | Path,
                       vocoder_dir: str | Path | torch.nn.Module | None = None,
                       cfg: ListenConfig = ListenConfig(), cache_dir: str | Path | None = None,
                       device: torch.device | str = "cpu") -> dict[str, Any]:
    """Resynthesise and judge ``cfg.num_utts`` test utterances of ``cuts`` (see the module doc)
    with the vocoder of the experiment ``vocoder_dir`` (or a vocoder module; None: Griffin-Lim).

    Returns ``{"vocoder", "num_utterances", "system", "original", "copy_vocoder",
    "copy_griffin_lim", "examples", "notes"}``; each scored entry maps metric keys
    (``waveform.*``, ``judges.*``) to means over the utterances.
    """
    from speechae.train.checkpoint import latest_checkpoint

    out_dir = Path(out_dir)
    items = load_items(cuts, cfg.num_utts)
    if not items:
        return {"notes": ["no test utterance has both a recording and features: no listening evaluation"]}
    vocoder, vocoder_name, vocoder_key = None, "griffin_lim", None
    if isinstance(vocoder_dir, torch.nn.Module):  # e.g. an end-to-end arm's own waveform head
        vocoder = vocoder_dir.to(device).eval()
        vocoder_name = getattr(vocoder_dir, "name", type(vocoder_dir).__name__)
        vocoder_key = [vocoder_name, _digest({k: float(v.double().sum()) for k, v in vocoder.state_dict().items()})]
    elif vocoder_dir is not None:
        from speechae.models.vocoder import load_vocoder

        vocoder = load_vocoder(vocoder_dir, device=device)
        ckpt = latest_checkpoint(Path(vocoder_dir) / "checkpoints")
        vocoder_name = str(vocoder_dir)
        vocoder_key = [str(ckpt), ckpt.stat().st_size if ckpt else 0, ckpt.stat().st_mtime_ns if ckpt else 0]
    model = model.to(device)
    synth = make_synth(vocoder, cfg.griffin_lim_iters)
    gl = make_synth(None, cfg.griffin_lim_iters)
    scorer = WaveformScorer(judges=tuple(cfg.judges), progress=True)
    lengths = [len(it.audio) for it in items]

    # the system first: evaluations of a grid score their systems side by side, and only then
    # wait for the one that scores the shared references
    recon = [reconstruct(model, it.fbank) for it in items]
    system_wavs = [synth(r, n) for r, n in zip(recon, lengths)]
    system = _summary(scorer.score(_utts(items, system_wavs)))

    def references() -> dict[str, Any]:
        copy_gl = [gl(it.fbank, n) for it, n in zip(items, lengths)]
        out = {"original": _summary(scorer.score_reference(_utts(items, None))),
               "copy_griffin_lim": _summary(scorer.score(_utts(items, copy_gl)))}
        if vocoder is not None:
            copy_voc = [synth(it.fbank, n) for it, n in zip(items, lengths)]
            out["copy_vocoder"] = _summary(scorer.score(_utts(items, copy_voc)))
        return out

    key = _digest([it.id for it in items], lengths, vocoder_key, tuple(cfg.judges), cfg.griffin_lim_iters)
    cache = Path(cache_dir) / f"listening-{key}.json" if cache_dir else None
    refs = _cached(cache, references)
    n_ex = min(cfg.num_examples, len(items))
    copy_name = "copy_" + ("vocoder" if vocoder is not None else "griffin_lim")
    wavs = {"original": [it.audio for it in items[:n_ex]], "system": system_wavs[:n_ex],
            copy_name: [synth(it.fbank, n) for it, n in zip(items[:n_ex], lengths)]}
    examples = _write_examples(out_dir, items, wavs, {"original": [it.fbank for it in items], "system": recon}, n_ex)
    notes = sorted(set(scorer.skipped.values()))
    if vocoder is None:
        notes.append("no vocoder: the system and its copy-synthesis use Griffin-Lim")
    return {"vocoder": vocoder_name, "num_utterances": len(items), "utterances": [it.id for it in items],
            "system": system, **refs, "examples": examples, "notes": notes, "hop": HOP}


ROWS = (("system", "this system (reconstruction -> vocoder)"), ("copy_vocoder", "vocoder on the true log-mel"),
        ("copy_griffin_lim", "Griffin-Lim on the true log-mel"), ("original", "original audio"))
# against the original (not defined for the original itself)
PAIRED = (("waveform.stoi", "STOI ↑"), ("waveform.pesq_wb", "PESQ-WB ↑"), ("waveform.mrstft_logmag", "MR-STFT log-mag ↓"),
          ("judges.speaker_sim", "speaker sim ↑"))
# one signal at a time (also the original)
SINGLE = (("judges.asr_wer", "ASR WER ↓"), ("judges.dnsmos_sig", "DNSMOS SIG ↑"), ("judges.dnsmos_bak", "DNSMOS BAK ↑"),
          ("judges.dnsmos_ovrl", "DNSMOS OVRL ↑"))


def _value(row: Any, key: str) -> float | None:
    v = row.get(key) if isinstance(row, dict) else None
    return float(v) if isinstance(v, (int, float)) and np.isfinite(v) else None


def _table(result: dict[str, Any], columns: Sequence[tuple[str, str]], rows: Sequence[tuple[str, str]]) -> list[str]:
    rows = [(k, label) for k, label in rows if isinstance(result.get(k), dict)]
    columns = [(k, c) for k, c in columns if any(_value(result[r], k) is not None for r, _ in rows)]
    if not rows or not columns:
        return []
    out = ["| signal | " + " | ".join(c for _, c in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for r, label in rows:
        cells = [f"{v:.3f}" if (v := _value(result[r], k)) is not None else "not scored" for k, _ in columns]
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return out + [""]


def listening_report(result: dict[str, Any]) -> str:
    """The markdown section of the report: signals compared with the original, then the
    single-signal judges of every signal including the original."""
    lines = ["", "## Listening (waveforms)", "",
             f"{result.get('num_utterances', 0)} test utterances, vocoder: `{result.get('vocoder')}`; "
             "SI-SDR is in metrics.json but not shown (a vocoder does not keep the phase); ASR WER is "
             "pocketsphinx's corpus WER on the English utterances.", ""]
    lines += _table(result, PAIRED, ROWS[:3])
    lines += _table(result, SINGLE, ROWS)
    for note in result.get("notes", []):
        lines.append(f"- {note}")
    if result.get("examples"):
        lines.append("\nExamples: " + ", ".join(f"[{n}](examples/{n})" for n in result["examples"]))
    return "\n".join(lines) + "\n"
