"""Evaluation data and the frozen-feature extractors ("systems") that the metrics score.

:func:`load_utterances` turns a cut manifest into :class:`Utterance` records (log-mel, labels,
alignment) through the training datamodule, so evaluation sees exactly the training batch
contract.  Every system maps utterances to frame features through one interface,
:meth:`FeatureEncoder.encode` -> :class:`Encoded`:

* :class:`ModelEncoder`: a SpeechAE (trained, or randomly initialised as a baseline): latents
  (Gaussian mean), log-variances, reconstructions, optionally every encoder stack;
* :class:`FbankEncoder` / :class:`MFCCEncoder`: the input log-mel, and its first 13 DCT-II
  coefficients (Kaldi-style MFCC without liftering, computed from the same fbank with
  :func:`speechae.losses.prism.dct_matrix`);
* :class:`HFEncoder`: a Hugging Face wav2vec 2.0 / HuBERT / WavLM checkpoint from a local
  directory, run on the cuts' waveforms (16 kHz).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from lhotse import CutSet
from tqdm import tqdm

from speechae.data.datamodule import AEDataset, Labels
from speechae.losses.masking import lengths_to_mask
from speechae.losses.prism import dct_matrix


@dataclass
class Utterance:
    """One evaluation utterance: log-mel (T, F) at 100 Hz and its labels.

    ``phones`` (T,) frame-level phone ids (-1 = none) or None; ``phone_seq``/``tokens`` label
    id lists (tokens are sentencepiece ids + 1); ``alignment`` (symbol, start_s, dur_s) list."""

    cut_id: str
    log_mel: np.ndarray
    speaker: str = ""
    language: str = ""
    text: str = ""
    phones: np.ndarray | None = None
    phone_seq: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    alignment: list[tuple[str, float, float]] | None = None
    cut: Any = None


@dataclass
class Encoded:
    """Features of a list of utterances: ``feats[i]`` (T_i, D) at ``frame_rate`` Hz; optional
    ``logvar`` (Gaussian posterior), ``recon`` (T, F) log-mel reconstructions, and ``stacks``
    (name -> (frame_rate, per-utterance arrays)) for per-layer probing."""

    feats: list[np.ndarray]
    frame_rate: float
    logvar: list[np.ndarray] | None = None
    recon: list[np.ndarray] | None = None
    stacks: dict[str, tuple[float, list[np.ndarray]]] = field(default_factory=dict)


@dataclass
class Sample:
    """Which cuts of a split an evaluation uses: the selected cuts (sorted by id) and the
    split's and the sample's size, written to metrics.json (``data.<split>``)."""

    cuts: list[Any]
    num_utts_total: int
    hours_total: float
    max_utts: int | None = None
    max_hours: float | None = None

    @property
    def hours(self) -> float:
        """Audio hours of the selected cuts."""
        return sum(float(c.duration) for c in self.cuts) / 3600.0

    def summary(self) -> dict[str, Any]:
        """The sample's record for metrics.json."""
        return {"num_utts": len(self.cuts), "hours": round(self.hours, 4), "num_utts_total": self.num_utts_total,
                "hours_total": round(self.hours_total, 4), "max_utts": self.max_utts, "max_hours": self.max_hours,
                "capped": len(self.cuts) < self.num_utts_total}


def sample_cuts(cuts: Iterable[Any], max_utts: int | None = None, max_hours: float | None = None,
                seed: int = 0) -> Sample:
    """A reproducible random subset of ``cuts`` of at most ``max_utts`` utterances and
    ``max_hours`` of audio (None or <= 0: no cap), sorted by cut id.

    Two passes over ``cuts`` (which may be a lazy manifest): the first keeps only ids and
    durations, the second only the chosen cuts, so memory follows the sample, not the corpus.
    Under both caps every cut is kept; the utterance cap draws as before (``rng.choice``); the
    hour cap then walks a seeded permutation and keeps cuts while they fit (at least one)."""
    entries = sorted((c.id, float(c.duration)) for c in cuts)
    n = len(entries)
    keep = np.arange(n)
    rng = np.random.default_rng(seed)
    if max_utts is not None and max_utts > 0 and n > max_utts:
        keep = np.sort(rng.choice(n, max_utts, replace=False))
    total = sum(d for _, d in entries)
    if max_hours is not None and max_hours > 0 and sum(entries[i][1] for i in keep) > 3600.0 * max_hours:
        budget, chosen = 3600.0 * max_hours, []
        for i in rng.permutation(keep):
            if chosen and entries[i][1] > budget:
                continue
            chosen.append(int(i))
            budget -= entries[i][1]
        keep = np.sort(np.array(chosen))
    wanted = {entries[i][0] for i in keep}
    picked = sorted((c for c in cuts if c.id in wanted), key=lambda c: c.id)
    return Sample(picked, n, total / 3600.0, max_utts, max_hours)


