"""A tiny end-to-end dataset (stages 0-3 in seconds) shared by the tests and quick experiments."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from speechae.data.features import compute_fbank
from speechae.data.manifests import SPLITS, prepare_synth_manifests
from speechae.data.synth import synthesize_corpus
from speechae.data.targets import prepare_targets


@dataclass
class TinyDataset:
    """Paths of a dataset built by :func:`build_tiny_dataset`."""

    root: Path
    corpus: Path
    manifests: Path
    fbank: Path
    lang: Path
    targets: Path
    prefix: str = "mini"

    def cuts(self, split: str) -> Path:
        """Stage-3 cuts (features + units) of ``split``."""
        return self.targets / f"{self.prefix}_cuts_{split}.jsonl.gz"


def build_tiny_dataset(root: str | Path, num_speakers: int = 6, utts_per_speaker: int = 4,
                       num_clusters: int = 8, vocab_size: int = 64, seed: int = 0) -> TinyDataset:
    """Synthesize, prepare manifests, fbank and targets under ``root`` (single process)."""
    root = Path(root)
    ds = TinyDataset(root, root / "corpus", root / "manifests", root / "fbank", root / "lang", root / "targets")
    synthesize_corpus(ds.corpus, num_speakers=num_speakers, utts_per_speaker=utts_per_speaker, num_jobs=1, seed=seed)
    prepare_synth_manifests(ds.corpus, ds.manifests, ds.prefix, num_dev_speakers=1, num_test_speakers=1)
    for split in SPLITS:
        compute_fbank(ds.manifests, ds.fbank, ds.prefix, split, num_jobs=1)
    prepare_targets(ds.fbank, ds.lang, ds.targets, ds.prefix, vocab_size=vocab_size, num_clusters=num_clusters,
                    seed=seed)
    return ds
