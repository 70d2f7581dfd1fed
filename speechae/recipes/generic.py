"""A corpus described by one TSV: the input format of recipes made by ``tools/new_recipe.sh``.

``utterances.tsv`` (UTF-8, one utterance per line, ``#`` lines are comments)::

    <utt_id> \\t <speaker> \\t <audio path> \\t <transcript> [\\t <split>]

Audio paths are absolute or relative to the TSV's folder; any format libsndfile reads (WAV,
FLAC, MP3, OGG); sample rates, channels and durations follow
:class:`speechae.data.validate.AudioPolicy`.  The optional fifth column names the
split (``train``/``dev``/``test``...); without it, speakers are split by
:func:`speechae.recipes.common.speaker_split`.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

from speechae.data.validate import AudioPolicy, Checker, OnError, current_policy
from speechae.recipes.common import Pairs, finish_manifests, tsv_rows

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
    """Pairs per split from ``utterances.tsv`` (see the module docstring); no audio is opened
    here.  Bad lines, unsafe ids, unknown speakers and repeated ids go through ``checker``."""
    from speechae.recipes.common import Row, row_ok, rows_to_pairs

    tsv = Path(tsv)
    if not tsv.is_file():
        raise FileNotFoundError(f"{tsv}: missing; stage 0 (local/prepare.sh) must write it")
    rows = []
    for where, line, fields in tsv_rows(tsv, checker, comments=True):
        utt = fields[0].strip()
        if len(fields) not in (4, 5) or not fields[2].strip():
            checker.reject(utt or where, where, f"malformed line: expected 'utt<TAB>speaker<TAB>audio<TAB>text"
                                                f"[<TAB>split]', found {len(fields)} field(s): {line[:80]!r}")
            continue
        spk, audio = fields[1].strip(), fields[2].strip()
        if not row_ok(checker, utt, spk, where, fields[3]):
            continue
        path = Path(audio) if Path(audio).is_absolute() else tsv.parent / audio
        split = fields[4].strip() if len(fields) == 5 else None
        rows.append(Row(utt, spk, fields[3], path, where, split or None))
    return rows_to_pairs(rows, checker, dev_fraction, test_fraction, language, tsv)


def prepare_tsv_corpus(tsv: str | Path, out_dir: str | Path, prefix: str, on_error: OnError = "fail",
                       normalize: str = "none", language: str | None = None, num_jobs: int = 1,
                       dev_fraction: float = 0.1, test_fraction: float = 0.1,
                       policy: AudioPolicy | None = None) -> dict[str, int]:
    """Stage 1 of a forked recipe; returns utterances per split.  ``policy``: see
    :class:`speechae.data.validate.AudioPolicy` (default: 16 kHz, 0.1-30 s)."""
    checker = Checker(on_error, policy=policy or current_policy())
    pairs = read_tsv_corpus(tsv, checker, language, dev_fraction, test_fraction)
    return finish_manifests(pairs, out_dir, prefix, checker, normalize=get_normalizer(normalize), num_jobs=num_jobs)
