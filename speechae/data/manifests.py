"""Stage 1: Lhotse manifests (recordings + supervisions), validated, split by speaker.

Every preparer (the tiny recipe's :func:`prepare_synth_manifests`, and the corpus readers in
:mod:`speechae.recipes`) turns its layout into ``{split: [(Recording, SupervisionSegment), ...]}``
("pairs") and hands them to :func:`finish_manifests`, which applies one policy to all of them
(:class:`speechae.data.validate.AudioPolicy`): ids unique across every split, every transcript
checked and normalised, every file decoded once, duration filter, resampling, and one report of
every problem found.

Output, in ``out_dir``: ``<prefix>_recordings_<split>.jsonl.gz`` and
``<prefix>_supervisions_<split>.jsonl.gz`` per split, ``<prefix>_skipped.txt`` (dropped items,
one ``id<TAB>file<TAB>reason`` line each) and ``<prefix>_warnings.txt`` (accepted items that
were resampled or had channels ignored, same format).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable, TypeVar

from lhotse import Recording, RecordingSet, SupervisionSegment, SupervisionSet
from lhotse.audio.source import AudioSource
from lhotse.qa import validate_recordings_and_supervisions
from lhotse.supervision import AlignmentItem
from lhotse.utils import fastcopy

from speechae.data.validate import (AudioPolicy, AudioReport, BadInputError, Checker, OnError, check_id,
                                    check_speaker, check_text)
from speechae.utils.io import atomic_path

SPLITS = ("train", "dev", "test")

Pair = tuple[Recording, SupervisionSegment]
Pairs = dict[str, list[Pair]]
T = TypeVar("T")


def split_speakers(speakers: list[str], num_dev: int, num_test: int) -> dict[str, set[str]]:
    """Deterministic speaker-disjoint split: the last ``num_test`` speakers (sorted) are test,
    the ``num_dev`` before them dev, the rest train."""
    spk = sorted(set(speakers))
    if len(spk) < num_dev + num_test + 1:
        raise ValueError(f"{len(spk)} speakers cannot give {num_dev} dev + {num_test} test + >=1 train speakers")
    test = set(spk[len(spk) - num_test:])
    dev = set(spk[len(spk) - num_test - num_dev: len(spk) - num_test])
    return {"train": set(spk) - dev - test, "dev": dev, "test": test}


def write_manifests(recordings: RecordingSet, supervisions: SupervisionSet, out_dir: Path, prefix: str,
                    split: str) -> None:
    """Validate and write one split's manifests atomically."""
    validate_recordings_and_supervisions(recordings, supervisions)
    for kind, manifest in (("recordings", recordings), ("supervisions", supervisions)):
        with atomic_path(out_dir / f"{prefix}_{kind}_{split}.jsonl.gz") as tmp:
            manifest.to_file(tmp)


def pending_recording(recording_id: str, path: str | Path) -> Recording:
    """A recording whose header has not been read yet: :func:`finish_manifests` fills in rate,
    length and channels from its own check, so a reader never opens audio (and an unreadable
    file is reported once, in plain words, instead of by Lhotse's loader)."""
    return Recording(id=recording_id, sources=[AudioSource(type="file", channels=[0], source=str(path))],
                     sampling_rate=0, num_samples=0, duration=0.0)


def _is_pending(rec: Recording) -> bool:
    return rec.sampling_rate == 0 and rec.num_samples == 0


def audio_path(rec: Recording) -> str:
    """The file behind a single-source file recording."""
    src = rec.sources[0]
    if src.type != "file":
        raise BadInputError(f"{rec.id}: recording source is {src.type!r}, expected a file")
    return src.source


def unique_ids(items: Iterable[T], item_id: Callable[[T], str], where: Callable[[T], str],
               checker: Checker) -> list[T]:
    """``items`` without any whose id occurs more than once: every copy is a bad item, since
    which one is right cannot be told (e.g. one id under two speakers would land in two splits)."""
    items = list(items)
    places = defaultdict(list)
    for it in items:
        places[item_id(it)].append(where(it))
    out = []
    for it in items:
        seen = places[item_id(it)]
        if len(seen) > 1:
            checker.reject(item_id(it), where(it), f"utterance id {item_id(it)!r} is listed {len(seen)} times "
                                                   f"({', '.join(seen)}); every copy dropped")
        else:
            out.append(it)
    return out


