"""The Bengali recipe's corpora, alone or combined: OpenSLR 53, Common Voice bn, Bengali.AI Speech.

Stage 0 (:func:`download_bengali`) fetches OpenSLR 53 and locates/extracts the two manual
downloads; stage 1 (:func:`prepare_bengali`) reads each corpus, prefixes ids with the corpus
tag when several are combined (``slr53-``, ``cv-``, ``bai-``: ids and speakers stay unique),
normalises transcripts with :func:`speechae.text.bengali.normalize_bengali`, and writes the
usual ``<prefix>_{recordings,supervisions}_{train,dev,test}.jsonl.gz``.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from typing import TYPE_CHECKING

from speechae.text.bengali import DigitMode, normalize_bengali

if TYPE_CHECKING:  # lhotse loads lazily: stage 0's offline failure must be instant
    from speechae.data.validate import Checker, OnError
    from speechae.recipes.common import Pairs

CORPORA = ("slr53", "commonvoice", "bengaliai")
TAGS = {"slr53": "slr53", "commonvoice": "cv", "bengaliai": "bai"}


def parse_corpora(corpora: str) -> list[str]:
    """``"slr53,commonvoice"`` -> validated list."""
    names = [c.strip() for c in corpora.split(",") if c.strip()]
    bad = [c for c in names if c not in CORPORA]
    if bad or not names:
        raise ValueError(f"unknown corpus/corpora {bad or corpora!r}; choose from {', '.join(CORPORA)}")
    return names


def corpus_location(name: str, dl_dir: str | Path) -> Path:
    """Where corpus ``name`` lives (extracting a manual-download archive found in ``dl_dir``)."""
    from speechae.recipes import bengaliai, commonvoice, openslr53

    dl_dir = Path(dl_dir)
    if name == "slr53":
        return dl_dir / openslr53.TOP
    if name == "commonvoice":
        return commonvoice.find_commonvoice(dl_dir, "bn")
    return bengaliai.find_bengaliai(dl_dir)


def download_bengali(dl_dir: str | Path, corpora: str = "slr53", slr53_parts: str = "all") -> dict[str, str]:
    """Stage 0: make every selected corpus available under ``dl_dir``; returns name -> location."""
    from speechae.recipes.openslr53 import download_openslr53

    out = {}
    for name in parse_corpora(corpora):
        loc = download_openslr53(dl_dir, slr53_parts) if name == "slr53" else corpus_location(name, dl_dir)
        out[name] = str(loc)
        logging.info("%s: %s", name, loc)
    return out


def read_corpus(name: str, dl_dir: str | Path, work_dir: str | Path, checker: Checker, num_jobs: int = 1,
                dev_fraction: float = 0.02, test_fraction: float = 0.02) -> Pairs:
    """Pairs per split of one corpus (ids not yet prefixed)."""
    from speechae.recipes import bengaliai, commonvoice, openslr53

    loc = corpus_location(name, dl_dir)
    if name == "slr53":
        return openslr53.read_openslr53(loc, checker, dev_fraction, test_fraction)
    if name == "commonvoice":
        return commonvoice.read_commonvoice(loc, Path(work_dir) / "cv_view", checker, "bn", num_jobs)
    return bengaliai.read_bengaliai(loc, Path(work_dir) / "bengaliai_view", checker, num_jobs)


def prepare_bengali(dl_dir: str | Path, out_dir: str | Path, corpora: str = "slr53", prefix: str = "bengali",
                    on_error: OnError = "fail", digits: DigitMode = "keep", num_jobs: int = 1,
                    sample_rate: int = 16000, dev_fraction: float = 0.02, test_fraction: float = 0.02) -> dict[str, int]:
    """Stage 1 for the selected corpora; returns utterances per split."""
    from lhotse.utils import fastcopy

    from speechae.data.validate import Checker
    from speechae.recipes.common import finish_manifests, prefix_ids

    names = parse_corpora(corpora)
    out_dir = Path(out_dir)
    checker = Checker(on_error)
    combined: Pairs = {"train": [], "dev": [], "test": []}
    for name in names:
        pairs = read_corpus(name, dl_dir, out_dir / "raw", checker, num_jobs, dev_fraction, test_fraction)
        for split, items in pairs.items():
            items = [(r, fastcopy(s, language="bn")) for r, s in items]
            if len(names) > 1:
                items = prefix_ids(items, TAGS[name])
            combined[split].extend(items)
            logging.info("%s %s: %d utterances", name, split, len(items))
    normalize = functools.partial(normalize_bengali, digits=digits)
    return finish_manifests(combined, out_dir, prefix, checker, normalize=normalize, sample_rate=sample_rate,
                            num_jobs=num_jobs)
