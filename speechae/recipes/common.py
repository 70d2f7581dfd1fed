"""Helpers shared by the real-corpus readers (stage 1).

Every corpus module turns its layout into ``{split: [(Recording, SupervisionSegment), ...]}``
("pairs") and calls :func:`speechae.data.manifests.finish_manifests` (re-exported here), which
applies the one validation policy of :mod:`speechae.data.validate` to every corpus.

Readers check what they can see in their listing before any audio is opened: line format,
UTF-8 (a byte-order mark on the first line is accepted), id safety, speaker, and ids unique
across the whole corpus *before* the split into train/dev/test.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from lhotse import SupervisionSegment
from lhotse.utils import fastcopy

from speechae.data.manifests import (Pair, Pairs, audio_path, finish_manifests, normalize_pairs,  # noqa: F401
                                     pending_recording, unique_ids)
from speechae.data.validate import BadInputError, Checker, check_id, check_speaker, check_text


def fail(message: str) -> None:
    """A check that always fails (for use with :meth:`Checker.ok`)."""
    raise BadInputError(message)


def text_lines(path: Path, checker: Checker) -> Iterator[tuple[str, int, str]]:
    """``(where, number, line)`` for each line of a UTF-8 text file (``where`` = ``file:line``,
    line endings removed).  A byte-order mark opening the file is dropped (``utf-8-sig``); a
    line that is not UTF-8 goes to ``checker``, naming its first field as the item."""
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            where = f"{path}:{i}"
            if i == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                first = raw.split(b"\t")[0].split(b",")[0].split()[:1]
                item = first[0].decode("utf-8", "backslashreplace") if first else where
                checker.reject(item, where, f"not valid UTF-8 ({e.reason} at byte {e.start})")
                continue
            yield where, i, line


def tsv_rows(tsv: Path, checker: Checker, comments: bool = False) -> Iterator[tuple[str, str, list[str]]]:
    """``(where, line, fields)`` for each non-empty line of a UTF-8 TSV (see :func:`text_lines`);
    ``comments`` skips ``#`` lines."""
    for where, _, line in text_lines(tsv, checker):
        if line.strip() and not (comments and line.startswith("#")):
            yield where, line, line.split("\t")


def prefix_ids(pairs: Iterable[Pair], tag: str) -> list[Pair]:
    """Make ids unique across combined corpora: ``<tag>-<id>`` for recording, supervision, speaker."""
    out = []
    for rec, sup in pairs:
        rid = f"{tag}-{rec.id}"
        out.append((fastcopy(rec, id=rid), fastcopy(
            sup, id=f"{tag}-{sup.id}", recording_id=rid, speaker=f"{tag}-{sup.speaker}" if sup.speaker else None)))
    return out


def speaker_split(speakers: Iterable[str], dev_fraction: float, test_fraction: float,
                  salt: str = "speechae") -> dict[str, str]:
    """Speaker -> split (train/dev/test), stable under corpus growth: speakers are ordered by a
    hash of their id and the first ``ceil(test_fraction * n)`` (at least 1) go to test, the next
    ``ceil(dev_fraction * n)`` (at least 1) to dev."""
    spk = sorted(set(speakers), key=lambda s: hashlib.md5(f"{salt}:{s}".encode()).hexdigest())
    n_test = max(1, math.ceil(test_fraction * len(spk)))
    n_dev = max(1, math.ceil(dev_fraction * len(spk)))
    if len(spk) < n_test + n_dev + 1:
        raise ValueError(f"{len(spk)} speakers cannot give {n_dev} dev + {n_test} test + >=1 train speakers")
    return {s: ("test" if i < n_test else "dev" if i < n_test + n_dev else "train") for i, s in enumerate(spk)}


@dataclass
class Row:
    """One utterance of a listing, before any audio is opened."""

    id: str
    speaker: str
    text: str
    path: Path
    where: str  # file:line of the listing
    split: str | None = None  # given by the listing, else chosen by speaker


def row_ok(checker: Checker, utt: str, speaker: str, where: str, text: str | None = None) -> bool:
    """Check a listing line's id, speaker and (when given) transcript; bad ones go to ``checker``."""
    return (checker.ok(utt, check_id, utt, where) is not None
            and checker.ok(utt, check_speaker, speaker, where) is not None
            and (text is None or checker.ok(utt, check_text, text, where) is not None))


def rows_to_pairs(rows: list[Row], checker: Checker, dev_fraction: float, test_fraction: float,
                  language: str | None, listing: Path) -> Pairs:
    """Pairs per split: ids made unique across the whole listing first (every copy of a
    repeated id is a bad item), then rows without a split column split by speaker."""
    rows = unique_ids(rows, lambda r: r.id, lambda r: r.where, checker)
    if not rows:
        raise checker.fatal(f"{listing}: no usable lines")
    by_speaker = [r.speaker for r in rows if r.split is None]
    try:
        split_of = speaker_split(by_speaker, dev_fraction, test_fraction) if by_speaker else {}
    except ValueError as e:
        raise checker.fatal(f"{listing}: {e}") from None
    pairs: Pairs = {"train": [], "dev": [], "test": []} if by_speaker else {}
    for r in rows:
        sup = SupervisionSegment(id=r.id, recording_id=r.id, start=0.0, duration=0.0, channel=0, text=r.text,
                                 speaker=r.speaker, language=language)
        pairs.setdefault(r.split or split_of[r.speaker], []).append((pending_recording(r.id, r.path), sup))
    return pairs