def load_utterances(cuts: Iterable[Any], labels: Labels, max_utts: int | None = None, seed: int = 0,
                    chunk: int = 32, desc: str = "load", max_hours: float | None = None) -> list[Utterance]:
    """Utterances of ``cuts`` (a reproducible random subset within ``max_utts`` /
    ``max_hours`` when given: :func:`sample_cuts`), sorted by cut id; labels come from the
    datamodule's batch dict."""
    cut_list = cuts.cuts if isinstance(cuts, Sample) else sample_cuts(cuts, max_utts, max_hours, seed).cuts
    ds = AEDataset(labels)
    by_id = {c.id: c for c in cut_list}
    out: dict[str, Utterance] = {}
    for b in tqdm(range(0, len(cut_list), chunk), desc=desc, leave=False, disable=None):
        batch = ds[CutSet.from_cuts(cut_list[b: b + chunk])]
        for i, cid in enumerate(batch["cut_ids"]):
            out[cid] = _utterance(by_id[cid], batch, i)
    return [out[c.id] for c in cut_list]


def _utterance(cut: Any, batch: dict[str, Any], i: int) -> Utterance:
    n = int(batch["feature_lens"][i])
    sup = cut.supervisions[0] if cut.supervisions else None
    u = Utterance(cut.id, batch["features"][i, :n].numpy().copy(), cut=cut)
    if sup is not None:
        u.speaker, u.language, u.text = sup.speaker or "", sup.language or "", sup.text or ""
        if sup.alignment and "phone" in sup.alignment:
            u.alignment = [(a.symbol, sup.start + a.start, a.duration) for a in sup.alignment["phone"]]
    if "phones" in batch:
        u.phones = batch["phones"][i, :n].numpy().copy()
        u.phone_seq = batch["phone_seq"][i, : int(batch["phone_seq_lens"][i])].tolist()
    if "tokens" in batch:
        u.tokens = batch["tokens"][i, : int(batch["token_lens"][i])].tolist()
    return u


def _batches(utts: Sequence[Utterance], max_frames: int) -> list[list[int]]:
    """Indices grouped into length-sorted batches of at most ``max_frames`` padded frames."""
    order = sorted(range(len(utts)), key=lambda i: -len(utts[i].log_mel))
    out, cur = [], []
    for i in order:
        longest = len(utts[cur[0]].log_mel) if cur else len(utts[i].log_mel)
        if cur and longest * (len(cur) + 1) > max_frames:
            out.append(cur)
            cur = []
        cur.append(i)
    if cur:
        out.append(cur)
    return out


def _unpad(x: torch.Tensor, lengths: torch.Tensor) -> list[np.ndarray]:
    """The valid frames of each sequence of a padded batch (B, T, C) as float32 arrays."""
    valid = x[lengths_to_mask(lengths.to(x.device), x.shape[1])].float().cpu()
    return [t.numpy() for t in torch.split(valid, lengths.cpu().tolist())]


class FeatureEncoder:
    """A system under evaluation: ``encode(utts, with_recon)`` -> :class:`Encoded`."""

    name: str = "features"
    is_autoencoder: bool = False

    def encode(self, utts: Sequence[Utterance], with_recon: bool = False) -> Encoded:  # noqa: D102
        raise NotImplementedError

    def resources(self) -> dict[str, float]:
        """Parameters / FLOPs of the system (empty when not applicable)."""
        return {}


