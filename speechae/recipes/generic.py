"""A corpus described by one TSV: the input format of recipes made by ``tools/new_recipe.sh``.

``utterances.tsv`` (UTF-8, one utterance per line, ``#`` lines are comments)::

    <utt_id> \\t <speaker> \\t <audio path> \\t <transcript> [\\t <split>]

Audio paths are absolute or relative to the TSV's folder; any format libsndfile reads (WAV,
FLAC, MP3, OGG), any sample rate (resampled to 16 kHz).  The optional fifth column names the
split (``train``/``dev``/``test``...); without it, speakers are split by
:func:`speechae.recipes.common.speaker_split`.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

from lhotse import Recording, SupervisionSegment

from speechae.data.validate import Checker, OnError
from speechae.recipes.common import Pairs, fail, finish_manifests, speaker_split, tsv_rows

NORMALIZERS = ("none", "bengali", "lower")


def get_normalizer(name: str) -> Callable[[str], str] | None:
    """Transcript normaliser by name: ``none``, ``lower`` (case-fold + collapse spaces), ``bengali``."""
    if name == "none":
        return None
    if name == "lower":
        return lambda t: " ".join(t.lower().split())
    if name == "bengali":
        from speechae.text.bengali import normalize_bengali

        return functools.partial(normalize_bengali, digits="keep")
    raise ValueError(f"unknown normaliser {name!r}; choose from {NORMALIZERS}")


def read_tsv_corpus(tsv: str | Path, checker: Checker, language: str | None = None, dev_fraction: float = 0.1,
                    test_fraction: float = 0.1) -> Pairs:
    """Pairs per split from ``utterances.tsv`` (see the module docstring)."""
    tsv = Path(tsv)
    if not tsv.is_file():
        raise FileNotFoundError(f"{tsv}: missing; stage 0 (local/prepare.sh) must write it")
    rows = []
    for where, _line, fields in tsv_rows(tsv, checker, comments=True):
        if len(fields) not in (4, 5) or not all(x.strip() for x in fields[:3]):
            checker.ok(where, fail, f"{where}: malformed line, expected 'utt<TAB>speaker<TAB>audio<TAB>text[<TAB>split]'")
            continue
        utt, spk, audio = (x.strip() for x in fields[:3])
        path = Path(audio) if Path(audio).is_absolute() else tsv.parent / audio
        if not path.is_file():
            checker.ok(utt, fail, f"{path}: audio file is missing (listed at {where})")
            continue
        rows.append((utt, spk, path, fields[3], fields[4].strip() if len(fields) == 5 else None))
    if not rows:
        raise ValueError(f"{tsv}: no usable lines")
    split_of = speaker_split([r[1] for r in rows if r[4] is None], dev_fraction, test_fraction) \
        if any(r[4] is None for r in rows) else {}
    pairs: Pairs = {}
    for utt, spk, path, text, split in rows:
        try:
            rec = Recording.from_file(path, recording_id=utt)
        except Exception as e:  # unreadable header
            checker.ok(utt, fail, f"{path}: cannot read audio ({e})")
            continue
        sup = SupervisionSegment(id=utt, recording_id=utt, start=0.0, duration=rec.duration, channel=0, text=text,
                                 speaker=spk, language=language)
        pairs.setdefault(split or split_of[spk], []).append((rec, sup))
    return pairs


def prepare_tsv_corpus(tsv: str | Path, out_dir: str | Path, prefix: str, on_error: OnError = "fail",
                       normalize: str = "none", language: str | None = None, num_jobs: int = 1,
                       dev_fraction: float = 0.1, test_fraction: float = 0.1) -> dict[str, int]:
    """Stage 1 of a forked recipe; returns utterances per split."""
    checker = Checker(on_error)
    pairs = read_tsv_corpus(tsv, checker, language, dev_fraction, test_fraction)
    return finish_manifests(pairs, out_dir, prefix, checker, normalize=get_normalizer(normalize), num_jobs=num_jobs)
