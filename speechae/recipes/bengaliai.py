"""Bengali.AI Speech (Kaggle competition data, ~1200 h of read Bengali): locate and read.

Manual download (``kaggle competitions download -c bengaliai-speech``); the zip unpacks to::

    train.csv                    # header "id,sentence,split"; split is train or valid
    train_mp3s/<id>.mp3          # 32 kHz mono MP3
    test_mp3s/<id>.mp3           # a few examples without transcripts (not used)

Reading goes through Lhotse's ``prepare_bengaliai_speech`` on a view (a filtered
``train.csv`` without rows whose audio failed a check, plus symlinks to the MP3 folders).
The corpus has no speaker labels, so the official ``valid`` part is divided in two by a hash of
the utterance id: half ``dev``, half ``test``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from typing import TYPE_CHECKING

from speechae.recipes.archives import CorpusUnavailableError, extract_archive, marker

if TYPE_CHECKING:
    from speechae.data.validate import Checker
    from speechae.recipes.common import Pairs

DIR_NAME = "bengaliai-speech"


def find_bengaliai(dl_dir: str | Path) -> Path:
    """Return the folder holding ``train.csv`` + ``train_mp3s/``, extracting ``bengaliai-speech.zip``
    from ``dl_dir`` into ``dl_dir/bengaliai-speech/`` first when needed."""
    dl_dir = Path(dl_dir)
    for cand in (dl_dir / DIR_NAME, dl_dir):
        if (cand / "train.csv").is_file() and (cand / "train_mp3s").is_dir():
            return cand
    archive = dl_dir / f"{DIR_NAME}.zip"
    if archive.is_file():
        if not marker(dl_dir / DIR_NAME, archive.name).is_file():
            extract_archive(archive, dl_dir / DIR_NAME)
        return dl_dir / DIR_NAME
    raise CorpusUnavailableError(
        f"Bengali.AI Speech not found in {dl_dir}.  It needs a manual download: accept the competition "
        f"rules on https://www.kaggle.com/competitions/bengaliai-speech, run "
        f"`kaggle competitions download -c bengaliai-speech -p {dl_dir}` (gives {DIR_NAME}.zip), "
        f"or put the extracted train.csv + train_mp3s/ into {dl_dir / DIR_NAME}.")


def read_bengaliai(corpus_dir: str | Path, view_dir: str | Path, checker: Checker, num_jobs: int = 1) -> Pairs:
    """Pairs for train/dev/test (dev + test = the official ``valid`` part, halved by id hash).

    Before Lhotse reads anything, every line is checked here (format, id, transcript, id
    listed once) and every file decoded once (the report is reused by stage 1's final check)."""
    from lhotse.recipes.bengaliai_speech import prepare_bengaliai_speech

    from speechae.data.validate import check_id, check_text
    from speechae.recipes.common import text_lines, unique_ids

    corpus_dir, view_dir = Path(corpus_dir), Path(view_dir)
    csv_path = corpus_dir / "train.csv"
    lines = iter(text_lines(csv_path, checker))  # utf-8-sig; a non-UTF-8 line goes to checker
    header = next((line for _, _, line in lines), "")
    if header.strip().split(",")[0] != "id":
        raise ValueError(f"{csv_path}: expected the header 'id,sentence,split'")
    rows, kept = [], [header]
    for where, _, line in lines:
        if not line.strip():
            continue
        head, sep, split = line.rpartition(",")
        utt, sep2, text = head.partition(",")
        if not sep or not sep2 or split not in ("train", "valid") or not utt:
            checker.reject(utt or where, where, f"malformed line, expected 'id,sentence,split': {line[:80]!r}")
            continue
        if checker.ok(utt, check_id, utt, where) is None or checker.ok(utt, check_text, text, where) is None:
            continue
        rows.append((utt, where, line))
    rows = unique_ids(rows, lambda r: r[0], lambda r: r[1], checker)
    paths = [str(corpus_dir / "train_mp3s" / f"{utt}.mp3") for utt, *_ in rows]
    for (utt, _, line), path, report in zip(rows, paths, checker.audio(paths, num_jobs)):
        if isinstance(report, str):
            checker.reject(utt, path, report)
        else:
            kept.append(line)
    view_dir.mkdir(parents=True, exist_ok=True)
    (view_dir / "train.csv").write_text("\n".join(kept) + "\n", encoding="utf-8")
    for sub in ("train_mp3s", "test_mp3s"):
        link = view_dir / sub
        if link.is_symlink() or link.exists():
            link.unlink()
        if (corpus_dir / sub).is_dir():
            link.symlink_to((corpus_dir / sub).resolve(), target_is_directory=True)
    manifests = prepare_bengaliai_speech(view_dir, output_dir=None, num_jobs=max(1, num_jobs))
    pairs: Pairs = {"train": [], "dev": [], "test": []}
    for part, split_name in (("train", "train"), ("valid", None)):
        m = manifests.get(part)
        if not m:
            continue
        recs = m["recordings"]
        for sup in m["supervisions"]:
            name = split_name or ("dev" if int(hashlib.md5(sup.id.encode()).hexdigest(), 16) % 2 == 0 else "test")
            pairs[name].append((recs[sup.recording_id], sup))
    return pairs
