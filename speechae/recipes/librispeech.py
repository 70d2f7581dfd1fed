"""LibriSpeech (OpenSLR 12) and Mini LibriSpeech (OpenSLR 31): download and manifests.

Layout (as distributed)::

    <dl_dir>/LibriSpeech/<part>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac
    <dl_dir>/LibriSpeech/<part>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt   # "<utt-id> UPPER CASE TEXT"
    <dl_dir>/LibriSpeech/{SPEAKERS,CHAPTERS,BOOKS}.TXT, LICENSE.TXT, README.TXT

Parts and URLs come from Lhotse (``lhotse.recipes.librispeech``); fetching uses Lhotse's
resumable download, but every archive is verified and extracted through
:mod:`speechae.recipes.archives` (Lhotse's own ``download_librispeech`` extracts an archive
without checking it, which would trust a truncated file).

The recipe's splits: ``train`` (the training parts listed), ``dev`` (dev-clean [+ dev-other],
or dev-clean-2 for the mini parts), ``test-clean``, ``test-other``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from typing import TYPE_CHECKING

from speechae.recipes.archives import CorpusUnavailableError, extract_archive, fetch_archive, marker, network_available

if TYPE_CHECKING:  # lhotse (and torch) load lazily: stage 0's offline failure must be instant
    from speechae.data.validate import AudioPolicy, Checker, OnError
    from speechae.recipes.common import Pairs

BASE_URL = "https://www.openslr.org/resources"
# Recipe split name for each distributed part (the part names are Lhotse's LIBRISPEECH and
# MINI_LIBRISPEECH; spelled out here so that stage 0 runs without importing lhotse).
SPLIT_OF = {
    "dev-clean": "dev", "dev-other": "dev", "test-clean": "test-clean", "test-other": "test-other",
    "train-clean-100": "train", "train-clean-360": "train", "train-other-500": "train",
    "dev-clean-2": "dev", "train-clean-5": "train",
}
LIBRISPEECH = tuple(list(SPLIT_OF)[:7])
MINI_LIBRISPEECH = ("dev-clean-2", "train-clean-5")
PART_SETS = {"librispeech": LIBRISPEECH, "mini_librispeech": MINI_LIBRISPEECH}
# The publisher's checksums of each <part>.tar.gz: https://www.openslr.org/resources/12/md5sum.txt
# and the list on https://www.openslr.org/31/ (the same values are pinned by several
# independent LibriSpeech loaders).  A downloaded archive must match; see speechae.recipes.archives.
PUBLISHED_MD5 = {
    "dev-clean": "42e2234ba48799c1f50f24a7926300a1",
    "dev-other": "c8d0bcc9cca99d4f8b62fcc847357931",
    "test-clean": "32fa31d27d2e1cad72775fee3f4849a9",
    "test-other": "fb5a50374b501bb3bac4815ee91d3135",
    "train-clean-100": "2a93770f6d5c6c964bc36631d331a522",
    "train-clean-360": "c0e676e450a7ff2f54aeade5171606fa",
    "train-other-500": "d1a0fd59409feb2c614ce4d30c387708",
    "dev-clean-2": "6d7ab67ac6a1d2c993d050e16d61080d",
    "train-clean-5": "5df7d4e78065366204ca6845bb08f490",
}


def resolve_parts(dataset_parts: str) -> list[str]:
    """``"librispeech"`` / ``"mini_librispeech"`` or a comma-separated list of part names."""
    if dataset_parts in PART_SETS:
        return list(PART_SETS[dataset_parts])
    parts = [p for p in dataset_parts.split(",") if p]
    unknown = [p for p in parts if p not in SPLIT_OF]
    if unknown or not parts:
        raise ValueError(f"unknown LibriSpeech part(s) {unknown or dataset_parts!r}; "
                         f"known: librispeech, mini_librispeech, {', '.join(SPLIT_OF)}")
    return parts


def part_url(part: str, base_url: str = BASE_URL) -> str:
    """Download URL of a part's ``.tar.gz`` (resource 12 for the full corpus, 31 for the mini)."""
    return f"{base_url}/{12 if part in LIBRISPEECH else 31}/{part}.tar.gz"