class FbankEncoder(FeatureEncoder):
    """The input log-mel fbank itself (100 Hz)."""

    name = "fbank"

    def encode(self, utts: Sequence[Utterance], with_recon: bool = False) -> Encoded:
        return Encoded([u.log_mel.astype(np.float32) for u in utts], 100.0)

    def resources(self) -> dict[str, float]:
        # the fbank front end is shared by every system, so its cost counts as zero here
        return {"params": 0, "encoder_gflops_per_audio_s": 0.0, "gflops_per_audio_s": 0.0}


class MFCCEncoder(FeatureEncoder):
    """13 MFCCs (c0..c12) as the orthonormal DCT-II of the log-mel (100 Hz)."""

    name = "mfcc"

    def __init__(self, num_ceps: int = 13) -> None:
        self.num_ceps = num_ceps

    def encode(self, utts: Sequence[Utterance], with_recon: bool = False) -> Encoded:
        m = dct_matrix(utts[0].log_mel.shape[1])[: self.num_ceps].numpy().T
        return Encoded([u.log_mel.astype(np.float32) @ m for u in utts], 100.0)

    def resources(self) -> dict[str, float]:
        # the fbank front end is shared by every system, so its cost counts as zero here
        return {"params": 0, "encoder_gflops_per_audio_s": 0.0, "gflops_per_audio_s": 0.0}


def resolve_device(device: str = "auto") -> torch.device:
    """``auto``: the GPU when one is present, else the CPU; ``cpu`` / ``cuda[:i]`` as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device is visible")
    return torch.device(device)


@dataclass
class EncodedBatch:
    """One batch of :meth:`ModelEncoder.stream`: the utterance indices it covers and, for
    each, its features (and log-variances, reconstructions, stacks when asked), on the CPU."""

    idx: list[int]
    feats: list[np.ndarray]
    logvar: list[np.ndarray] | None = None
    recon: list[np.ndarray] | None = None
    stacks: dict[str, tuple[float, list[np.ndarray]]] = field(default_factory=dict)


class ModelEncoder(FeatureEncoder):
    """A SpeechAE in inference mode (no dropout, Gaussian mean, no decoder-input noise), run
    batch by batch on ``device`` (``auto``: the GPU when present); only each batch's padded
    input lives on the device, and its outputs come back to the CPU before the next one."""

    is_autoencoder = True

    def __init__(self, model: torch.nn.Module, name: str = "model", stacks: bool = False,
                 max_frames: int = 8000, device: str | torch.device = "cpu") -> None:
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.model = model.eval().to(self.device)
        self.name = name
        self.stacks = stacks
        self.max_frames = max_frames

    @torch.no_grad()
    def stream(self, utts: Sequence[Utterance], with_recon: bool = False) -> Iterator[EncodedBatch]:
        """Encode ``utts`` in length-sorted batches of at most ``max_frames`` padded frames,
        yielding each batch's CPU arrays as soon as it is done."""
        for idx in tqdm(_batches(utts, self.max_frames), desc=f"encode {self.name}", leave=False, disable=None):
            lens = torch.tensor([len(utts[i].log_mel) for i in idx])
            x = torch.zeros(len(idx), int(lens.max()), utts[idx[0]].log_mel.shape[1])
            for b, i in enumerate(idx):
                x[b, : lens[b]] = torch.from_numpy(utts[i].log_mel)
            x, dev_lens = x.to(self.device, non_blocking=True), lens.to(self.device)
            if with_recon:
                out = self.model(x, dev_lens)
                z, zlens, lv = (out.z_mean if out.z_mean is not None else out.z), out.z_lengths, out.z_logvar
            else:  # encoder only: the decoder is not needed for probes
                enc = self.model.encode(x, dev_lens)
                z, zlens, lv = enc.z, enc.z_lengths, None
            batch = EncodedBatch(idx, _unpad(z, zlens), _unpad(lv, zlens) if lv is not None else None,
                                 _unpad(out.recon, lens) if with_recon else None)
            if self.stacks:
                enc = self.model.encode(x, dev_lens, return_stacks=True)
                batch.stacks = {f"stack{k}": (float(st.frame_rate), _unpad(st.x, st.lengths))
                                for k, st in enumerate(enc.stacks or [])}
            yield batch

    def encode(self, utts: Sequence[Utterance], with_recon: bool = False) -> Encoded:
        n = len(utts)
        feats: list[Any] = [None] * n
        logvar: list[Any] = [None] * n
        recon: list[Any] = [None] * n
        stacks: dict[str, tuple[float, list[Any]]] = {}
        for batch in self.stream(utts, with_recon):
            for k, i in enumerate(batch.idx):
                feats[i] = batch.feats[k]
                if batch.logvar is not None:
                    logvar[i] = batch.logvar[k]
                if batch.recon is not None:
                    recon[i] = batch.recon[k]
            for key, (rate, arrays) in batch.stacks.items():
                for k, i in enumerate(batch.idx):
                    stacks.setdefault(key, (rate, [None] * n))[1][i] = arrays[k]
        has_logvar = n > 0 and logvar[0] is not None
        return Encoded(feats, float(self.model.latent_frame_rate), logvar if has_logvar else None,
                       recon if with_recon else None, stacks)

    def resources(self) -> dict[str, float]:
        from speechae.eval.resources import model_resources

        # FLOPs are counted on CPU inputs: count them there, then put the model back
        try:
            return model_resources(self.model.cpu(), self.model.num_mel_bins)
        finally:
            self.model.to(self.device)


