"""Small synthetic corpora laid out exactly like the real ones, for testing the recipes.

Speech comes from espeak-ng (English voices for LibriSpeech, Bengali for the others), one
pseudo-speaker per (voice variant, pitch, rate) as in :mod:`speechae.data.synth`.  Layouts:

``librispeech``  ``LibriSpeech/<part>/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac`` (16 kHz FLAC),
                 ``<spk>-<chapter>.trans.txt`` (upper case, no punctuation but apostrophes),
                 ``SPEAKERS.TXT`` / ``CHAPTERS.TXT`` / ``BOOKS.TXT`` / ``LICENSE.TXT`` / ``README.TXT``;
                 archives ``<part>.tar.gz`` (each holding ``LibriSpeech/<part>/`` and the ``*.TXT``).
``slr53``        ``asr_bengali/utt_spk_text.tsv`` + ``asr_bengali/data/<xx>/<utt>.flac``
                 (hex ids, 16 kHz FLAC); archives ``asr_bengali_{0..f}.zip``.
``commonvoice``  ``cv-corpus-<ver>/bn/{train,dev,test,validated,invalidated,other}.tsv`` +
                 ``clips/common_voice_bn_<n>.mp3`` (48 kHz MP3), speaker-disjoint splits;
                 archive ``cv-corpus-<ver>-bn.tar.gz``.
``bengaliai``    ``train.csv`` (``id,sentence,split``), ``train_mp3s/<id>.mp3`` (32 kHz MP3),
                 ``test_mp3s/``; archive ``bengaliai-speech.zip``.

With ``archive=True`` the archives are written to ``<out>/archives/`` as well, so that a recipe
can be pointed at ``--dl-dir <out>/archives`` to exercise verification and extraction.
"""

from __future__ import annotations

import csv
import hashlib
import math
import random
import re
import tarfile
import zipfile
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from speechae.data.synth import Speaker, default_sentences, make_speakers
from speechae.utils.io import atomic_path

Layout = Literal["librispeech", "slr53", "commonvoice", "bengaliai"]
LAYOUTS = ("librispeech", "slr53", "commonvoice", "bengaliai")
CV_RELEASE = "cv-corpus-17.0-2024-03-15"