def download_librispeech(dl_dir: str | Path, dataset_parts: str = "mini_librispeech",
                         base_url: str = BASE_URL) -> Path:
    """Make ``<dl_dir>/LibriSpeech/<part>`` complete for every part; return ``<dl_dir>/LibriSpeech``.

    Per part, in order: a completion marker -> done; ``<dl_dir>/<part>.tar.gz`` present ->
    verified (re-fetched when truncated and the network is up) and extracted; an extracted part
    directory without archive (a copy made elsewhere) -> trusted, with a warning (stage 1 checks
    every file); otherwise downloaded.  Without network and without the files this fails at once.
    """
    dl_dir = Path(dl_dir)
    corpus = dl_dir / "LibriSpeech"
    network: bool | None = None
    for part in resolve_parts(dataset_parts):
        archive = dl_dir / f"{part}.tar.gz"
        if marker(dl_dir, archive.name).is_file() and (corpus / part).is_dir():
            logging.info("LibriSpeech %s: already extracted", part)
            continue
        if not archive.is_file() and (corpus / part).is_dir() and any((corpus / part).rglob("*.trans.txt")):
            logging.warning("LibriSpeech %s: using the extracted copy in %s as is (no archive to verify)",
                            part, corpus / part)
            continue
        url = part_url(part, base_url)
        if network is None and not archive.is_file():
            network = network_available(url)
        hint = (f"Provide LibriSpeech part {part!r} with --dl-dir DIR, where DIR holds either "
                f"{part}.tar.gz (from {url}) or the extracted LibriSpeech/{part}/ tree.")
        if archive.is_file() or network:
            fetch_archive(url, archive, hint, network=network, checksum=f"md5:{PUBLISHED_MD5[part]}")
        else:
            raise CorpusUnavailableError(f"LibriSpeech part {part!r} not found in {dl_dir} and {url} cannot be "
                                         f"reached (no network).\n{hint}")
        # A stale partial tree from another tool must not mix with the fresh one.
        if (corpus / part).is_dir():
            import shutil

            shutil.rmtree(corpus / part)
        extract_archive(archive, dl_dir)
        logging.info("LibriSpeech %s: extracted into %s", part, corpus / part)
    return corpus


def read_librispeech(corpus_dir: str | Path, parts: list[str], checker: Checker) -> Pairs:
    """Pairs per recipe split, one per ``.trans.txt`` line (the fields Lhotse's
    ``prepare_librispeech`` gives: speaker = first id field, language ``English``).  No audio is
    opened here: stage 1 decodes every file once, later, and reports a missing one.  A bad line
    (not UTF-8, no transcript, unsafe id) goes through ``checker``; ids are unique across parts.
    """
    from lhotse import SupervisionSegment

    from speechae.recipes.common import pending_recording, row_ok, text_lines, unique_ids

    corpus_dir = Path(corpus_dir)
    found = []
    for part in parts:
        part_dir = corpus_dir / part
        if not part_dir.is_dir():
            raise FileNotFoundError(f"{part_dir}: LibriSpeech part missing; run stage 0 (download) first")
        for trans in sorted(part_dir.rglob("*.trans.txt")):
            for where, _, line in text_lines(trans, checker):
                if not line.strip():
                    continue
                fields = line.split(maxsplit=1)
                utt = fields[0]
                if len(fields) < 2:
                    checker.reject(utt, where, f"malformed line (no transcript): {line.strip()[:80]!r}")
                    continue
                speaker = utt.split("-")[0]
                if not row_ok(checker, utt, speaker, where, fields[1]):
                    continue
                flac = part_dir / Path(utt.replace("-", "/")).parent / f"{utt}.flac"
                sup = SupervisionSegment(id=utt, recording_id=utt, start=0.0, duration=0.0, channel=0,
                                         language="English", speaker=speaker, text=fields[1].strip())
                found.append((SPLIT_OF[part], where, (pending_recording(utt, flac), sup)))
    pairs: Pairs = {}
    for split, _, pair in unique_ids(found, lambda x: x[2][1].id, lambda x: x[1], checker):
        pairs.setdefault(split, []).append(pair)
    for part in parts:  # every requested split exists, even if all its lines were bad
        pairs.setdefault(SPLIT_OF[part], [])
    return pairs


def prepare_librispeech(corpus_dir: str | Path, out_dir: str | Path, dataset_parts: str = "mini_librispeech",
                        prefix: str = "librispeech", on_error: OnError = "fail", num_jobs: int = 1,
                        sample_rate: int = 16000, policy: AudioPolicy | None = None) -> dict[str, int]:
    """Stage 1: validated manifests for the recipe splits of ``dataset_parts``.

    ``corpus_dir`` is the ``LibriSpeech`` directory (or its parent).  Transcripts stay upper
    case as distributed.  ``policy``: see :class:`speechae.data.validate.AudioPolicy` (its
    ``sample_rate`` is replaced by ``sample_rate``).  Returns utterances per split.
    """
    from speechae.data.validate import Checker, current_policy
    from speechae.recipes.common import finish_manifests

    corpus_dir = Path(corpus_dir)
    if (corpus_dir / "LibriSpeech").is_dir():
        corpus_dir = corpus_dir / "LibriSpeech"
    checker = Checker(on_error, policy=policy or current_policy())
    pairs = read_librispeech(corpus_dir, resolve_parts(dataset_parts), checker)
    return finish_manifests(pairs, out_dir, prefix, checker, sample_rate=sample_rate, num_jobs=num_jobs)