class HFEncoder(FeatureEncoder):
    """A local Hugging Face speech encoder (wav2vec 2.0, HuBERT, WavLM, ...) on waveforms.

    ``layer``: hidden-state index (0 = CNN/projection output, -1 = last layer).  Waveforms are
    resampled to the model's rate (16 kHz) and normalised by the checkpoint's feature extractor
    when it has one, else to zero mean / unit variance per utterance (what wav2vec 2.0 expects).
    """

    def __init__(self, path: str | Path, layer: int = -1, name: str | None = None,
                 device: str | torch.device = "cpu") -> None:
        from transformers import AutoModel

        self.path = Path(path)
        self.layer = layer
        self.name = name or f"hf_{self.path.name}"
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.model = AutoModel.from_pretrained(str(self.path)).eval().to(self.device)
        self.sampling_rate = 16000
        try:
            from transformers import AutoFeatureExtractor

            self.extractor = AutoFeatureExtractor.from_pretrained(str(self.path))
            self.sampling_rate = int(getattr(self.extractor, "sampling_rate", 16000))
        except (OSError, ValueError):
            self.extractor = None
        strides = getattr(self.model.config, "conv_stride", None) or [320]
        self.frame_rate = self.sampling_rate / float(np.prod(strides))

    def _waveform(self, utt: Utterance) -> np.ndarray:
        cut = utt.cut
        if cut.sampling_rate != self.sampling_rate:
            cut = cut.resample(self.sampling_rate)
        wav = cut.load_audio()[0].astype(np.float32)
        if self.extractor is not None:
            return self.extractor(wav, sampling_rate=self.sampling_rate, return_tensors="np").input_values[0]
        return (wav - wav.mean()) / (wav.std() + 1e-7)

    @torch.no_grad()
    def encode(self, utts: Sequence[Utterance], with_recon: bool = False) -> Encoded:
        feats = []
        for u in tqdm(utts, desc=f"encode {self.name}", leave=False, disable=None):
            wav = torch.from_numpy(np.asarray(self._waveform(u), dtype=np.float32))[None].to(self.device)
            out = self.model(wav, output_hidden_states=True)
            feats.append(out.hidden_states[self.layer][0].float().cpu().numpy())
        return Encoded(feats, self.frame_rate)

    def resources(self) -> dict[str, float]:
        from speechae.utils.modelstats import count_parameters, flops_per_second

        wav = torch.randn(1, self.sampling_rate * 2, device=self.device)
        gflops = flops_per_second(lambda: self.model(wav), 2.0) / 1e9
        return {"params": count_parameters(self.model), "encoder_gflops_per_audio_s": gflops,
                "gflops_per_audio_s": gflops}  # an encoder only: total = encoder
