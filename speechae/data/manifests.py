"""Stage 1: Lhotse manifests (recordings + supervisions with phone alignments), split by speaker.

Output, in ``out_dir``: ``<prefix>_recordings_<split>.jsonl.gz`` and
``<prefix>_supervisions_<split>.jsonl.gz`` for split in train/dev/test, plus
``<prefix>_skipped.txt`` (items dropped with ``on_error="skip"``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from lhotse import Recording, RecordingSet, SupervisionSegment, SupervisionSet
from lhotse.qa import validate_recordings_and_supervisions
from lhotse.supervision import AlignmentItem

from speechae.data.synth import read_utterances
from speechae.data.validate import BadInputError, Checker, OnError, check_audio, check_text
from speechae.utils.io import atomic_path

SPLITS = ("train", "dev", "test")


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


def prepare_synth_manifests(corpus_dir: str | Path, out_dir: str | Path, prefix: str = "mini",
                            num_dev_speakers: int = 2, num_test_speakers: int = 2,
                            on_error: OnError = "fail", sample_rate: int = 16000) -> dict[str, int]:
    """Manifests for a corpus written by :func:`speechae.data.synth.synthesize_corpus`.

    Every recording is decoded and every transcript checked (see :mod:`speechae.data.validate`);
    returns the number of utterances per split.
    """
    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    checker = Checker(on_error)
    utts = read_utterances(corpus_dir, checker)
    recs, sups = [], []
    for u in utts:
        audio = corpus_dir / u.audio
        if checker.ok(u.id, check_audio, audio, expected_sr=sample_rate) is None:
            continue
        text = checker.ok(u.id, check_text, u.text, f"{corpus_dir / 'utterances.jsonl'} [{u.id}]")
        if text is None:
            continue
        rec = Recording.from_file(audio, recording_id=u.id)
        phones = [AlignmentItem(symbol=p, start=s, duration=round(e - s, 4)) for p, s, e in u.phones
                  if s < rec.duration]
        if not phones and checker.ok(u.id, _fail, f"{audio}: utterance has no phone alignment") is None:
            continue
        recs.append(rec)
        sups.append(SupervisionSegment(
            id=u.id, recording_id=u.id, start=0.0, duration=rec.duration, channel=0, text=text,
            speaker=u.speaker, language=u.language, alignment={"phone": phones},
        ))
    checker.write(out_dir / f"{prefix}_skipped.txt")
    if checker.skipped:
        logging.warning("skipped %d bad item(s); see %s", len(checker.skipped), out_dir / f"{prefix}_skipped.txt")
    if not recs:
        raise BadInputError(f"{corpus_dir}: no usable utterances")
    split = split_speakers([s.speaker for s in sups], num_dev_speakers, num_test_speakers)
    counts = {}
    for name in SPLITS:
        keep = [s for s in sups if s.speaker in split[name]]
        ids = {s.recording_id for s in keep}
        write_manifests(RecordingSet.from_recordings(r for r in recs if r.id in ids),
                        SupervisionSet.from_segments(keep), out_dir, prefix, name)
        counts[name] = len(keep)
    return counts


def _fail(message: str) -> None:
    raise BadInputError(message)