def normalize_pairs(pairs: list[Pair], checker: Checker, normalize: Callable[[str], str] | None) -> list[Pair]:
    """Check (and normalise) each transcript; bad ones go to ``checker``, named by their audio file."""
    out = []
    for rec, sup in pairs:
        where = _path_or_id(rec)
        text = checker.ok(sup.id, check_text, sup.text, where)
        if text is not None and normalize is not None:
            text = checker.ok(sup.id, _normalize, normalize, text, where)
        if text is not None:
            out.append((rec, fastcopy(sup, text=text)))
    return out


def _normalize(fn: Callable[[str], str], text: str, where: str) -> str:
    try:
        return fn(text)
    except ValueError as e:  # NormalizationError and friends
        raise BadInputError(f"{where}: {e}") from None


def _unique_across_splits(pairs: Pairs, checker: Checker) -> Pairs:
    counts = Counter(i for items in pairs.values() for rec, sup in items for i in {rec.id, sup.id})
    splits = defaultdict(set)
    for split, items in pairs.items():
        for rec, sup in items:
            splits[rec.id].add(split)
            splits[sup.id].add(split)
    out: Pairs = {}
    for split, items in pairs.items():
        out[split] = []
        for rec, sup in items:
            dup = next((i for i in (sup.id, rec.id) if counts[i] > 1), None)
            if dup is None:
                out[split].append((rec, sup))
            else:
                where = ", ".join(sorted(splits[dup]))
                checker.reject(sup.id, _path_or_id(rec),
                               f"utterance id {dup!r} occurs {counts[dup]} times (splits: {where}); every copy dropped")
    return out


def _path_or_id(rec: Recording) -> str:
    try:
        return audio_path(rec)
    except BadInputError:
        return rec.id


def _with_header(rec: Recording, report: AudioReport) -> Recording:
    if not _is_pending(rec):
        return rec
    channels = list(range(report.channels))
    return Recording(id=rec.id, sources=[fastcopy(rec.sources[0], channels=channels)], sampling_rate=report.sample_rate,
                     num_samples=report.frames, duration=report.duration, channel_ids=channels)


def _fit(sup: SupervisionSegment, rec: Recording, pending: bool) -> SupervisionSegment:
    duration = rec.duration if pending else min(sup.duration, rec.duration)
    alignment = sup.alignment
    if alignment:
        alignment = {k: [a for a in v if a.start < duration] for k, v in alignment.items()}
    return fastcopy(sup, duration=duration, alignment=alignment)


