"""Batches for training and evaluation, on Lhotse cuts.

Each batch is a dict (all tensors batch-first, padded; see also docs/CONTRACTS.md):

========================  =====================  ==========================================
key                       shape / type           meaning
========================  =====================  ==========================================
``features``              float32 (B, T, F)      log-mel fbank, zero-padded (SpecAugment-ed
                                                 when enabled)
``target_features``       float32 (B, T, F)      clean features; only when SpecAugment is on
``feature_lens``          int64 (B,)             valid frames per utterance
``cut_ids``               list[str]
``speaker``               int64 (B,)             speakers.txt index, -1 when unknown
``language``              int64 (B,)             languages.txt index, -1 when unknown
``phones``                int64 (B, T)           frame-level phone id, -1 on padding/silence
``phone_seq``             int64 (B, L)           phone ids in order (silences dropped), 0-pad
``phone_seq_lens``        int64 (B,)
``tokens``                int64 (B, U)           sentencepiece id + 1 (0 = CTC blank), 0-pad
``token_lens``            int64 (B,)
``units``                 int64 (B, T)           k-means id per frame, -1 on padding
``audio``                 float32 (B, S)         16 kHz channel-0 samples, zero-padded; only
                                                 with ``audio=True`` (waveform decoding)
``audio_lens``            int64 (B,)             valid samples
========================  =====================  ==========================================

A key is present only when the corpus has that information (``phones`` needs phone
alignments and ``phones.txt``; ``tokens`` a sentencepiece model; ``units`` stage 3's cuts).
"""

from __future__ import annotations

import itertools

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lhotse import CutSet, Fbank, FbankConfig, load_manifest
from lhotse.dataset import DynamicBucketingSampler, SpecAugment
from lhotse.dataset.collation import collate_features
from lhotse.dataset.input_strategies import OnTheFlyFeatures
from torch.utils.data import DataLoader

from speechae.data.targets import UNK, load_table


@dataclass
class DataConfig:
    """Data settings of an experiment (the ``data:`` block of a training config)."""

    train_cuts: str = "data/targets/mini_cuts_train.jsonl.gz"
    dev_cuts: str = "data/targets/mini_cuts_dev.jsonl.gz"
    lang_dir: str = "data/lang"
    max_duration: float = 60.0  # seconds of audio per batch (per rank)
    num_buckets: int = 10
    num_workers: int = 0
    on_the_fly_feats: bool = False
    spec_augment: bool = False
    shuffle: bool = True
    train_fraction: float = 1.0  # data-efficiency studies: keep this fraction of train cuts
    seed: int = 0


class Labels:
    """Label tables of a corpus (``lang_dir``): phones, speakers, languages, sentencepiece."""

    def __init__(self, lang_dir: str | Path | None) -> None:
        self.phones: dict[str, int] | None = None
        self.speakers: dict[str, int] = {}
        self.languages: dict[str, int] = {}
        self.sp = None
        if lang_dir is None:
            return
        lang_dir = Path(lang_dir)
        if (lang_dir / "phones.txt").is_file():
            self.phones = load_table(lang_dir / "phones.txt")
        if (lang_dir / "speakers.txt").is_file():
            self.speakers = load_table(lang_dir / "speakers.txt")
        if (lang_dir / "languages.txt").is_file():
            self.languages = load_table(lang_dir / "languages.txt")
        if (lang_dir / "bpe.model").is_file():
            import sentencepiece as spm

            self.sp = spm.SentencePieceProcessor(model_file=str(lang_dir / "bpe.model"))

    @property
    def vocab_size(self) -> int:
        """Token classes including the CTC blank (id 0)."""
        return self.sp.get_piece_size() + 1 if self.sp is not None else 0


