"""Stage 3: training targets.

Writes into ``lang_dir``:

* ``bpe.model`` / ``bpe.vocab``: a sentencepiece model on the training transcripts (CTC probes);
* ``phones.txt``: the phone inventory of the training alignments (``<blk>`` = 0, ``<unk>`` = 1);
* ``speakers.txt``, ``languages.txt``: label tables for the speaker and language probes;
* ``kmeans.pkl``: k-means on MFCC of the training set (HuBERT's first-iteration targets);

and into ``targets_dir``: ``<prefix>_cuts_<split>.jsonl.gz``, the stage-2 cuts with a ``units``
temporal array (one k-means id per fbank frame) attached.
"""

from __future__ import annotations

import logging
import pickle
import shutil
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch
from lhotse import CutSet, load_manifest
from lhotse.features.io import NumpyFilesWriter
from tqdm import tqdm

from speechae.utils.io import atomic_path, read_lines, write_lines

BLANK, UNK = "<blk>", "<unk>"


def train_sentencepiece(texts: list[str], out_prefix: str | Path, vocab_size: int = 256,
                        model_type: str = "unigram") -> Path:
    """Train sentencepiece on ``texts``; writes ``<out_prefix>.model`` atomically and returns it.

    ``hard_vocab_limit=False`` lets a tiny corpus settle on fewer pieces instead of failing.
    """
    out_prefix = Path(out_prefix)
    # Every character must get a piece (character_coverage=1.0): a small vocabulary on a
    # two-script corpus is raised to the character count rather than failing.
    num_chars = len(set("".join(texts).replace(" ", ""))) + 3
    if vocab_size < num_chars:
        logging.warning("sentencepiece: vocab_size %d < %d characters; using %d", vocab_size, num_chars, num_chars)
        vocab_size = num_chars
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = out_prefix.parent / f".{out_prefix.name}.tmp"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir()
    try:
        corpus = tmp_dir / "text.txt"
        corpus.write_text("\n".join(texts) + "\n", encoding="utf-8")
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=str(tmp_dir / "bpe"), vocab_size=vocab_size, model_type=model_type,
            character_coverage=1.0, hard_vocab_limit=False, normalization_rule_name="nmt_nfkc",
            bos_id=-1, eos_id=-1, unk_id=0, minloglevel=2, num_threads=1,
        )
        for ext in ("model", "vocab"):
            (tmp_dir / f"bpe.{ext}").replace(out_prefix.with_suffix(f".{ext}"))
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return out_prefix.with_suffix(".model")


def mfcc_from_fbank(fbank: np.ndarray, num_ceps: int = 13) -> np.ndarray:
    """MFCC + deltas + delta-deltas (T, 3*num_ceps) from log-mel fbank (T, F).

    MFCC is the DCT-II of the log-mel spectrum, so deriving it from the stored fbank keeps the
    units exactly frame-aligned with the features the model sees.
    """
    from speechae.losses.prism import dct_matrix  # the one DCT-II of the project

    basis = dct_matrix(fbank.shape[1], dtype=torch.float64).numpy()[:num_ceps]
    ceps = fbank.astype(np.float64) @ basis.T
    pad = np.pad(ceps, ((2, 2), (0, 0)), mode="edge")
    delta = (pad[3:-1] - pad[1:-3] + 2 * (pad[4:] - pad[:-4])) / 10.0
    padd = np.pad(delta, ((2, 2), (0, 0)), mode="edge")
    ddelta = (padd[3:-1] - padd[1:-3] + 2 * (padd[4:] - padd[:-4])) / 10.0
    feats = np.concatenate([ceps, delta, ddelta], axis=1)
    return feats.astype(np.float32)


def fit_kmeans(cuts: CutSet, num_clusters: int, max_frames: int = 200_000, seed: int = 0):  # noqa: ANN201
    """MiniBatchKMeans on per-utterance mean-normalised MFCC of (a random subset of) ``cuts``
    (the same k-means as the PNMI evaluation: :func:`speechae.utils.kmeans.fit_kmeans`)."""
    from speechae.utils.kmeans import fit_kmeans as kmeans

    feats = []
    for cut in tqdm(cuts, desc="mfcc (k-means fit)", unit="cut"):
        feats.append(_normalised_mfcc(cut))
    x = np.concatenate(feats)
    if len(x) < num_clusters:
        raise ValueError(f"{len(x)} frames cannot support {num_clusters} k-means clusters")
    return kmeans(x, num_clusters, seed=seed, max_frames=max_frames, batch_size=4096)