def finish_manifests(pairs: Pairs, out_dir: str | Path, prefix: str, checker: Checker,
                     normalize: Callable[[str], str] | None = None, sample_rate: int | None = None,
                     num_jobs: int = 1, full_decode: bool = True) -> dict[str, int]:
    """Validate, normalise, filter, resample and write every split; returns utterances per split.

    ``checker`` may already hold problems found by the corpus reader (malformed lines,
    duplicate ids) and audio reports; everything is reported together, once: with
    ``on_error="fail"`` one :class:`BadInputError` lists every bad item and nothing is written.
    ``sample_rate`` overrides the target rate of ``checker.policy``.
    """
    out_dir = Path(out_dir)
    if sample_rate is not None and sample_rate != checker.policy.sample_rate:
        checker.policy = replace(checker.policy, sample_rate=sample_rate)
        checker.reports.clear()
    policy = checker.policy
    pairs = _unique_across_splits(pairs, checker)
    for split, items in pairs.items():
        items = [(r, s) for r, s in items if checker.ok(s.id, check_id, s.id, _path_or_id(r)) is not None
                 and checker.ok(s.id, check_id, r.id, _path_or_id(r)) is not None]
        pairs[split] = normalize_pairs(items, checker, normalize)
    files = [(r, s) for items in pairs.values() for r, s in items]
    paths = {r.id: checker.ok(s.id, audio_path, r) for r, s in files}
    checker.audio([p for p in paths.values() if p is not None], num_jobs, full_decode)
    kept: dict[str, tuple[list[Recording], list[SupervisionSegment]]] = {}
    for split, items in pairs.items():
        recs, sups = kept.setdefault(split, ([], []))
        for rec, sup in items:
            path = paths[rec.id]
            if path is None:
                continue
            report = checker.audio([path])[0]
            if isinstance(report, str):
                checker.reject(sup.id, path, report)
                continue
            reason = policy.drop_reason(report.duration)
            if reason:
                checker.drop(sup.id, path, reason)
                continue
            for note in policy.notes(report):
                checker.warn(sup.id, path, note)
            pending = _is_pending(rec)
            rec = _with_header(rec, report)
            if rec.sampling_rate != policy.sample_rate:
                rec = rec.resample(policy.sample_rate)
            recs.append(rec)
            sups.append(_fit(sup, rec, pending))
    checker.raise_if_failed()
    empty = [split for split, (recs, _) in kept.items() if not recs]
    if empty:
        checker.write(out_dir, prefix)
        raise checker.fatal(f"{prefix}: split(s) {', '.join(empty)} have no usable utterances "
                            f"(see {out_dir / f'{prefix}_skipped.txt'})")
    for split, (recs, sups) in kept.items():
        write_manifests(RecordingSet.from_recordings(recs), SupervisionSet.from_segments(sups), out_dir, prefix, split)
    checker.write(out_dir, prefix)
    return {split: len(recs) for split, (recs, _) in kept.items()}


def prepare_synth_manifests(corpus_dir: str | Path, out_dir: str | Path, prefix: str = "mini",
                            num_dev_speakers: int = 2, num_test_speakers: int = 2,
                            on_error: OnError = "fail", sample_rate: int = 16000,
                            policy: AudioPolicy | None = None) -> dict[str, int]:
    """Manifests for a corpus written by :func:`speechae.data.synth.synthesize_corpus`.

    Ids are checked across the whole corpus before the speaker split; then
    :func:`finish_manifests` applies the common policy.  Returns the number of utterances per split.
    """
    from speechae.data.synth import read_utterances

    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    checker = Checker(on_error, policy=policy or AudioPolicy(sample_rate=sample_rate))
    listing = corpus_dir / "utterances.jsonl"
    utts = read_utterances(corpus_dir, checker)
    utts = [u for u in utts if checker.ok(u.id, check_speaker, u.speaker, f"{listing} [{u.id}]") is not None
            and checker.ok(u.id, check_text, u.text, f"{listing} [{u.id}]") is not None]
    utts = unique_ids(utts, lambda u: u.id, lambda u: f"{listing} [{u.id}]", checker)
    pairs_of = []
    for u in utts:
        phones = [AlignmentItem(symbol=p, start=s, duration=round(e - s, 4)) for p, s, e in u.phones]
        if not phones:
            checker.reject(u.id, corpus_dir / u.audio, "utterance has no phone alignment")
            continue
        rec = pending_recording(u.id, corpus_dir / u.audio)
        pairs_of.append((u.speaker, (rec, SupervisionSegment(
            id=u.id, recording_id=u.id, start=0.0, duration=0.0, channel=0, text=u.text,
            speaker=u.speaker, language=u.language, alignment={"phone": phones}))))
    if not pairs_of:
        raise checker.fatal(f"{corpus_dir}: no usable utterances")
    try:
        split = split_speakers([spk for spk, _ in pairs_of], num_dev_speakers, num_test_speakers)
    except ValueError as e:
        raise checker.fatal(f"{listing}: {e}") from None
    pairs: Pairs = {name: [p for spk, p in pairs_of if spk in split[name]] for name in SPLITS}
    return finish_manifests(pairs, out_dir, prefix, checker, normalize=None)
