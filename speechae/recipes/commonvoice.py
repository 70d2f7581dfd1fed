"""Common Voice, one language (Bengali by default): locate/extract the manual download, read it.

Common Voice needs a manual download (an e-mail-gated form): the language tarball
``cv-corpus-<version>-<date>-bn.tar.gz`` unpacks to::

    cv-corpus-<version>-<date>/bn/{train,dev,test,validated,invalidated,other}.tsv
    cv-corpus-<version>-<date>/bn/clips/*.mp3       # 48 kHz (older releases) or 32 kHz MP3

Reading goes through Lhotse's ``prepare_commonvoice`` with ``languages`` passed explicitly
(its ``"auto"`` language list lacks ``bn``).  So that one bad clip can be skipped, Lhotse reads
a *view*: a folder with filtered copies of the TSVs (rows whose clip failed a check removed;
columns older releases lack added empty) and a symlink to the real ``clips/``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from typing import TYPE_CHECKING

from speechae.recipes.archives import CorpusUnavailableError, extract_archive, marker

if TYPE_CHECKING:
    from lhotse import Recording

    from speechae.data.validate import Checker
    from speechae.recipes.common import Pairs

SPLITS = ("train", "dev", "test")
# Columns Lhotse's parser reads; missing ones are added empty in the view.
_COLUMNS = ("client_id", "path", "sentence", "age", "gender", "accents", "variant")


def find_commonvoice(dl_dir: str | Path, language: str = "bn") -> Path:
    """Return ``cv-corpus-*/`` holding ``<language>/``, extracting a ``cv-corpus-*-<language>.tar.gz``
    found in ``dl_dir`` first (verified, through a temp dir).  Fails with download instructions."""
    dl_dir = Path(dl_dir)
    found = sorted(p.parent for p in dl_dir.glob(f"cv-corpus-*/{language}") if (p / "train.tsv").is_file())
    archives = sorted(dl_dir.glob(f"cv-corpus-*{language}*.tar.gz")) + sorted(dl_dir.glob(f"cv-corpus-*{language}*.tgz"))
    for archive in archives:
        if not marker(dl_dir, archive.name).is_file():
            extract_archive(archive, dl_dir)
            found = sorted(p.parent for p in dl_dir.glob(f"cv-corpus-*/{language}") if (p / "train.tsv").is_file())
    if not found:
        raise CorpusUnavailableError(
            f"Common Voice ({language}) not found in {dl_dir}.  Common Voice requires a manual download: "
            f"get the '{language}' dataset from https://commonvoice.mozilla.org/datasets (or Mozilla Data "
            f"Collective), then put cv-corpus-<version>-{language}.tar.gz or its extracted "
            f"cv-corpus-<version>/{language}/ folder into {dl_dir} (--dl-dir).")
    if len(found) > 1:
        logging.info("several Common Voice releases in %s; using the newest name %s", dl_dir, found[-1].name)
    return found[-1]


def _real_source(rec: Recording) -> Recording:
    from lhotse.utils import fastcopy

    src = rec.sources[0]
    return fastcopy(rec, sources=[fastcopy(src, source=str(Path(src.source).resolve()))])


def _read_tsv(path: Path, checker: Checker) -> tuple[list[str], list[tuple[str, dict[str, str]]]]:
    """Header and ``(where, row)`` pairs of a Common Voice TSV (plain tab-separated, no quoting;
    a byte-order mark is accepted).  A line that is not UTF-8 or has the wrong number of fields
    goes to ``checker``."""
    from speechae.recipes.common import text_lines

    lines = iter(text_lines(path, checker))
    header = next((line.split("\t") for _, _, line in lines), [])
    rows = []
    for where, _, line in lines:
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(header):
            checker.reject(fields[1] if len(fields) > 1 else where, where,
                           f"malformed line: {len(fields)} fields, the header has {len(header)}")
            continue
        rows.append((where, dict(zip(header, fields))))
    return header, rows


def read_commonvoice(corpus_dir: str | Path, view_dir: str | Path, checker: Checker, language: str = "bn",
                     num_jobs: int = 1) -> Pairs:
    """Pairs for train/dev/test of one language, via a filtered view and Lhotse's reader.

    Before Lhotse reads anything, every row is checked here: clip name (a plain file name),
    transcript, clip listed only once across the three splits, and the audio (decoded once;
    the report is reused by stage 1's final check)."""
    from lhotse.recipes.commonvoice import prepare_commonvoice

    from speechae.data.validate import check_id, check_text
    from speechae.recipes.common import unique_ids

    corpus_dir, view_dir = Path(corpus_dir), Path(view_dir)
    lang_dir = corpus_dir / language
    view_lang = view_dir / language
    view_lang.mkdir(parents=True, exist_ok=True)
    tables = {}
    for split in SPLITS:
        tsv = lang_dir / f"{split}.tsv"
        if not tsv.is_file():
            raise FileNotFoundError(f"{tsv}: missing (Common Voice {language} release incomplete?)")
        fields, rows = _read_tsv(tsv, checker)
        missing_cols = [c for c in ("client_id", "path", "sentence") if c not in fields]
        if missing_cols:
            raise ValueError(f"{tsv}: no column(s) {missing_cols}; is this a Common Voice TSV?")
        tables[split] = (fields, [(split, where, row) for where, row in rows])
    everything = [x for _, rows in tables.values() for x in rows]
    everything = [x for x in everything
                  if checker.ok(Path(x[2]["path"]).stem, check_id, x[2]["path"], x[1]) is not None
                  and checker.ok(Path(x[2]["path"]).stem, check_text, x[2].get("sentence"), x[1]) is not None]
    everything = unique_ids(everything, lambda x: Path(x[2]["path"]).stem, lambda x: x[1], checker)
    paths = [str(lang_dir / "clips" / row["path"]) for _, _, row in everything]
    keep = {split: [] for split in SPLITS}
    for (split, _, row), path, report in zip(everything, paths, checker.audio(paths, num_jobs)):
        if isinstance(report, str):
            checker.reject(Path(row["path"]).stem, path, report)
        else:
            keep[split].append(row)
    for split, (fields, _) in tables.items():
        out_fields = fields + [c for c in _COLUMNS if c not in fields]
        with open(view_lang / f"{split}.tsv", "w", encoding="utf-8", newline="") as f:
            f.write("\t".join(out_fields) + "\n")
            for row in keep[split]:
                f.write("\t".join(row.get(c) or "" for c in out_fields) + "\n")
    clips = view_lang / "clips"
    if clips.is_symlink() or clips.exists():
        clips.unlink()
    clips.symlink_to((lang_dir / "clips").resolve(), target_is_directory=True)
    shutil.rmtree(view_dir / "lhotse", ignore_errors=True)  # never reuse manifests of another filtering
    manifests = prepare_commonvoice(view_dir, output_dir=view_dir / "lhotse", languages=[language],
                                    splits=SPLITS, num_jobs=max(1, num_jobs))
    pairs: Pairs = {}
    for split in SPLITS:
        m = manifests[language][split]
        recs = m["recordings"]
        # Point sources at the real clips, not through the view's symlink.
        pairs[split] = [(_real_source(recs[s.recording_id]), s) for s in m["supervisions"]]
    return pairs