def _normalised_mfcc(cut) -> np.ndarray:  # noqa: ANN001
    m = mfcc_from_fbank(cut.load_features())
    return (m - m.mean(0)) / (m.std(0) + 1e-5)


def attach_units(cuts: CutSet, km, storage_dir: Path) -> CutSet:  # noqa: ANN001
    """Attach ``cut.units``: one k-means id per feature frame, as a Lhotse TemporalArray."""
    out = []
    with NumpyFilesWriter(storage_dir) as writer:
        for cut in tqdm(cuts, desc="k-means units", unit="cut"):
            units = km.predict(_normalised_mfcc(cut)).astype(np.int16)
            arr = writer.store_array(cut.id, units, frame_shift=cut.frame_shift, temporal_dim=0, start=cut.start)
            cut = cut.with_custom("units", arr)
            out.append(cut)
    return CutSet.from_cuts(out)


def prepare_targets(fbank_dir: str | Path, lang_dir: str | Path, targets_dir: str | Path, prefix: str,
                    splits: tuple[str, ...] = ("train", "dev", "test"), vocab_size: int = 256,
                    num_clusters: int = 50, seed: int = 0, model_type: str = "unigram",
                    kmeans_max_cuts: int = 0) -> dict:
    """Run all of stage 3; returns a summary (vocabulary size, phones, clusters).

    ``model_type``: sentencepiece ``unigram`` | ``bpe`` | ``char``.  ``kmeans_max_cuts`` > 0 fits
    k-means on that many randomly chosen training cuts (MFCC of all of a 960 h set would not fit
    in memory); units are still computed for every cut.
    """
    fbank_dir, lang_dir, targets_dir = Path(fbank_dir), Path(lang_dir), Path(targets_dir)
    torch.manual_seed(seed)
    cuts = {s: load_manifest(fbank_dir / f"{prefix}_cuts_{s}.jsonl.gz") for s in splits}
    train = cuts["train"]
    sups = [s for c in train for s in c.supervisions]
    sp_model = train_sentencepiece([s.text for s in sups], lang_dir / "bpe", vocab_size, model_type)
    phones = sorted({a.symbol for s in sups for a in (s.alignment or {}).get("phone", [])})
    write_lines(lang_dir / "phones.txt", [f"{p} {i}" for i, p in enumerate([BLANK, UNK] + phones)])
    all_sups = [s for cs in cuts.values() for c in cs for s in c.supervisions]
    write_lines(lang_dir / "speakers.txt", sorted({s.speaker for s in all_sups if s.speaker}))
    write_lines(lang_dir / "languages.txt", sorted({s.language for s in all_sups if s.language}))
    fit_cuts = train
    if kmeans_max_cuts and len(train) > kmeans_max_cuts:
        chosen = np.random.default_rng(seed).choice(sorted(train.ids), kmeans_max_cuts, replace=False)
        keep = set(chosen.tolist())
        fit_cuts = train.filter(lambda c: c.id in keep).to_eager()
    km = fit_kmeans(fit_cuts, num_clusters, seed=seed)
    with atomic_path(lang_dir / "kmeans.pkl") as tmp:
        tmp.write_bytes(pickle.dumps(km))
    for split, cs in cuts.items():
        storage = targets_dir / f"{prefix}_units_{split}"
        shutil.rmtree(storage, ignore_errors=True)
        with_units = attach_units(cs, km, storage)
        with atomic_path(targets_dir / f"{prefix}_cuts_{split}.jsonl.gz") as tmp:
            with_units.to_file(tmp)
    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    summary = {"vocab_size": sp.get_piece_size(), "num_phones": len(phones), "num_clusters": num_clusters}
    logging.info("targets: %s", summary)
    return summary


def load_table(path: str | Path) -> dict[str, int]:
    """Read ``symbol [id]`` lines (ids default to the line number)."""
    table = {}
    for i, line in enumerate(read_lines(path)):
        parts = line.split()
        table[parts[0]] = int(parts[1]) if len(parts) > 1 else i
    return table
