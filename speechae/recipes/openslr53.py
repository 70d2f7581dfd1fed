"""OpenSLR 53, "Large Bengali ASR training data" (Google, CC BY-SA 4.0): download and manifests.

Lhotse has no recipe for it.  The corpus ships as 16 zips, ``asr_bengali_{0..9,a..f}.zip``,
each holding part of one tree::

    asr_bengali/utt_spk_text.tsv            # "<utt_id>\\t<speaker_id>\\t<text>", all utterances
    asr_bengali/data/<xx>/<utt_id>.flac     # xx = first two characters of utt_id; 16 kHz mono

(zip ``k`` holds the ``data/<xx>`` folders whose name starts with ``k``).  There is no official
train/dev/test split: the recipe splits by speaker (:func:`speechae.recipes.common.speaker_split`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from typing import TYPE_CHECKING

from speechae.recipes.archives import CorpusUnavailableError, extract_archive, fetch_archive, marker, network_available

if TYPE_CHECKING:
    from speechae.data.validate import Checker
    from speechae.recipes.common import Pairs

URL = "https://www.openslr.org/resources/53"
PARTS = tuple("0123456789abcdef")
TOP = "asr_bengali"
# Publisher checksums ("md5:<hex>") of asr_bengali_<part>.zip, keyed by part.  Left empty on
# purpose: only values copied from the publisher's list may go here, and none were at hand when
# this table was written.  Parts without an entry are verified structurally only (every zip
# member's CRC, see speechae.recipes.archives.verify_archive); an entry makes a download that
# does not match it fail, exactly as for LibriSpeech.
PUBLISHED_CHECKSUMS: dict[str, str] = {}


def archive_name(part: str) -> str:
    """``asr_bengali_<part>.zip``."""
    return f"{TOP}_{part}.zip"


def download_openslr53(dl_dir: str | Path, parts: str = "all", base_url: str = URL) -> Path:
    """Make ``<dl_dir>/asr_bengali`` complete; return it.

    ``parts``: ``"all"`` or a comma-separated subset of ``0-9a-f`` (each zip is ~1/16 of the
    corpus; a subset gives a smaller, still multi-speaker corpus).  Same rules as LibriSpeech:
    verified archives, temp-dir extraction, resumable fetch, fast failure without network.
    """
    dl_dir = Path(dl_dir)
    wanted = PARTS if parts == "all" else tuple(p for p in parts.split(",") if p)
    bad = [p for p in wanted if p not in PARTS]
    if bad:
        raise ValueError(f"unknown OpenSLR 53 part(s) {bad}; parts are 0-9, a-f")
    corpus = dl_dir / TOP
    network: bool | None = None
    for part in wanted:
        name = archive_name(part)
        archive = dl_dir / name
        if marker(dl_dir, name).is_file():
            continue
        if not archive.is_file() and _extracted_copy(corpus):
            # A copy extracted elsewhere: trusted as is (stage 1 checks every listed file and
            # logs utterances of absent data/<xx> folders).
            logging.warning("OpenSLR 53 part %s: no %s; using the extracted copy in %s", part, name, corpus)
            continue
        url = f"{base_url}/{name}"
        if network is None and not archive.is_file():
            network = network_available(url)
        hint = (f"Provide it with --dl-dir DIR holding {name} (from {base_url}/) or the extracted "
                f"{TOP}/utt_spk_text.tsv + {TOP}/data/{part}?/ tree.")
        if not archive.is_file() and not network:
            raise CorpusUnavailableError(f"OpenSLR 53 part {name} not found in {dl_dir} and {url} cannot be reached "
                                         f"(no network).\n{hint}")
        fetch_archive(url, archive, hint, network=network, checksum=PUBLISHED_CHECKSUMS.get(part))
        extract_archive(archive, dl_dir)
        logging.info("OpenSLR 53 %s: extracted", name)
    if not (corpus / "utt_spk_text.tsv").is_file():
        raise CorpusUnavailableError(f"{corpus / 'utt_spk_text.tsv'}: missing after download")
    return corpus


def _extracted_copy(corpus: Path) -> bool:
    data = corpus / "data"
    return (corpus / "utt_spk_text.tsv").is_file() and data.is_dir() and any(data.iterdir())


def read_openslr53(corpus_dir: str | Path, checker: Checker, dev_fraction: float = 0.02,
                   test_fraction: float = 0.02, require_all: bool = False) -> Pairs:
    """Pairs per split from ``utt_spk_text.tsv``.

    A malformed line (not three tab-separated fields, empty id/speaker) and a listed utterance
    whose ``.flac`` is missing go through ``checker`` (error, or a skip-list entry naming the
    file and line).  When only some zips were downloaded, utterances of the absent
    ``data/<xx>`` folders are ignored with one log line, unless ``require_all``.
    """
    from lhotse import Recording, SupervisionSegment

    from speechae.recipes.common import fail, speaker_split, tsv_rows

    corpus_dir = Path(corpus_dir)
    if (corpus_dir / TOP).is_dir():
        corpus_dir = corpus_dir / TOP
    tsv = corpus_dir / "utt_spk_text.tsv"
    if not tsv.is_file():
        raise FileNotFoundError(f"{tsv}: missing; run stage 0 (download) first")
    present = {d.name for d in (corpus_dir / "data").iterdir() if d.is_dir()} if (corpus_dir / "data").is_dir() else set()
    rows, absent = [], 0
    for where, line, fields in tsv_rows(tsv, checker):
        if len(fields) != 3 or not fields[0].strip() or not fields[1].strip():
            checker.ok(where, fail, f"{where}: malformed line, expected 'utt_id<TAB>speaker<TAB>text': {line!r}")
            continue
        utt, spk, text = (x.strip() for x in fields)
        if utt[:2] not in present and not require_all:
            absent += 1
            continue
        flac = corpus_dir / "data" / utt[:2] / f"{utt}.flac"
        if not flac.is_file():
            checker.ok(utt, fail, f"{flac}: audio file is missing (listed at {where})")
            continue
        rows.append((utt, spk, text, flac))
    if absent:
        logging.info("OpenSLR 53: %d listed utterance(s) are in zips not downloaded; ignored", absent)
    split_of = speaker_split([r[1] for r in rows], dev_fraction, test_fraction)
    pairs: Pairs = {"train": [], "dev": [], "test": []}
    for utt, spk, text, flac in rows:
        try:
            rec = Recording.from_file(flac, recording_id=utt)
        except Exception as e:  # unreadable header
            checker.ok(utt, fail, f"{flac}: cannot read audio ({e})")
            continue
        sup = SupervisionSegment(id=utt, recording_id=utt, start=0.0, duration=rec.duration, channel=0,
                                 text=text, speaker=spk, language="bn")
        pairs[split_of[spk]].append((rec, sup))
    return pairs
