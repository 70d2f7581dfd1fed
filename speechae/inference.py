"""Inference with a trained experiment: waveform -> latent -> log-mel -> waveform.

Three lines::

    from speechae import SpeechAE
    ae = SpeechAE.from_exp_dir("egs/mini/ae/exp/sigreg")
    z = ae.encode(wav, sr)                      # (T_z, D) torch tensor
    wav16k, sr16k = ae.resynth(wav, sr)          # same duration as the input

Audio of any sample rate is resampled to 16 kHz (``scipy.signal.resample_poly``), a
multi-channel signal keeps its channel 0 (the project's channel policy, as in stage 2), and the
features are stage 2's own extractor (:func:`speechae.data.features.make_extractor`), so the
model sees exactly what it was trained on.  The weights are those ``speechae evaluate`` scores
(:func:`speechae.eval.pipeline.load_experiment_model`).  Waveforms come back at 16 kHz with the
input's duration: ``round(len * 16000 / sr)`` samples.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

log = logging.getLogger("speechae.inference")

SAMPLING_RATE = 16000
# Short inputs are padded to this many frames (with their true length: padded frames never
# change valid outputs), which keeps the exported encoder's minimum (MIN_ENCODER_FRAMES) and
# the eager path on the same shapes.
MIN_FRAMES = 32
AUDIO_SUFFIXES = (".wav", ".flac")

WavLike = np.ndarray | Tensor


@dataclass
class Utterance:
    """One input of the CLI: ``uid`` (unique id), ``source`` (file or cut id), and either an
    audio ``path`` or a Lhotse ``cut``."""

    uid: str
    source: str
    path: Path | None = None
    cut: Any = None

    def load(self) -> tuple[np.ndarray, int]:
        """(mono float32 waveform, sample rate)."""
        if self.cut is not None:
            try:
                audio = self.cut.load_audio()
            except Exception as e:
                raise ValueError(f"{self.source}: cannot load the audio of cut {self.cut.id} ({e})") from e
            return np.asarray(audio, dtype=np.float32), int(self.cut.sampling_rate)
        assert self.path is not None
        return read_audio(self.path)

    @property
    def duration(self) -> float:
        """Seconds (from the header or the manifest; 0 when unknown)."""
        if self.cut is not None:
            return float(self.cut.duration)
        try:
            import soundfile as sf

            return float(sf.info(str(self.path)).duration)
        except Exception:
            return 0.0


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """(float32 waveform ``(channels, samples)`` or ``(samples,)`` for mono, sample rate) of an
    audio file; any unreadable, empty or non-finite file is a ValueError naming it."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such audio file")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:
        raise ValueError(f"{path}: cannot read audio ({str(e).strip() or type(e).__name__})") from e
    if data.shape[0] == 0:
        raise ValueError(f"{path}: the audio file holds no samples")
    if not np.isfinite(data).all():
        raise ValueError(f"{path}: the audio holds NaN or Inf samples")
    data = data.T  # (channels, samples), the Lhotse/torchaudio convention
    return (data[0] if data.shape[0] == 1 else data), int(sr)


