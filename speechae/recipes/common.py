"""Manifest finishing shared by the real-corpus recipes (stage 1).

Every corpus module turns its layout into ``{split: [(Recording, SupervisionSegment), ...]}``
("pairs"); :func:`finish_manifests` then

* decodes every audio file once (in ``num_jobs`` processes) with
  :func:`speechae.data.validate.check_audio`, checks and normalises every transcript, and
  applies the ``--on-error fail|skip`` policy (skips are listed in ``<prefix>_skipped.txt``);
* resamples recordings to the feature rate (lazily: Lhotse resamples on load);
* writes ``<prefix>_recordings_<split>.jsonl.gz`` / ``<prefix>_supervisions_<split>.jsonl.gz``,
  the names ``speechae compute-fbank`` reads.
"""

from __future__ import annotations

import hashlib
import logging
import math
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator

from lhotse import Recording, RecordingSet, SupervisionSegment, SupervisionSet
from lhotse.utils import fastcopy

from speechae.data.manifests import write_manifests
from speechae.data.validate import BadInputError, Checker, check_audio, check_text

Pair = tuple[Recording, SupervisionSegment]
Pairs = dict[str, list[Pair]]


def fail(message: str) -> None:
    """A check that always fails (for use with :meth:`Checker.ok`)."""
    raise BadInputError(message)


def tsv_rows(tsv: Path, checker: Checker, comments: bool = False) -> Iterator[tuple[str, str, list[str]]]:
    """``(where, line, fields)`` for each non-empty line of a UTF-8 TSV (``where`` = ``file:line``);
    a line that is not UTF-8 goes to ``checker`` (error or skip list); ``comments`` skips ``#`` lines."""
    with open(tsv, "rb") as f:
        for i, raw in enumerate(f, 1):
            where = f"{tsv}:{i}"
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                checker.ok(where, fail, f"{where}: not valid UTF-8 ({e.reason})")
                continue
            if line.strip() and not (comments and line.startswith("#")):
                yield where, line, line.split("\t")


def audio_path(rec: Recording) -> str:
    """The file behind a single-source file recording."""
    src = rec.sources[0]
    if src.type != "file":
        raise BadInputError(f"{rec.id}: recording source is {src.type!r}, expected a file")
    return src.source


def _check_one(path: str) -> str | None:
    try:
        check_audio(path)
    except BadInputError as e:
        return str(e)
    return None


def check_audio_files(paths: list[str], num_jobs: int = 1) -> list[str | None]:
    """Fully decode every file; return an error message (or None) per path."""
    if num_jobs <= 1 or len(paths) < 64:
        return [_check_one(p) for p in paths]
    with ProcessPoolExecutor(num_jobs) as ex:
        return list(ex.map(_check_one, paths, chunksize=64))


def normalize_pairs(pairs: list[Pair], checker: Checker, normalize: Callable[[str], str] | None,
                    where: str) -> list[Pair]:
    """Check (and normalise) each transcript; drop or fail on bad ones per ``checker``."""
    out = []
    for rec, sup in pairs:
        text = checker.ok(sup.id, check_text, sup.text, f"{where} [{sup.id}]")
        if text is None:
            continue
        if normalize is not None:
            text = checker.ok(sup.id, _normalize, normalize, text, f"{where} [{sup.id}]")
            if text is None:
                continue
        out.append((rec, fastcopy(sup, text=text)))
    return out


def _normalize(fn: Callable[[str], str], text: str, where: str) -> str:
    try:
        return fn(text)
    except ValueError as e:  # NormalizationError and friends
        raise BadInputError(f"{where}: {e}") from None


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


def finish_manifests(pairs: Pairs, out_dir: str | Path, prefix: str, checker: Checker,
                     normalize: Callable[[str], str] | None = None, sample_rate: int = 16000,
                     num_jobs: int = 1, full_decode: bool = True) -> dict[str, int]:
    """Validate, normalise, resample and write every split; returns utterances per split.

    ``checker`` may already hold skips found by the corpus reader (malformed lines, missing
    files); they are written to ``<prefix>_skipped.txt`` together with the ones found here.
    """
    out_dir = Path(out_dir)
    counts: dict[str, int] = {}
    for split, items in pairs.items():
        items = normalize_pairs(items, checker, normalize, f"{prefix}/{split}")
        errors = check_audio_files([audio_path(r) for r, _ in items], num_jobs) if full_decode else [None] * len(items)
        kept_recs, kept_sups, seen = [], [], set()
        for (rec, sup), err in zip(items, errors):
            if err is not None and checker.ok(sup.id, fail, err) is None:
                continue
            if rec.id in seen:
                checker.ok(sup.id, fail, f"{audio_path(rec)}: duplicate recording id {rec.id}")
                continue
            seen.add(rec.id)
            if rec.sampling_rate != sample_rate:
                rec = rec.resample(sample_rate)
            kept_recs.append(rec)
            kept_sups.append(fastcopy(sup, duration=min(sup.duration, rec.duration)))
        if not kept_recs:
            checker.write(out_dir / f"{prefix}_skipped.txt")
            raise BadInputError(f"{prefix}: split {split!r} has no usable utterances "
                                f"(see {out_dir / f'{prefix}_skipped.txt'})")
        write_manifests(RecordingSet.from_recordings(kept_recs), SupervisionSet.from_segments(kept_sups),
                        out_dir, prefix, split)
        counts[split] = len(kept_recs)
    checker.write(out_dir / f"{prefix}_skipped.txt")
    if checker.skipped:
        logging.warning("skipped %d bad item(s); see %s", len(checker.skipped), out_dir / f"{prefix}_skipped.txt")
    return counts