def speak(text: str, voice: str, speaker: Speaker, sample_rate: int) -> np.ndarray:
    """espeak-ng speech for ``text`` as float32 at ``sample_rate``."""
    from speechae.data.espeak import Espeak

    syn = Espeak.get().synthesize(text, voice=voice, rate=speaker.rate, pitch=speaker.pitch)
    audio = syn.audio.astype(np.float32) / 32768.0
    g = math.gcd(sample_rate, syn.sample_rate)
    audio = resample_poly(audio, sample_rate // g, syn.sample_rate // g).astype(np.float32)
    return np.clip(audio, -0.99, 0.99)


def _hexid(*parts: object, n: int) -> str:
    return hashlib.sha1(":".join(map(str, parts)).encode()).hexdigest()[:n]


def _write(path: Path, audio: np.ndarray, sr: int, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "MP3":
        sf.write(path, audio, sr, format="MP3")
    else:
        sf.write(path, audio, sr, format=fmt, subtype="PCM_16")


def _sentences(language: str, n: int, rng: random.Random) -> list[str]:
    pool = default_sentences(language)
    return rng.sample(pool, n) if n <= len(pool) else rng.choices(pool, k=n)


def _libri_text(s: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^A-Z' ]", " ", s.upper())).strip()


def _tar(archive: Path, root: Path, members: list[str]) -> None:
    with atomic_path(archive) as tmp:
        with tarfile.open(tmp, "w:gz") as tf:
            for m in members:
                tf.add(root / m, arcname=m)


def _zip(archive: Path, root: Path, members: list[Path]) -> None:
    with atomic_path(archive) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
            for m in members:
                zf.write(m, arcname=str(m.relative_to(root)))


def librispeech_fixture(out: Path, speakers: list[Speaker], utts: int, rng: random.Random,
                        parts: tuple[str, ...], archive: bool) -> None:
    """See the module docstring."""
    corpus = out / "LibriSpeech"
    spk_lines = [";ID  |SEX| SUBSET           |MINUTES| NAME"]
    chap_lines = [";ID    |READER|MINUTES| SUBSET           | PROJ.|BOOK ID| CH. TITLE | PROJECT TITLE"]
    n = 0
    for p, part in enumerate(parts):
        for s, spk in enumerate(speakers):
            spk_id, chapter = 100 * (p + 1) + s, 1000 * (p + 1) + 10 * s
            sex = "F" if "+f" in spk.en_voice else "M"
            spk_lines.append(f"{spk_id:<5}| {sex} | {part:<16} | 1.00 | Reader {spk_id}")
            chap_lines.append(f"{chapter:<7}| {spk_id:<6}| 1.00 | {part:<16} | 1 | 1 | Chapter | Book")
            cdir = corpus / part / str(spk_id) / str(chapter)
            lines = []
            for u, text in enumerate(_sentences("en", utts, rng)):
                utt = f"{spk_id}-{chapter}-{u:04d}"
                _write(cdir / f"{utt}.flac", speak(text, spk.en_voice, spk, 16000), 16000, "FLAC")
                lines.append(f"{utt} {_libri_text(text)}")
                n += 1
            (cdir / f"{spk_id}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (corpus / "SPEAKERS.TXT").write_text("\n".join(spk_lines) + "\n")
    (corpus / "CHAPTERS.TXT").write_text("\n".join(chap_lines) + "\n")
    (corpus / "BOOKS.TXT").write_text(";ID    |BOOK TITLE\n1     | A synthetic book\n")
    (corpus / "LICENSE.TXT").write_text("Synthetic fixture (espeak-ng speech); no license restrictions.\n")
    (corpus / "README.TXT").write_text("speechae fixture laid out like LibriSpeech.\n")
    if archive:
        txt = [f"LibriSpeech/{f}" for f in ("SPEAKERS.TXT", "CHAPTERS.TXT", "BOOKS.TXT", "LICENSE.TXT", "README.TXT")]
        for part in parts:
            _tar(out / "archives" / f"{part}.tar.gz", out, txt + [f"LibriSpeech/{part}"])


def slr53_fixture(out: Path, speakers: list[Speaker], utts: int, rng: random.Random, archive: bool) -> None:
    """See the module docstring."""
    corpus = out / "asr_bengali"
    rows = []
    for s, spk in enumerate(speakers):
        spk_id = _hexid("spk", s, n=5)
        for u, text in enumerate(_sentences("bn", utts, rng)):
            utt = _hexid("utt", s, u, n=10)
            _write(corpus / "data" / utt[:2] / f"{utt}.flac", speak(text, spk.bn_voice, spk, 16000), 16000, "FLAC")
            rows.append(f"{utt}\t{spk_id}\t{text}")
    (corpus / "utt_spk_text.tsv").write_text("\n".join(sorted(rows)) + "\n", encoding="utf-8")
    if archive:
        for k in "0123456789abcdef":
            members = [corpus / "utt_spk_text.tsv"] + sorted(
                f for d in (corpus / "data").glob(f"{k}?") for f in d.iterdir())
            _zip(out / "archives" / f"asr_bengali_{k}.zip", out, members)


def commonvoice_fixture(out: Path, speakers: list[Speaker], utts: int, rng: random.Random, archive: bool) -> None:
    """See the module docstring.  Speakers are dealt to test, dev, then train (speaker-disjoint)."""
    lang = out / CV_RELEASE / "bn"
    cols = ["client_id", "path", "sentence_id", "sentence", "sentence_domain", "up_votes", "down_votes",
            "age", "gender", "accents", "variant", "locale", "segment"]
    split_rows: dict[str, list[list[str]]] = {k: [] for k in ("train", "dev", "test", "validated", "invalidated", "other")}
    n = 0
    for s, spk in enumerate(speakers):
        split = "test" if s == 0 else "dev" if s == 1 else "train"
        client = _hexid("client", s, n=64)
        for text in _sentences("bn", utts, rng):
            n += 1
            clip = f"common_voice_bn_{30000000 + n}.mp3"
            _write(lang / "clips" / clip, speak(text, spk.bn_voice, spk, 48000), 48000, "MP3")
            row = [client, clip, _hexid("sent", text, n=64), text, "", "2", "0", "twenties",
                   "female_feminine" if "+f" in spk.bn_voice else "male_masculine", "", "", "bn", ""]
            split_rows[split].append(row)
            split_rows["validated"].append(row)
    for name, rows in split_rows.items():
        with open(lang / f"{name}.tsv", "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_NONE, escapechar="\\")
            w.writerow(cols)
            w.writerows(rows)
    if archive:
        _tar(out / "archives" / f"{CV_RELEASE}-bn.tar.gz", out, [f"{CV_RELEASE}/bn"])


def bengaliai_fixture(out: Path, speakers: list[Speaker], utts: int, rng: random.Random, archive: bool) -> None:
    """See the module docstring.  About a third of the utterances form the ``valid`` part."""
    lines = ["id,sentence,split"]
    root = out / "bengaliai-speech"
    n = 0
    for s, spk in enumerate(speakers):
        for text in _sentences("bn", utts, rng):
            n += 1
            utt = _hexid("bai", s, n, n=12)
            _write(root / "train_mp3s" / f"{utt}.mp3", speak(text, spk.bn_voice, spk, 32000), 32000, "MP3")
            lines.append(f"{utt},{text},{'valid' if n % 3 == 0 else 'train'}")
    for i, spk in enumerate(speakers[:2]):
        _write(root / "test_mp3s" / f"test{i}.mp3", speak("আমার সোনার বাংলা", spk.bn_voice, spk, 32000), 32000, "MP3")
    (root / "train.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    if archive:
        _zip(out / "archives" / "bengaliai-speech.zip", root, sorted(p for p in root.rglob("*") if p.is_file()))


def write_fixture(layout: Layout, out_dir: str | Path, num_speakers: int = 5, utts_per_speaker: int = 3,
                  archive: bool = False, seed: int = 0,
                  librispeech_parts: tuple[str, ...] = ("train-clean-5", "dev-clean-2")) -> Path:
    """Write a fixture corpus of ``layout`` into ``out_dir`` (built in a temp dir, then moved)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    if num_speakers < 3:
        raise ValueError("fixtures need >= 3 speakers (train/dev/test are speaker-disjoint)")
    rng = random.Random(seed)
    speakers = make_speakers(num_speakers, seed)
    out_dir = Path(out_dir)
    with atomic_path(out_dir, is_dir=True) as tmp:
        if layout == "librispeech":
            librispeech_fixture(tmp, speakers, utts_per_speaker, rng, tuple(librispeech_parts), archive)
        elif layout == "slr53":
            slr53_fixture(tmp, speakers, utts_per_speaker, rng, archive)
        elif layout == "commonvoice":
            commonvoice_fixture(tmp, speakers, utts_per_speaker, rng, archive)
        else:
            bengaliai_fixture(tmp, speakers, utts_per_speaker, rng, archive)
    return out_dir