def to_mono_16k(wav: WavLike, sr: int, name: str = "waveform") -> np.ndarray:
    """A mono float32 16 kHz numpy waveform from ``wav`` ``(samples,)`` or ``(channels, samples)``.

    Several channels: channel 0 (logged).  Other rates: polyphase resampling with scipy's
    Kaiser-windowed FIR (``resample_poly``), exact for rational ratios (22050 -> 16000 is
    320/441)."""
    x = wav.detach().cpu().numpy() if isinstance(wav, Tensor) else np.asarray(wav)
    if x.ndim == 2:
        if x.shape[0] > 1:
            log.info("%s: %d channels; using channel 0", name, x.shape[0])
        x = x[0]
    if x.ndim != 1:
        raise ValueError(f"{name}: expected a waveform (samples,) or (channels, samples), got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"{name}: empty waveform")
    if int(sr) <= 0:
        raise ValueError(f"{name}: sample rate must be positive, got {sr}")
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: the waveform holds NaN or Inf samples")
    sr = int(sr)
    if sr != SAMPLING_RATE:
        from scipy.signal import resample_poly

        g = math.gcd(SAMPLING_RATE, sr)
        x = resample_poly(x, SAMPLING_RATE // g, sr // g).astype(np.float32)
    return x


def output_samples(num_input_samples: int, sr: int) -> int:
    """Samples at 16 kHz for an input of ``num_input_samples`` at ``sr``: the same duration."""
    return int(round(num_input_samples * SAMPLING_RATE / int(sr)))


def fit_length(wav: Tensor, n: int) -> Tensor:
    """``wav`` (..., S) trimmed or zero-padded at the end to ``n`` samples."""
    s = wav.shape[-1]
    if s >= n:
        return wav[..., :n]
    return torch.nn.functional.pad(wav, (0, n - s))


def pad_batch(items: Sequence[Tensor], min_len: int = 1) -> tuple[Tensor, Tensor]:
    """Zero-padded (B, max(T, min_len), C) batch of (T_i, C) tensors and their lengths (B,)."""
    lens = torch.tensor([int(x.shape[0]) for x in items], dtype=torch.int64)
    t = max(int(lens.max()), min_len)
    out = items[0].new_zeros(len(items), t, items[0].shape[-1])
    for i, x in enumerate(items):
        out[i, : x.shape[0]] = x
    return out, lens


class SpeechAE:
    """Inference wrapper around :class:`speechae.models.SpeechAE` (the trained autoencoder):
    waveforms of any rate in, latents, log-mel and 16 kHz waveforms out.

    Build it with :meth:`from_exp_dir`.  ``vocoder``: an ``nn.Module`` mapping log-mel
    ``(B, T, 80)`` to a waveform ``(B, T*160)`` (:func:`speechae.models.vocoder.load_vocoder`)
    or None for Griffin-Lim (:func:`speechae.audio.griffin_lim`); :attr:`vocoder_name` says
    which is used.  All methods run under ``torch.inference_mode``.
    """

    sampling_rate = SAMPLING_RATE

    def __init__(self, model: nn.Module, device: str | torch.device = "cpu", vocoder: nn.Module | None = None,
                 vocoder_name: str | None = None, info: dict[str, Any] | None = None) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.vocoder = vocoder.to(self.device).eval() if vocoder is not None else None
        self.vocoder_name = vocoder_name or ("vocoder" if vocoder is not None else "griffin-lim")
        self.info = dict(info or {})
        self.num_mel_bins: int = int(model.num_mel_bins)
        self.frame_ratio: int = int(model.frame_ratio)
        self._extractor = None

    @classmethod
    def from_exp_dir(cls, exp_dir: str | Path, weights: str = "window", device: str = "auto",
                     vocoder: str | Path | nn.Module | None = None) -> "SpeechAE":
        """The model of experiment ``exp_dir`` with the weights ``speechae evaluate`` uses
        (``weights``: window / running / raw, see :func:`speechae.eval.pipeline.load_experiment_model`).

        ``device``: ``auto`` (CUDA when present), ``cpu`` or ``cuda[:i]``.  ``vocoder``: None
        (Griffin-Lim), ``"auto"`` (``<recipe>/exp/vocoder`` next to the experiment when it holds a
        checkpoint, else Griffin-Lim), a vocoder experiment directory, or a module.
        """
        from speechae.eval.encoders import resolve_device
        from speechae.eval.pipeline import load_experiment_model

        exp_dir = Path(exp_dir)
        if not exp_dir.is_dir():
            raise FileNotFoundError(f"{exp_dir}: no such experiment directory")
        dev = resolve_device(device)
        model, _, info = load_experiment_model(exp_dir, weights=weights)
        info["exp_dir"] = str(exp_dir)
        voc, name = resolve_vocoder(vocoder, exp_dir, dev)
        return cls(model, dev, voc, name, info)

    # ------------------------------------------------------------------ properties
    @property
    def frame_rate(self) -> float:
        """Latent frames per second."""
        return float(self.model.latent_frame_rate)

    @property
    def latent_dim(self) -> int:
        """Channels of z."""
        from speechae.export import latent_dim_of

        return latent_dim_of(self.model)

    # ------------------------------------------------------------------ features
    def features(self, wav: WavLike, sr: int, name: str = "waveform") -> Tensor:
        """Stage-2 log-mel ``(T, num_mel_bins)`` (CPU float32) of a waveform at any rate."""
        if self._extractor is None:
            from speechae.data.features import make_extractor

            self._extractor = make_extractor(self.num_mel_bins)
        x = to_mono_16k(wav, sr, name)
        feats = np.asarray(self._extractor.extract(x, SAMPLING_RATE), dtype=np.float32)
        if feats.shape[0] == 0:
            raise ValueError(f"{name}: too short for one feature frame ({x.size} samples at 16 kHz)")
        return torch.from_numpy(feats)

    # ------------------------------------------------------------------ encode
    @torch.inference_mode()
    def encode_features(self, feats: Sequence[Tensor]) -> list[Tensor]:
        """Latents ``(T_z, D)`` (CPU) of log-mel ``(T_i, F)`` tensors encoded as one padded batch
        (the gaussian bottleneck's mean; padding does not change valid frames)."""
        if not feats:
            return []
        x, lens = pad_batch([f.float() for f in feats], MIN_FRAMES)
        out = self.model.encode(x.to(self.device), lens.to(self.device))
        return [out.z[i, : int(n)].float().cpu() for i, n in enumerate(out.z_lengths)]

    def encode(self, wav: WavLike, sr: int) -> Tensor:
        """Latent ``(T_z, D)`` of one mono (or channel-0) waveform at sample rate ``sr``;
        ``T_z = ceil(T / frame_ratio)`` for ``T`` feature frames."""
        return self.encode_features([self.features(wav, sr)])[0]

    def encode_batch(self, wavs: Sequence[WavLike], srs: int | Sequence[int]) -> list[Tensor]:
        """Latents of several waveforms encoded as one padded batch (equal to :meth:`encode` of
        each, up to float rounding); ``srs``: one rate for all or one per waveform."""
        rates = [int(srs)] * len(wavs) if isinstance(srs, (int, np.integer)) else [int(r) for r in srs]
        if len(rates) != len(wavs):
            raise ValueError(f"{len(wavs)} waveforms but {len(rates)} sample rates")
        return self.encode_features([self.features(w, r, f"waveform {i}") for i, (w, r) in enumerate(zip(wavs, rates))])

    # ------------------------------------------------------------------ decode
    def _check_latent(self, z: Tensor | np.ndarray, name: str = "z") -> Tensor:
        z = torch.as_tensor(np.asarray(z) if not isinstance(z, Tensor) else z)
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"{name}: expected a latent of shape (T_z, {self.latent_dim}), got {tuple(z.shape)}")
        if z.shape[0] == 0:
            raise ValueError(f"{name}: empty latent (0 frames)")
        if not torch.isfinite(z).all():
            raise ValueError(f"{name}: the latent holds NaN or Inf values")
        return z.float()

    @torch.inference_mode()
    def decode_batch(self, zs: Sequence[Tensor | np.ndarray], num_frames: Sequence[int] | None = None) -> list[Tensor]:
        """Log-mel ``(T_i, F)`` (CPU) of latents ``(T_z_i, D)`` decoded as one batch;
        ``num_frames``: output frames of each (default ``T_z * frame_ratio``; at most that)."""
        zs = [self._check_latent(z, f"latent {i}") for i, z in enumerate(zs)]
        if not zs:
            return []
        frames = [z.shape[0] * self.frame_ratio for z in zs] if num_frames is None else [int(n) for n in num_frames]
        for i, (z, n) in enumerate(zip(zs, frames)):
            if not 0 < n <= z.shape[0] * self.frame_ratio:
                raise ValueError(f"latent {i}: num_frames {n} not in [1, {z.shape[0] * self.frame_ratio}] "
                                 f"({z.shape[0]} latent frames x {self.frame_ratio})")
        z, z_lens = pad_batch(zs)
        lens = torch.tensor(frames, dtype=torch.int64)
        mel = self.model.decoder(z.to(self.device), z_lens.to(self.device), lens.to(self.device), int(lens.max()))
        return [mel[i, :n].float().cpu() for i, n in enumerate(frames)]

    def decode(self, z: Tensor | np.ndarray, num_frames: int | None = None) -> Tensor:
        """Log-mel ``(num_frames, F)`` of one latent ``(T_z, D)`` (default ``T_z * frame_ratio`` frames)."""
        return self.decode_batch([z], None if num_frames is None else [num_frames])[0]

    # ------------------------------------------------------------------ waveform
    @torch.inference_mode()
    def to_wav(self, fbank: Tensor) -> Tensor:
        """16 kHz waveform ``(T * 160,)`` (CPU) of log-mel ``(T, F)``, or ``(B, T * 160)`` of
        ``(B, T, F)``, with the vocoder when one is loaded, else Griffin-Lim."""
        squeeze = fbank.dim() == 2
        x = (fbank.unsqueeze(0) if squeeze else fbank).float()
        if self.vocoder is not None:
            wav = self.vocoder(x.to(self.device))
        else:
            from speechae.audio import griffin_lim

            wav = griffin_lim(x.to(self.device))
        wav = wav.float().cpu()
        return wav[0] if squeeze else wav

    def resynth(self, wav: WavLike, sr: int) -> tuple[Tensor, int]:
        """(reconstructed 16 kHz waveform, 16000): encode, decode to the input's number of
        feature frames, vocode, and trim or pad to ``round(len * 16000 / sr)`` samples."""
        n_in = int(wav.shape[-1]) if isinstance(wav, Tensor) else int(np.asarray(wav).shape[-1])
        feats = self.features(wav, sr)
        z = self.encode_features([feats])[0]
        mel = self.decode(z, num_frames=feats.shape[0])
        return fit_length(self.to_wav(mel), output_samples(n_in, sr)), SAMPLING_RATE


def resolve_vocoder(vocoder: str | Path | nn.Module | None, exp_dir: Path | None,
                    device: torch.device) -> tuple[nn.Module | None, str]:
    """(vocoder module or None, name) for the ``vocoder`` argument of :meth:`SpeechAE.from_exp_dir`."""
    if vocoder is None or (isinstance(vocoder, str) and vocoder in ("none", "griffin-lim")):
        return None, "griffin-lim"
    if isinstance(vocoder, nn.Module):
        return vocoder.to(device).eval(), type(vocoder).__name__
    from speechae.models.vocoder import load_vocoder

    if isinstance(vocoder, str) and vocoder == "auto":
        found = default_vocoder_dir(exp_dir) if exp_dir is not None else None
        if found is None:
            log.info("no trained vocoder next to %s (looked for %s): using Griffin-Lim", exp_dir,
                     None if exp_dir is None else Path(exp_dir).resolve().parent / "vocoder")
            return None, "griffin-lim"
        vocoder = found
    path = Path(vocoder)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such vocoder experiment")
    return load_vocoder(path, device=device), f"vocoder:{path}"


def default_vocoder_dir(exp_dir: str | Path) -> Path | None:
    """``<recipe>/exp/vocoder`` for an experiment ``<recipe>/exp/<run>`` when it holds a
    checkpoint, else None."""
    cand = Path(exp_dir).resolve().parent / "vocoder"
    ckpts = cand / "checkpoints"
    if (ckpts.is_dir() and any(ckpts.glob("ckpt-*.pt"))) or any(cand.glob("ckpt-*.pt")):
        return cand
    return None


# ---------------------------------------------------------------------------------------------
# Files in, files out (the library side of ``speechae encode / decode / resynth``)
# ---------------------------------------------------------------------------------------------

def _is_manifest(path: Path) -> bool:
    return path.is_file() and any(path.name.endswith(s) for s in (".jsonl", ".jsonl.gz", ".json", ".json.gz"))


def collect_inputs(inputs: Sequence[str | Path]) -> list[Utterance]:
    """The utterances named by ``inputs``: audio files (.wav, .flac, or anything soundfile
    reads), directories (every ``*.wav`` / ``*.flac`` below, sorted) and Lhotse cut manifests
    (a multi-channel cut gives its channel 0).  Ids are file stems or cut ids; a repeated id is
    an error naming both sources."""
    utts: list[Utterance] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES)
            if not files:
                raise ValueError(f"{p}: no .wav or .flac files in this directory")
            utts += [Utterance(f.stem, str(f), path=f) for f in files]
        elif _is_manifest(p):
            from lhotse import load_manifest

            from speechae.data.features import channel_zero

            try:
                cuts = load_manifest(p)
                cut_list = [channel_zero(c) for c in cuts]
            except Exception as e:
                raise ValueError(f"{p}: not a readable Lhotse cut manifest ({str(e).strip()[:200]})") from e
            utts += [Utterance(c.id, f"{p}:{c.id}", cut=c) for c in cut_list]
        elif p.is_file():
            utts.append(Utterance(p.stem, str(p), path=p))
        else:
            raise FileNotFoundError(f"{p}: no such file or directory")
    seen: dict[str, str] = {}
    for u in utts:
        if u.uid in seen:
            raise ValueError(f"two inputs have the id {u.uid!r}: {seen[u.uid]} and {u.source}; rename one")
        seen[u.uid] = u.source
    if not utts:
        raise ValueError("no inputs")
    return utts


