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
import re
from collections import Counter
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
_HEX2 = re.compile(r"[0-9a-fA-F]{2}")


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
    """Pairs per split from ``utt_spk_text.tsv``; no audio is opened here (stage 1 decodes
    every file once, later).

    A malformed line (not three tab-separated fields), an unsafe id (path separators,
    whitespace, control characters, not hex), an unknown speaker, a bad transcript and an id
    listed more than once go through ``checker`` (error, or a skip-list entry naming the line).
    When only some zips were downloaded, the utterances of a zip none of whose ``data/<k>?``
    folders exist (and that stage 0 did not extract) are dropped and listed, unless
    ``require_all``; in a zip that is there, a missing file is an error.
    """
    from speechae.recipes.common import Row, row_ok, rows_to_pairs, tsv_rows

    corpus_dir = Path(corpus_dir)
    if (corpus_dir / TOP).is_dir():
        corpus_dir = corpus_dir / TOP
    tsv = corpus_dir / "utt_spk_text.tsv"
    if not tsv.is_file():
        raise FileNotFoundError(f"{tsv}: missing; run stage 0 (download) first")
    data = corpus_dir / "data"
    present = {d.name for d in data.iterdir() if d.is_dir()} if data.is_dir() else set()
    rows, absent = [], Counter()

    def downloaded(part: str) -> bool:  # extracted by stage 0, or some folder of the zip is there
        return marker(corpus_dir.parent, archive_name(part)).is_file() or any(d.startswith(part) for d in present)

    for where, line, fields in tsv_rows(tsv, checker):
        utt = fields[0].strip()
        if len(fields) != 3:
            checker.reject(utt or where, where, f"malformed line: expected 3 tab-separated fields "
                                                f"(utt_id, speaker, text), found {len(fields)}: {line[:80]!r}")
            continue
        spk, text = fields[1].strip(), fields[2].strip()
        if not row_ok(checker, utt, spk, where, text):
            continue
        folder = utt[:2]
        if not _HEX2.fullmatch(folder):
            checker.reject(utt, where, f"utterance id {utt!r} names no OpenSLR 53 folder (data/{folder})")
            continue
        if not require_all and folder not in present and not downloaded(folder[0]):
            absent[folder[0]] += 1
            checker.drop(utt, where, f"not downloaded: in {archive_name(folder[0])} (see --slr53-parts)")
            continue
        rows.append(Row(utt, spk, text, corpus_dir / "data" / folder / f"{utt}.flac", where))
    if absent:
        logging.info("OpenSLR 53: %d listed utterance(s) are in zips not downloaded (parts %s); listed as dropped",
                     sum(absent.values()), ",".join(sorted(absent)))
    pairs = rows_to_pairs(rows, checker, dev_fraction, test_fraction, "bn", tsv)
    return {split: pairs.get(split, []) for split in ("train", "dev", "test")}
