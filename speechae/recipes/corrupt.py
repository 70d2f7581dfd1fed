"""A corrupted OpenSLR 53 corpus: every kind of bad input stage 1 must catch, and what must happen to it.

:func:`write_corrupt_slr53` writes ``<out>/asr_bengali/`` laid out like the real corpus
(``utt_spk_text.tsv`` + ``data/<xx>/<utt>.flac``): a few clean utterances per speaker plus one
utterance (or TSV line) per :data:`KINDS` entry, and ``<out>/corruptions.tsv`` describing each
(``kind<TAB>id<TAB>outcome<TAB>marker``).  Outcomes:

``error``     a bad item: named by ``--on-error fail`` (which then writes nothing), dropped and
              listed in ``<prefix>_skipped.txt`` by ``--on-error skip``;
``dropped``   filtered out by duration: listed in ``<prefix>_skipped.txt``, never fatal;
``warning``   kept, listed in ``<prefix>_warnings.txt`` (resampled, channel 0 of several);
``accepted``  kept without a word (the input is valid, e.g. a byte-order mark or CRLF).

``marker`` is a phrase the reason must contain.  Clean audio is a short synthetic voiced
signal (no espeak-ng needed), so the whole corpus is written in about a second.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf

from speechae.data.synth import default_sentences
from speechae.utils.io import write_lines

SR = 16000
# The split fractions the corpus is built for: the duplicate-id kind puts one copy under a
# test speaker and one under a train speaker of this split.
DEV_FRACTION = TEST_FRACTION = 0.2


@dataclass
class Corruption:
    """One corrupted item and the outcome stage 1 must give it."""

    kind: str
    item: str  # the utterance id (as listed), or the listing's first field
    outcome: str  # error | dropped | warning | accepted
    marker: str  # phrase the reported reason must contain ("" for accepted)


def voiced(seconds: float, f0: float, rng: np.random.Generator, sr: int = SR) -> np.ndarray:
    """A speech-like test signal: harmonics of a gliding ``f0`` under a syllable-rate envelope, plus noise."""
    t = np.arange(int(seconds * sr)) / sr
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.1 * np.sin(2 * np.pi * 3 * t))) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 6))
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t + rng.uniform(0, 2 * np.pi))
    return (0.25 * env * x / 2 + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def _hexid(*parts: object, n: int = 10) -> str:
    return hashlib.sha1(":".join(map(str, parts)).encode()).hexdigest()[:n]


class _Builder:
    """Collects TSV lines and files; each kind adds itself through :meth:`utt`/:meth:`line`."""

    def __init__(self, corpus: Path, speakers: list[str], seed: int) -> None:
        self.corpus, self.speakers = corpus, speakers
        self.rng = np.random.default_rng(seed)
        self.sentences = default_sentences("bn")
        self.lines: list[bytes] = []
        self.found: list[Corruption] = []
        self.n = 0

    def text(self) -> str:
        self.n += 1
        return self.sentences[self.n % len(self.sentences)]

    def flac(self, utt: str) -> Path:
        path = self.corpus / "data" / utt[:2] / f"{utt}.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def audio(self, seconds: float = 0.8, sr: int = SR) -> np.ndarray:
        return voiced(seconds, 100 + 40 * (self.n % 5), self.rng, sr)

    def line(self, *fields: str | bytes, end: bytes = b"\n") -> None:
        self.lines.append(b"\t".join(f if isinstance(f, bytes) else f.encode() for f in fields) + end)

    def utt(self, kind: str, outcome: str, marker: str, write: Callable[[Path, str], None] | None = None,
            text: str | None = None, speaker: str | None = None) -> str:
        """A listed utterance whose file is written by ``write(path, utt)``."""
        utt = _hexid("corrupt", kind)
        if write is not None:
            write(self.flac(utt), utt)
        self.line(utt, speaker or self.speakers[len(self.found) % len(self.speakers)],
                  self.text() if text is None else text)
        self.found.append(Corruption(kind, utt, outcome, marker))
        return utt


def _wav_bytes(x: np.ndarray, sr: int, subtype: str) -> bytes:
    import io

    buf = io.BytesIO()
    sf.write(buf, x, sr, format="WAV", subtype=subtype)
    return buf.getvalue()


def _audio_kinds(b: _Builder) -> None:
    def good(path: Path, utt: str, seconds: float = 0.8, sr: int = SR) -> None:
        sf.write(path, b.audio(seconds, sr), sr, format="FLAC", subtype="PCM_16")

    def truncated_flac(path: Path, utt: str) -> None:
        good(path, utt, 2.0)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])

    def truncated_wav(path: Path, utt: str) -> None:
        data = _wav_bytes(b.audio(), SR, "PCM_16")
        path.write_bytes(data[: len(data) // 2])

    def float_wav(value: float) -> Callable[[Path, str], None]:
        def write(path: Path, utt: str) -> None:
            x = b.audio()
            x[len(x) // 3: len(x) // 3 + 5] = value
            path.write_bytes(_wav_bytes(x, SR, "FLOAT"))
        return write

    def constant(value: float) -> Callable[[Path, str], None]:
        return lambda path, utt: sf.write(path, np.full(SR, value, np.float32), SR, format="FLAC", subtype="PCM_16")

    def bad_header(path: Path, utt: str) -> None:
        good(path, utt)
        data = bytearray(path.read_bytes())
        data[4:42] = bytes(38)  # the STREAMINFO block: rate, channels, length all gone
        path.write_bytes(bytes(data))

    def stereo(path: Path, utt: str) -> None:
        x = b.audio()
        sf.write(path, np.stack([x, 0.5 * x[::-1]], axis=1), SR, format="FLAC", subtype="PCM_16")

    def symlink_loop(path: Path, utt: str) -> None:
        os.symlink(path.name, path)

    def broken_symlink(path: Path, utt: str) -> None:
        os.symlink("no-such-file.flac", path)

    b.utt("truncated_flac", "error", "corrupt or truncated", truncated_flac)
    b.utt("truncated_wav", "error", "truncated", truncated_wav)
    b.utt("zero_bytes", "error", "empty file (0 bytes)", lambda p, u: p.write_bytes(b""))
    b.utt("html_page", "error", "not an audio file (looks like HTML", lambda p, u: p.write_text(
        "<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body>gone</body></html>\n"))
    b.utt("text_file", "error", "not an audio file (looks like text", lambda p, u: p.write_text(
        "this file was saved from a text editor\n" * 8))
    b.utt("bad_header", "error", "cannot read audio header", bad_header)
    b.utt("random_bytes", "error", "cannot read audio header",
          lambda p, u: p.write_bytes(b.rng.integers(128, 256, 4096, dtype=np.uint8).tobytes()))
    b.utt("nan_samples", "error", "non-finite samples", float_wav(float("nan")))
    b.utt("inf_samples", "error", "non-finite samples", float_wav(float("inf")))
    b.utt("digital_silence", "error", "digital silence", constant(0.0))
    b.utt("dc_only", "error", "no signal", constant(0.25))
    b.utt("rate_8k", "error", "below the minimum 16000 Hz", lambda p, u: good(p, u, 0.8, 8000))
    b.utt("rate_44k1", "warning", "resampled from 44100 Hz", lambda p, u: good(p, u, 0.8, 44100))
    b.utt("stereo", "warning", "2 channels: channel 0 used", stereo)
    b.utt("too_long_150s", "dropped", "too long", lambda p, u: sf.write(
        p, np.tile(b.audio(1.0), 150), SR, format="FLAC", subtype="PCM_16"))
    b.utt("too_short", "dropped", "too short", lambda p, u: good(p, u, 0.05))
    b.utt("missing_file", "error", "audio file is missing", lambda p, u: None)  # its folder exists
    b.utt("symlink_loop", "error", "symlink loop", symlink_loop)
    b.utt("broken_symlink", "error", "broken symlink", broken_symlink)
    b.utt("directory", "error", "is a directory", lambda p, u: p.mkdir())


def _listing_kinds(b: _Builder, split_of: dict[str, str]) -> None:
    def good(utt: str) -> None:
        sf.write(b.flac(utt), b.audio(), SR, format="FLAC", subtype="PCM_16")

    def listed(kind: str, outcome: str, marker: str, *fields: str | bytes, end: bytes = b"\n") -> None:
        utt = _hexid("corrupt", kind)
        good(utt)
        fields = tuple(f.replace("{utt}", utt) if isinstance(f, str) else f for f in fields)
        b.line(*fields, end=end)
        b.found.append(Corruption(kind, fields[0], outcome, marker))

    spk = b.speakers[0]
    test_spk = next(s for s in b.speakers if split_of[s] == "test")
    train_spk = next(s for s in b.speakers if split_of[s] == "train")
    dup = _hexid("corrupt", "duplicate_id")
    good(dup)
    b.line(dup, train_spk, b.text())
    b.line(dup, test_spk, b.text())
    b.found.append(Corruption("duplicate_id_two_speakers", dup, "error", "listed 2 times"))
    listed("empty_transcript", "error", "transcript is empty", "{utt}", spk, "")
    listed("whitespace_transcript", "error", "transcript is empty", "{utt}", spk, " \u00a0  ")
    listed("punctuation_transcript", "error", "empty after normalisation", "{utt}", spk, "।")
    listed("non_utf8_transcript", "error", "not valid UTF-8", "{utt}", spk, "আমার".encode() + b"\xff\xfe")
    listed("control_characters", "error", "control character", "{utt}", spk, "আমার\x1b[31m সোনার")
    listed("two_fields", "error", "malformed line", "{utt}", spk)
    listed("four_fields", "error", "malformed line", "{utt}", spk, "আমার", "extra")
    listed("unknown_speaker", "error", "unknown speaker", "{utt}", "unknown", b.text())
    listed("empty_speaker", "error", "unknown speaker", "{utt}", "", b.text())
    listed("id_with_space", "error", "whitespace", "{utt} x", spk, b.text())
    listed("crlf_line_end", "accepted", "", "{utt}", spk, b.text(), end=b"\r\n")
    # ../<id> resolves to <out>/<id>.flac, outside the corpus; a valid file waits there, so
    # only the id check stands between it and the manifests.
    outside = _hexid("corrupt", "path_traversal")
    sf.write(b.corpus.parent / f"{outside}.flac", b.audio(), SR, format="FLAC", subtype="PCM_16")
    b.line(f"../{outside}", spk, b.text())
    b.found.append(Corruption("path_traversal", f"../{outside}", "error", "unsafe utterance id"))
    # An id of a zip with no folder here: that zip was not downloaded (--slr53-parts).
    used = {d.name[0] for d in (b.corpus / "data").iterdir()}
    part = next(k for k in "0123456789abcdef" if k not in used)
    b.line(f"{part}0{_hexid('corrupt', 'not_downloaded', n=8)}", spk, b.text())
    b.found.append(Corruption("part_not_downloaded", f"{part}0{_hexid('corrupt', 'not_downloaded', n=8)}",
                              "dropped", "not downloaded"))


@dataclass
class CorruptCorpus:
    """What :func:`write_corrupt_slr53` wrote."""

    root: Path  # holds asr_bengali/ (the --dl-dir of the Bengali recipe)
    corruptions: list[Corruption]
    clean: list[str]  # ids of the clean utterances


def write_corrupt_slr53(out_dir: str | Path, num_speakers: int = 6, utts_per_speaker: int = 3,
                        seed: int = 0) -> CorruptCorpus:
    """Write the corrupted corpus into ``out_dir`` (see the module docstring).

    The first TSV line (a clean utterance) starts with a byte-order mark (kind
    ``bom_first_line``, outcome ``accepted``).
    """
    from speechae.recipes.common import speaker_split

    out = Path(out_dir)
    corpus = out / "asr_bengali"
    corpus.mkdir(parents=True, exist_ok=True)
    speakers = [_hexid("spk", s, n=5) for s in range(num_speakers)]
    b = _Builder(corpus, speakers, seed)
    clean = []
    for s, spk in enumerate(speakers):
        for u in range(utts_per_speaker):
            clean.append(_hexid("clean", s, u))
            sf.write(b.flac(clean[-1]), b.audio(), SR, format="FLAC", subtype="PCM_16")
            b.line(clean[-1], spk, b.text())
    first = clean[0]
    b.lines[0] = b"\xef\xbb\xbf" + b.lines[0]
    b.found.append(Corruption("bom_first_line", first, "accepted", ""))
    _audio_kinds(b)
    _listing_kinds(b, speaker_split(speakers, DEV_FRACTION, TEST_FRACTION))
    (corpus / "utt_spk_text.tsv").write_bytes(b"".join(b.lines))
    write_lines(out / "corruptions.tsv", [f"{c.kind}\t{c.item}\t{c.outcome}\t{c.marker}" for c in b.found])
    return CorruptCorpus(out, b.found, clean)