def _pad(seqs: list[list[int]] | list[np.ndarray], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    lens = torch.tensor([len(s) for s in seqs], dtype=torch.int64)
    out = torch.full((len(seqs), max(int(lens.max()), 1)), value, dtype=torch.int64)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(np.asarray(s, dtype=np.int64))
    return out, lens


class AEDataset(torch.utils.data.Dataset):
    """Maps a CutSet (one sampler batch) to the batch dict documented in this module."""

    def __init__(self, labels: Labels, on_the_fly_feats: bool = False, spec_augment: bool = False,
                 num_mel_bins: int = 80, audio: bool = False) -> None:
        self.labels = labels
        self.audio = audio
        self.otf = OnTheFlyFeatures(Fbank(FbankConfig(num_mel_bins=num_mel_bins))) if on_the_fly_feats else None
        self.spec_augment = SpecAugment(time_warp_factor=0, num_frame_masks=2, features_mask_size=15,
                                        num_feature_masks=2, frames_mask_size=30) if spec_augment else None

    def __getitem__(self, cuts: CutSet) -> dict[str, Any]:
        cuts = cuts.sort_by_duration(ascending=False)
        if self.otf is not None:
            feats, lens = self.otf(cuts)
        else:
            feats, lens = collate_features(cuts)
        lens = lens.to(torch.int64)
        # Lhotse pads log-mel with log(1e-10); the contract is zero padding.
        feats = feats.masked_fill(torch.arange(feats.shape[1])[None, :, None] >= lens[:, None, None], 0.0)
        batch: dict[str, Any] = {"features": feats, "feature_lens": lens, "cut_ids": [c.id for c in cuts]}
        if self.audio:
            batch["audio"], batch["audio_lens"] = _collate_audio(cuts)
        if self.spec_augment is not None:
            batch["target_features"] = feats.clone()
            batch["features"] = self.spec_augment(feats)
        sups = [c.supervisions[0] if c.supervisions else None for c in cuts]
        lab = self.labels
        batch["speaker"] = torch.tensor([lab.speakers.get(s.speaker, -1) if s else -1 for s in sups])
        batch["language"] = torch.tensor([lab.languages.get(s.language, -1) if s else -1 for s in sups])
        T = feats.shape[1]
        if lab.phones is not None and all(s is not None and s.alignment and "phone" in s.alignment for s in sups):
            frames, seqs = [], []
            for cut, s, n in zip(cuts, sups, lens.tolist()):
                f, q = self._phone_targets(cut, s, n, T)
                frames.append(f)
                seqs.append(q)
            batch["phones"] = torch.stack(frames)
            batch["phone_seq"], batch["phone_seq_lens"] = _pad(seqs, 0)
        if lab.sp is not None and all(s is not None and s.text for s in sups):
            ids = [[t + 1 for t in lab.sp.encode(s.text)] for s in sups]
            batch["tokens"], batch["token_lens"] = _pad(ids, 0)
        if all(c.has_custom("units") for c in cuts):
            units = torch.full((len(cuts), T), -1, dtype=torch.int64)
            for i, (cut, n) in enumerate(zip(cuts, lens.tolist())):
                u = torch.as_tensor(cut.load_custom("units").astype(np.int64))[:n]
                units[i, : len(u)] = u
            batch["units"] = units
        return batch

    def _phone_targets(self, cut, sup, num_frames: int, T: int) -> tuple[torch.Tensor, list[int]]:  # noqa: ANN001
        unk = self.labels.phones[UNK]
        frames = torch.full((T,), -1, dtype=torch.int64)
        seq = []
        shift = cut.frame_shift or 0.01
        for item in sup.alignment["phone"]:
            pid = self.labels.phones.get(item.symbol, unk)
            seq.append(pid)
            start = int(round((sup.start + item.start) / shift))
            end = int(round((sup.start + item.start + item.duration) / shift))
            frames[max(start, 0): min(max(end, start + 1), num_frames)] = pid
        return frames, seq


def _collate_audio(cuts: CutSet, sampling_rate: int = 16000) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel-0 audio of ``cuts`` at ``sampling_rate`` (resampled when needed), zero-padded."""
    from speechae.data.features import channel_zero

    waves = []
    for cut in cuts:
        c = channel_zero(cut)
        c = c.resample(sampling_rate) if c.sampling_rate != sampling_rate else c
        a = np.asarray(c.load_audio(), dtype=np.float32)
        waves.append(torch.from_numpy(a[0] if a.ndim > 1 else a))
    lens = torch.tensor([len(w) for w in waves], dtype=torch.int64)
    out = torch.zeros(len(waves), int(lens.max()) if len(waves) else 0)
    for i, w in enumerate(waves):
        out[i, : len(w)] = w
    return out, lens


def load_cuts(path: str | Path) -> CutSet:
    """Load a cut manifest, or a Lhotse Shar directory (lazily), with a clear error when missing."""
    from speechae.data.shar import is_shar_dir, load_shar

    path = Path(path)
    if is_shar_dir(path):
        return load_shar(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: cut manifest missing (run the recipe's data stages 0-3)")
    return load_manifest(path)


def subset_fraction(cuts: CutSet, fraction: float, seed: int = 0) -> CutSet:
    """A reproducible random ``fraction`` of ``cuts`` (for data-efficiency curves)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"train_fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return cuts
    ids = sorted(cuts.ids)  # Shar: reads only the cut manifests, the filter below stays lazy
    lazy = cuts.is_lazy
    rng = np.random.default_rng(seed)
    keep = set(rng.choice(ids, max(1, round(fraction * len(ids))), replace=False).tolist())
    kept = cuts.filter(lambda c: c.id in keep)
    return kept if lazy else kept.to_eager()


def bucket_count(cuts: CutSet, num_buckets: int) -> int:
    """``num_buckets`` capped by the number of cuts; a lazy manifest is read only as far as
    ``num_buckets`` cuts."""
    if not cuts.is_lazy:
        return max(1, min(int(num_buckets), len(cuts)))
    return max(1, sum(1 for _ in itertools.islice(iter(cuts), int(num_buckets))))


def make_sampler(cuts: CutSet, max_duration: float, shuffle: bool, world_size: int = 1, rank: int = 0,
                 num_buckets: int = 10, seed: int = 0, drop_last: bool = False) -> DynamicBucketingSampler:
    """Duration-bucketed dynamic batches; each rank sees a disjoint share of every epoch.

    The bucket count is capped by the number of cuts (Lhotse refuses more buckets than cuts, so
    a small corpus or a 2-utterance dev split would otherwise fail at the first batch)."""
    return DynamicBucketingSampler(
        cuts, max_duration=max_duration, shuffle=shuffle, num_buckets=bucket_count(cuts, num_buckets),
        drop_last=drop_last,
        world_size=world_size, rank=rank, seed=seed,
    )


def make_dataloader(cuts: CutSet, labels: Labels, cfg: DataConfig, train: bool, world_size: int = 1,
                    rank: int = 0, audio: bool = False) -> DataLoader:
    """A DataLoader over ``cuts``: the sampler yields CutSets, the dataset turns them into batches
    (with ``audio``: also the waveforms)."""
    sampler = make_sampler(cuts, cfg.max_duration, shuffle=cfg.shuffle and train, world_size=world_size,
                           rank=rank, num_buckets=cfg.num_buckets, seed=cfg.seed, drop_last=False)
    dataset = AEDataset(labels, on_the_fly_feats=cfg.on_the_fly_feats, spec_augment=cfg.spec_augment and train,
                        audio=audio)
    return DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=cfg.num_workers,
                      persistent_workers=cfg.num_workers > 0)