def _batches(utts: Sequence[Utterance], batch_seconds: float) -> list[list[Utterance]]:
    """Utterances sorted by duration and grouped so that a padded batch holds at most
    ``batch_seconds`` of audio (one utterance per batch at least)."""
    order = sorted(utts, key=lambda u: u.duration)
    out: list[list[Utterance]] = []
    cur: list[Utterance] = []
    for u in order:
        if cur and (len(cur) + 1) * max(u.duration, 1e-3) > batch_seconds:
            out.append(cur)
            cur = []
        cur.append(u)
    if cur:
        out.append(cur)
    return out


def encode_files(ae: SpeechAE, inputs: Sequence[str | Path], out_dir: str | Path, fmt: str = "npy",
                 batch_seconds: float = 120.0, storage: str = "numpy_files", progress: bool = True) -> Path:
    """Encode every utterance of ``inputs`` (:func:`collect_inputs`) in padded batches and write
    the latents to ``out_dir``; returns the index written last (atomically).

    ``npy``: ``<id>.npy`` float32 ``(T_z, D)`` per utterance and ``index.tsv`` (id, file, latent
    frames, feature frames, samples at 16 kHz, latent frame rate, source).  ``lhotse``:
    ``latents/`` written by a Lhotse ``storage`` writer (``numpy_files``: lossless;
    ``lilcom_chunky``: lossy, small) and ``cuts.jsonl.gz`` whose cuts carry a ``latents``
    temporal array with ``frame_shift = 1 / latent rate``: ``cut.latents.load()`` gives every
    latent frame, ``cut.load_latents()`` Lhotse's count for the cut's duration (a last partial
    frame dropped, as for features).
    """
    from tqdm import tqdm

    from speechae.utils.io import atomic_path

    if fmt not in ("npy", "lhotse"):
        raise ValueError(f"unknown latent format {fmt!r}; choose npy or lhotse")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    utts = collect_inputs(inputs)
    rows: list[str] = []
    cuts: list[Any] = []
    if fmt == "lhotse":
        from lhotse.features.io import get_writer

        storage_ctx: Any = get_writer(storage)(str(out_dir / "latents"))
    else:
        storage_ctx = contextlib.nullcontext()
    with storage_ctx as writer, tqdm(total=len(utts), desc="encode", unit="utt",
                                     disable=None if progress else True) as bar:
        for batch in _batches(utts, batch_seconds):
            loaded = [u.load() for u in batch]
            feats = [ae.features(w, sr, u.source) for u, (w, sr) in zip(batch, loaded)]
            zs = ae.encode_features(feats)
            for u, (w, sr), f, z in zip(batch, loaded, feats, zs):
                n16 = output_samples(np.asarray(w).shape[-1], sr)
                arr = z.numpy().astype(np.float32)
                if fmt == "npy":
                    with atomic_path(out_dir / f"{u.uid}.npy") as tmp:
                        np.save(tmp, arr)
                    rows.append(f"{u.uid}\t{u.uid}.npy\t{arr.shape[0]}\t{f.shape[0]}\t{n16}\t{ae.frame_rate:g}\t{u.source}")
                else:
                    cuts.append(_latent_cut(u, arr, writer, ae.frame_rate))
            bar.update(len(batch))
    if fmt == "npy":
        index = out_dir / "index.tsv"
        header = "id\tfile\tlatent_frames\tfeature_frames\tsamples_16k\tlatent_rate\tsource\n"
        with atomic_path(index) as tmp:
            tmp.write_text(header + "".join(r + "\n" for r in rows), encoding="utf-8")
        return index
    from lhotse import CutSet

    index = out_dir / "cuts.jsonl.gz"
    with atomic_path(index) as tmp:
        CutSet.from_cuts(cuts).to_file(tmp)
    return index


