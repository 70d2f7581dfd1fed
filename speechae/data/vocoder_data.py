"""Vocoder training batches: random fixed-length crops of audio and their exact features.

Each batch is a dict:

==================  ==================  =====================================================
key                 shape / type        meaning
==================  ==================  =====================================================
``audio``           float32 (B, S)      channel 0, ``S = segment_samples`` (a multiple of the
                                        hop); a cut shorter than S is zero-padded at the end
``features``        float32 (B, T, F)   :func:`speechae.audio.fbank_module` of ``audio``
                                        itself, ``T = S / hop``
``feature_lens``    int64 (B,)          ``T`` for every item
``cut_ids``         list[str]
==================  ==================  =====================================================

Crops start on a hop boundary of the cut, so the crop's frames are frames of the whole
utterance's features up to edge effects.  Offsets are drawn from a generator seeded by
``(seed, epoch, cut id)``: the same cut gets the same crop in the same epoch whatever the batch
composition, worker or resume point, and a run resumed from a sampler ``state_dict`` sees the
crops an uninterrupted run would.  The sampler (Lhotse's ``SimpleCutSampler``, resumable with
``state_dict`` / ``load_state_dict``) tags each cut it yields with its epoch, so the dataset
needs no shared state and works in DataLoader workers.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from lhotse import CutSet
from lhotse.cut import Cut
from lhotse.dataset import SimpleCutSampler
from torch.utils.data import DataLoader

from speechae.audio import HOP, fbank_module
from speechae.data.features import channel_zero

_EPOCH_ATTR = "vocoder_epoch"


@dataclass
class VocoderDataConfig:
    """The ``data:`` block of a vocoder experiment config.

    ``segment_seconds``: training crop (rounded down to whole hops); ``valid_segment_seconds``:
    dev crop (longer, for listening and a steadier metric); ``batch_size``: cuts per batch.
    """

    train_cuts: str = "data/targets/mini_cuts_train.jsonl.gz"
    dev_cuts: str = "data/targets/mini_cuts_dev.jsonl.gz"
    segment_seconds: float = 1.0
    valid_segment_seconds: float = 2.0
    batch_size: int = 8
    num_workers: int = 0
    shuffle: bool = True
    seed: int = 0
    sampling_rate: int = 16000
    num_mel_bins: int = 80

    @property
    def max_duration(self) -> float:
        """Seconds of audio per training batch (what the trainer's duration-normalised batch
        count reads; not a config key)."""
        return self.batch_size * self.segment_seconds


def segment_samples(seconds: float, sampling_rate: int = 16000, hop: int = HOP) -> int:
    """Crop length in samples: ``seconds`` rounded down to whole hops (at least one hop)."""
    return max(1, int(seconds * sampling_rate) // hop) * hop


def crop_offset(cut_id: str, num_samples: int, segment: int, seed: int, epoch: int, hop: int = HOP) -> int:
    """Start sample of the crop of ``cut_id``: uniform over hop-aligned starts that keep the crop
    inside the cut (0 when the cut is not longer than ``segment``); a pure function of
    ``(seed, epoch, cut_id)`` and the lengths."""
    starts = (num_samples - segment) // hop + 1
    if starts <= 1:
        return 0
    digest = hashlib.sha256(f"{seed}|{epoch}|{cut_id}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    return int(rng.integers(0, starts)) * hop


class VocoderCropDataset(torch.utils.data.Dataset):
    """Maps a CutSet (one sampler batch) to the batch dict of this module.

    Args:
        segment: crop length in samples (a multiple of ``hop``).
        seed: crop seed; the epoch comes from the cuts' sampler tag (0 when untagged).
        sampling_rate / num_mel_bins: audio rate (cuts are resampled to it) and features.
    """

    def __init__(self, segment: int, seed: int = 0, sampling_rate: int = 16000, num_mel_bins: int = 80) -> None:
        if segment % HOP:
            raise ValueError(f"segment {segment} is not a multiple of the hop {HOP}")
        self.segment, self.seed, self.sampling_rate = segment, seed, sampling_rate
        self.fbank = fbank_module(num_mel_bins, sampling_rate)

    def crop(self, cut: Cut) -> np.ndarray:
        """Channel 0 of ``cut``, cropped (or zero-padded) to ``segment`` samples."""
        epoch = int(getattr(cut, _EPOCH_ATTR, 0) or 0)
        mono = channel_zero(cut)
        if mono.sampling_rate != self.sampling_rate:
            mono = mono.resample(self.sampling_rate)
        audio = mono.load_audio()
        audio = audio[0] if audio.ndim == 2 else audio
        start = crop_offset(cut.id, len(audio), self.segment, self.seed, epoch)
        out = np.zeros(self.segment, dtype=np.float32)
        piece = audio[start:start + self.segment]
        out[: len(piece)] = piece
        return out

    def __getitem__(self, cuts: CutSet) -> dict[str, Any]:
        cuts = list(cuts)
        audio = torch.from_numpy(np.stack([self.crop(c) for c in cuts]))
        with torch.no_grad():
            feats = self.fbank(audio)
        lens = torch.full((len(cuts),), feats.shape[1], dtype=torch.int64)
        return {"audio": audio, "features": feats, "feature_lens": lens, "cut_ids": [c.id for c in cuts]}


def make_vocoder_sampler(cuts: CutSet, batch_size: int, shuffle: bool, seed: int = 0, world_size: int = 1,
                         rank: int = 0, drop_last: bool = False) -> SimpleCutSampler:
    """A resumable Lhotse sampler of ``batch_size`` cuts per batch that tags every cut it yields
    with the sampler's current epoch (read by :class:`VocoderCropDataset`)."""
    sampler = SimpleCutSampler(cuts, max_cuts=batch_size, shuffle=shuffle, drop_last=drop_last,
                               world_size=world_size, rank=rank, seed=seed)

    def tag(batch: CutSet) -> CutSet:
        for c in batch:
            setattr(c, _EPOCH_ATTR, sampler.epoch)
        return batch

    return sampler.map(tag)


def make_vocoder_dataloader(cuts: CutSet, cfg: VocoderDataConfig, train: bool, world_size: int = 1,
                            rank: int = 0) -> DataLoader:
    """Training (random crops of ``segment_seconds``, shuffled) or dev (crops of
    ``valid_segment_seconds``, fixed order) batches over ``cuts``."""
    import itertools

    seconds = cfg.segment_seconds if train else cfg.valid_segment_seconds
    # full batches only in training, unless the split cannot fill one batch per rank (a small corpus)
    enough = sum(1 for _ in itertools.islice(iter(cuts), cfg.batch_size * world_size)) >= cfg.batch_size * world_size
    sampler = make_vocoder_sampler(cuts, cfg.batch_size, shuffle=cfg.shuffle and train, seed=cfg.seed,
                                   world_size=world_size, rank=rank, drop_last=train and enough)
    dataset = VocoderCropDataset(segment_samples(seconds, cfg.sampling_rate), seed=cfg.seed,
                                 sampling_rate=cfg.sampling_rate, num_mel_bins=cfg.num_mel_bins)
    return DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=cfg.num_workers,
                      persistent_workers=False)