def _latent_cut(u: Utterance, z: np.ndarray, writer: Any, frame_rate: float) -> Any:
    """The utterance's cut (a cut input's own; a file's whole-recording cut, channel 0) with
    ``latents`` attached (stored by ``writer``)."""
    from lhotse import Recording

    from speechae.data.features import channel_zero

    if u.cut is not None:
        cut = u.cut
    else:
        try:
            cut = channel_zero(Recording.from_file(str(u.path), recording_id=u.uid).to_cut())
        except Exception as e:
            raise ValueError(f"{u.source}: cannot describe the recording ({e})") from e
    cut.latents = writer.store_array(u.uid, z, frame_shift=1.0 / frame_rate, temporal_dim=0, start=cut.start)
    return cut


def read_latent_index(directory: Path) -> dict[str, dict[str, str]]:
    """Rows of ``directory/index.tsv`` by file name ({} when there is none)."""
    index = directory / "index.tsv"
    if not index.is_file():
        return {}
    lines = index.read_text(encoding="utf-8").splitlines()
    if not lines:
        return {}
    head = lines[0].split("\t")
    rows = [dict(zip(head, line.split("\t"))) for line in lines[1:] if line.strip()]
    return {r.get("file", ""): r for r in rows}


def load_latent(path: str | Path, latent_dim: int) -> np.ndarray:
    """A ``(T_z, latent_dim)`` float32 latent from a ``.npy`` file; anything else is a
    ValueError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such latent file")
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as e:
        raise ValueError(f"{path}: not a .npy latent array ({str(e).strip()[:200]})") from e
    if z.ndim != 2 or z.shape[1] != latent_dim or z.shape[0] == 0 or not np.issubdtype(z.dtype, np.floating):
        raise ValueError(f"{path}: expected a float latent (T_z, {latent_dim}), got {z.dtype} {z.shape}")
    if not np.isfinite(z).all():
        raise ValueError(f"{path}: the latent holds NaN or Inf values")
    return z.astype(np.float32)


def write_wav(path: str | Path, wav: Tensor | np.ndarray, sr: int = SAMPLING_RATE) -> Path:
    """Write a mono waveform as 16-bit PCM WAV, atomically (clipped to [-1, 1])."""
    import soundfile as sf

    from speechae.utils.io import atomic_path

    x = wav.numpy() if isinstance(wav, Tensor) else np.asarray(wav)
    path = Path(path)
    with atomic_path(path) as tmp:
        sf.write(str(tmp), np.clip(x, -1.0, 1.0), sr, subtype="PCM_16", format="WAV")
    return path


def decode_files(ae: SpeechAE, latents: Sequence[str | Path], out_dir: str | Path, progress: bool = True) -> list[Path]:
    """``<stem>.wav`` (16 kHz) in ``out_dir`` for each ``.npy`` latent of ``latents`` (files or
    directories).  When the latent's directory has the ``index.tsv`` of :func:`encode_files`,
    the original number of frames and samples is restored; else ``T_z * frame_ratio`` frames."""
    from tqdm import tqdm

    files: list[Path] = []
    for item in latents:
        p = Path(item)
        if p.is_dir():
            found = sorted(p.glob("*.npy"))
            if not found:
                raise ValueError(f"{p}: no .npy latents in this directory")
            files += found
        elif p.exists():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such latent file or directory")
    out_dir = Path(out_dir)
    out: list[Path] = []
    indexes: dict[Path, dict[str, dict[str, str]]] = {}
    for f in tqdm(files, desc="decode", unit="utt", disable=None if progress else True):
        z = load_latent(f, ae.latent_dim)
        row = indexes.setdefault(f.parent, read_latent_index(f.parent)).get(f.name)
        frames = int(row["feature_frames"]) if row else None
        if frames is not None and frames > z.shape[0] * ae.frame_ratio:
            raise ValueError(f"{f}: index.tsv says {frames} frames, more than its {z.shape[0]} latent frames allow")
        wav = ae.to_wav(ae.decode(z, num_frames=frames))
        if row:
            wav = fit_length(wav, int(row["samples_16k"]))
        out.append(write_wav(out_dir / f"{f.stem}.wav", wav))
    return out


def resynth_file(ae: SpeechAE, src: str | Path, dst: str | Path) -> tuple[float, float]:
    """Resynthesise audio file ``src`` into 16 kHz WAV ``dst``; returns (input, output) seconds."""
    wav, sr = read_audio(src)
    out, sr_out = ae.resynth(wav, sr)
    write_wav(dst, out, sr_out)
    return wav.shape[-1] / sr, out.shape[-1] / sr_out
