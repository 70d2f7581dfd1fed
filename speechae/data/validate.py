"""Input checks shared by every recipe's manifest stage (stage 1), and the policy they apply.

One pass finds every problem.  A :class:`Checker` collects them; at the end of the pass
``--on-error fail`` stops the stage with the count and one line per item (``<file>: <problem>``)
and writes nothing, while ``--on-error skip`` drops the items and lists them in
``<prefix>_skipped.txt``, one line each: ``<id>\\t<file>\\t<reason>`` (control characters in
ids, paths and reasons are escaped, so an entry never spans lines).

The audio policy (:class:`AudioPolicy`) is the same for every preparer (tiny recipe,
LibriSpeech, Bengali, TSV corpora); its docstring is the reference text.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import struct
import unicodedata
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Callable, Iterator, Literal

import numpy as np
import soundfile as sf

from speechae.utils.io import write_lines

OnError = Literal["fail", "skip"]


class BadInputError(ValueError):
    """A corpus file or line is unusable; the message names the file and the problem.

    Built either from a whole message or from ``path`` and ``reason`` (then the message is
    ``"<path>: <reason>"`` and both parts stay available for the skip list).
    """

    def __init__(self, message: str | None = None, *, path: str | Path | None = None,
                 reason: str | None = None) -> None:
        super().__init__(message if message is not None else f"{path}: {reason}")
        self.path = None if path is None else str(path)
        self.reason = reason

    def parts(self) -> tuple[str, str]:
        """``(path, reason)``; for a plain message, split at its first ``": "``."""
        if self.path is not None and self.reason is not None:
            return self.path, self.reason
        path, sep, reason = str(self).partition(": ")
        return (path, reason) if sep else ("", str(self))


def bad(path: str | Path, reason: str) -> BadInputError:
    """The error for ``path`` with ``reason``."""
    return BadInputError(path=path, reason=reason)


def one_line(text: object) -> str:
    """``text`` with control characters (tab and newline included) escaped as ``\\xNN``/``\\uNNNN``."""
    out = []
    for ch in str(text):
        if unicodedata.category(ch) in ("Cc", "Zl", "Zp"):
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


@dataclass(frozen=True)
class AudioPolicy:
    """What stage 1 accepts.  The same rules for every preparer:

    * **Sample rate.**  Files at ``sample_rate`` (16 kHz) are used as they are.  Files at a
      higher rate are accepted and resampled to ``sample_rate`` when loaded (Lhotse resamples
      lazily); each is listed in ``<prefix>_warnings.txt`` and their count is logged.  Files
      below ``min_sample_rate`` (default: ``sample_rate``) are rejected as bad items:
      upsampling 8 kHz audio invents no bandwidth.  ``--min-sample-rate 8000`` accepts them,
      upsampled and listed like the others.
    * **Channels.**  Multi-channel files are accepted; channel 0 is used (no downmix: channels
      can be different microphones, and a downmix of out-of-phase channels cancels).  Each is
      listed in ``<prefix>_warnings.txt`` and their count is logged.
    * **Duration.**  Utterances shorter than ``min_duration`` (0.1 s) or longer than
      ``max_duration`` (30 s; ``0`` = no limit) are dropped from every split and listed in
      ``<prefix>_skipped.txt``, with their count logged.  This is a filter, not an error: it
      never stops the stage, also with ``--on-error fail``.
    * **Content.**  A file that is missing, a broken symlink or symlink loop, not a regular
      file, empty, not audio (HTML, text), has an unreadable header, is truncated or corrupt,
      holds NaN or Inf samples, or whose channel 0 is digital silence (every sample equal, or a
      standard deviation below ``silence_std`` = 1e-4, about -80 dBFS) is a bad item.
    """

    sample_rate: int = 16000
    min_sample_rate: int | None = None
    min_duration: float = 0.1
    max_duration: float = 30.0
    silence_std: float = 1e-4

    def __post_init__(self) -> None:
        if self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, not {self.sample_rate}")
        if self.max_duration and self.min_duration >= self.max_duration:
            raise ValueError(f"min_duration {self.min_duration} s must be below max_duration {self.max_duration} s")

    @property
    def lowest_rate(self) -> int:
        """The lowest sample rate accepted."""
        return self.min_sample_rate if self.min_sample_rate is not None else self.sample_rate

    def too_long(self, duration: float) -> bool:
        """``duration`` exceeds the maximum (when there is one)."""
        return bool(self.max_duration) and duration > self.max_duration

    def drop_reason(self, duration: float) -> str | None:
        """Why an utterance of ``duration`` seconds is filtered out, or None."""
        if self.too_long(duration):
            return f"too long: {duration:.2f} s > --max-duration {self.max_duration:g} s"
        if duration < self.min_duration:
            return f"too short: {duration:.3f} s < --min-duration {self.min_duration:g} s"
        return None

    def notes(self, report: AudioReport) -> list[str]:
        """Warnings for an accepted file (resampling, channel selection)."""
        out = []
        if report.sample_rate != self.sample_rate:
            out.append(f"resampled from {report.sample_rate} Hz to {self.sample_rate} Hz")
        if report.channels > 1:
            out.append(f"{report.channels} channels: channel 0 used")
        return out


_POLICY: ContextVar[AudioPolicy | None] = ContextVar("speechae_audio_policy", default=None)


@contextlib.contextmanager
def audio_policy(policy: AudioPolicy) -> Iterator[None]:
    """Make ``policy`` the default of every :class:`Checker` created inside the block (for
    preparers that do not take a policy argument themselves)."""
    token = _POLICY.set(policy)
    try:
        yield
    finally:
        _POLICY.reset(token)


def current_policy() -> AudioPolicy:
    """The policy set by :func:`audio_policy`, else the defaults."""
    return _POLICY.get() or AudioPolicy()


@dataclass(frozen=True)
class AudioReport:
    """What :func:`check_audio` found out about a usable file."""

    path: str
    sample_rate: int
    frames: int
    channels: int
    decoded: bool = True  # False: the header alone was read (too long to be kept anyway)

    @property
    def duration(self) -> float:
        """Seconds."""
        return self.frames / self.sample_rate


# First bytes of the audio containers libsndfile reads (WAV/RF64, FLAC, Ogg, MP3 with ID3,
# AIFF, AU, CAF, WavPack): such a file is never mistaken for text.
_AUDIO_MAGIC = (b"RIFF", b"RIFX", b"RF64", b"fLaC", b"OggS", b"ID3", b"FORM", b".snd", b"caff", b"wvpk")


def _sniff_text(head: bytes) -> str | None:
    """``"HTML"``/``"XML"``/``"JSON"``/``"text"`` when ``head`` is readable text, else None."""
    if not head or head.startswith(_AUDIO_MAGIC):
        return None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:  # invalid before the last (possibly cut) character
            return None
        text = head[:e.start].decode("utf-8")
    if not text or "\x00" in text:
        return None
    printable = sum(ch.isprintable() or ch in "\t\r\n" for ch in text)
    if printable < 0.95 * len(text):
        return None
    low = text.lstrip("\ufeff \t\r\n").lower()
    if low.startswith("<!doctype html") or "<html" in low or "<body" in low or "<head" in low:
        return "HTML"
    if low.startswith("<"):
        return "XML"
    if low.startswith(("{", "[")):
        return "JSON"
    return "text"


def _stat_problem(path: Path) -> str | None:
    """Why ``path`` cannot be opened as a regular file, or None."""
    try:
        st = os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symlink loop (the link points back to itself)"
        if os.path.islink(path):
            return f"broken symlink (its target {os.readlink(path)!r} does not exist)"
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return "audio file is missing"
        if e.errno == errno.EACCES:
            return "permission denied"
        return f"cannot open ({e.strerror})"
    if stat.S_ISDIR(st.st_mode):
        return "is a directory, not an audio file"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file (a pipe, socket or device)"
    if st.st_size == 0:
        return "empty file (0 bytes)"
    return None


def _header_problem(path: Path, e: Exception) -> str:
    msg = str(e)
    prefix = f"Error opening {str(path)!r}: "
    msg = msg[len(prefix):] if msg.startswith(prefix) else msg
    # libsndfile's MP3 reader says "File does not exist or is not a regular file (possibly a
    # pipe?)" for a file it cannot parse; the file exists, so say what is true.
    if "Format not recognised" in msg or "not a regular file" in msg:
        return "cannot read audio header: format not recognised"
    return f"cannot read audio header: {msg.rstrip('.')}"


def check_audio(path: str | Path, policy: AudioPolicy | None = None, full_decode: bool = True) -> AudioReport:
    """Check that ``path`` is usable audio under ``policy``; raise :class:`BadInputError` if not.

    ``full_decode`` reads every sample (in blocks), the only way to catch a truncated file
    whose header promises more frames than it holds, NaN/Inf samples and digital silence.  A
    file longer than ``policy.max_duration`` is not decoded (it is dropped anyway).
    """
    path = Path(path)
    policy = policy or AudioPolicy()
    problem = _stat_problem(path)
    if problem:
        raise bad(path, problem)
    try:
        with open(path, "rb") as f:
            head = f.read(1024)
    except OSError as e:
        raise bad(path, f"cannot open ({e.strerror})") from None
    kind = _sniff_text(head)
    if kind:
        snippet = one_line(head[:48].decode("utf-8", "replace").strip())
        raise bad(path, f"not an audio file (looks like {kind}: \"{snippet}\")")
    try:
        info = sf.info(str(path))
    except Exception as e:  # libsndfile raises RuntimeError/LibsndfileError with its own text
        raise bad(path, _header_problem(path, e)) from None
    if info.samplerate <= 0 or info.channels <= 0:
        raise bad(path, f"cannot read audio header: {info.samplerate} Hz, {info.channels} channels")
    if info.samplerate < policy.lowest_rate:
        raise bad(path, f"sample rate {info.samplerate} Hz is below the minimum {policy.lowest_rate} Hz "
                        f"(upsampling adds no bandwidth; --min-sample-rate accepts it)")
    if info.format == "WAV":
        _check_wav_chunks(path)
    report = AudioReport(str(path), info.samplerate, info.frames, info.channels, decoded=False)
    if policy.too_long(report.duration) or not full_decode:
        return report
    frames = _scan_samples(path, policy)
    if frames < info.frames:
        raise bad(path, f"truncated: header says {info.frames} samples, file holds {frames}")
    return replace(report, frames=frames, decoded=True)


def _scan_samples(path: Path, policy: AudioPolicy, block: int = 1 << 18) -> int:
    """Decode every sample; count frames, reject NaN/Inf and a silent channel 0."""
    frames, nonfinite = 0, Counter()
    total = total_sq = 0.0
    lo, hi = np.inf, -np.inf
    try:
        with sf.SoundFile(str(path)) as f:
            for x in f.blocks(blocksize=block, dtype="float64", always_2d=True):
                frames += len(x)
                finite = np.isfinite(x)
                if not finite.all():
                    nonfinite["NaN"] += int(np.isnan(x).sum())
                    nonfinite["Inf"] += int(np.isinf(x).sum())
                    continue
                c0 = x[:, 0]
                total += float(c0.sum())
                total_sq += float(np.square(c0).sum())
                lo, hi = min(lo, float(c0.min(initial=np.inf))), max(hi, float(c0.max(initial=-np.inf)))
    except Exception as e:
        raise bad(path, f"audio data corrupt or truncated ({one_line(e)})") from None
    if nonfinite:
        counts = ", ".join(f"{n} {k}" for k, n in sorted(nonfinite.items()) if n)
        raise bad(path, f"non-finite samples ({counts})")
    if frames:
        mean = total / frames
        std = max(total_sq / frames - mean * mean, 0.0) ** 0.5
        if lo == hi == 0.0:
            raise bad(path, "digital silence (every sample of channel 0 is 0)")
        if lo == hi or std < policy.silence_std:
            raise bad(path, f"no signal: channel 0 is constant "
                            f"(DC {mean:+.3g}, std {std:.1e} < {policy.silence_std:g})")
    return frames


def _check_wav_chunks(path: Path) -> None:
    """libsndfile silently clamps a truncated WAV's length to the bytes present, so compare the
    RIFF ``data`` chunk's declared size with what the file holds."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        header = f.read(12)
        if len(header) < 12 or header[:4] not in (b"RIFF", b"RIFX") or header[8:12] != b"WAVE":
            return  # not plain RIFF/WAVE (e.g. RF64): leave it to the decoder
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            cid, length = struct.unpack("<4sI", f.read(8))
            if cid == b"data":
                if pos + 8 + length > size:
                    raise bad(path, f"truncated: data chunk declares {length} bytes, file holds {size - pos - 8}")
                return
            pos += 8 + length + (length & 1)


def _check_one(path: str, policy: AudioPolicy, full_decode: bool) -> AudioReport | str:
    try:
        return check_audio(path, policy, full_decode)
    except BadInputError as e:
        return e.parts()[1]


def check_audio_files(paths: list[str], policy: AudioPolicy, num_jobs: int = 1,
                      full_decode: bool = True) -> list[AudioReport | str]:
    """:func:`check_audio` for every path (in ``num_jobs`` processes): a report or a reason each."""
    fn = partial(_check_one, policy=policy, full_decode=full_decode)
    if num_jobs <= 1 or len(paths) < 64:
        return [fn(p) for p in paths]
    with ProcessPoolExecutor(num_jobs) as ex:
        return list(ex.map(fn, paths, chunksize=64))


def check_text(text: str | bytes | None, where: str) -> str:
    """Return the transcript as ``str``; raise when it is missing, empty, not valid UTF-8 or
    holds control characters."""
    if text is None:
        raise BadInputError(f"{where}: transcript is missing")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise BadInputError(f"{where}: transcript is not valid UTF-8 ({e.reason} at byte {e.start})") from None
    if "\ufffd" in text:
        raise BadInputError(f"{where}: transcript contains U+FFFD (it was not valid UTF-8 when decoded)")
    if not text.strip():
        raise BadInputError(f"{where}: transcript is empty")
    ctrl = sorted({f"U+{ord(ch):04X}" for ch in text if unicodedata.category(ch) == "Cc"})
    if ctrl:
        raise BadInputError(f"{where}: transcript contains control character(s) {', '.join(ctrl)}")
    return text


def check_id(item_id: str, where: str) -> str:
    """An utterance id must be a plain file-name component: ids become file and storage names
    (features, units), so ``/``, ``..``, whitespace and control characters are refused."""
    if not item_id:
        raise BadInputError(f"{where}: empty utterance id")
    if "/" in item_id or "\\" in item_id or item_id in (".", "..") or item_id.startswith("."):
        raise BadInputError(f"{where}: unsafe utterance id {one_line(item_id)!r} (path separators or leading dot)")
    if any(ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf") for ch in item_id):
        raise BadInputError(f"{where}: utterance id {one_line(item_id)!r} contains whitespace or control characters")
    return item_id


# Speaker fields that mean "unknown": every utterance with one would be one pseudo-speaker,
# which breaks speaker-disjoint splits and the speaker probe.
_UNKNOWN_SPEAKERS = frozenset({"", "-", "?", "unknown", "unk", "none", "null", "nan", "n/a", "na"})


def check_speaker(speaker: str, where: str) -> str:
    """A speaker id must be present, known and printable."""
    if speaker.strip().lower() in _UNKNOWN_SPEAKERS:
        raise BadInputError(f"{where}: unknown speaker {one_line(speaker)!r}")
    if any(unicodedata.category(ch) == "Cc" for ch in speaker):
        raise BadInputError(f"{where}: speaker id {one_line(speaker)!r} contains control characters")
    return speaker


@dataclass
class Problem:
    """One dropped or flagged item."""

    item: str
    path: str
    reason: str

    def line(self) -> str:
        """``id<TAB>path<TAB>reason`` on one line."""
        return "\t".join(one_line(x) for x in (self.item, self.path, self.reason))

    def describe(self) -> str:
        """``path: reason [id]`` (the id left out when it is the file's name)."""
        tail = "" if Path(self.path).stem == self.item else f" [{one_line(self.item)}]"
        return f"{one_line(self.path)}: {one_line(self.reason)}{tail}"


@dataclass
class Checker:
    """One validation pass: the fail/skip policy, the audio policy, and what was found.

    ``errors`` are bad items (fatal at the end with ``fail``, dropped with ``skip``),
    ``dropped`` the items filtered out by duration, ``warnings`` accepted items worth a note.
    ``reports`` caches one :class:`AudioReport` (or failure reason) per file, so a reader that
    checks audio early does not make stage 1 decode anything twice.
    """

    on_error: OnError = "fail"
    policy: AudioPolicy = field(default_factory=current_policy)
    errors: list[Problem] = field(default_factory=list)
    dropped: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    reports: dict[str, AudioReport | str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.on_error not in ("fail", "skip"):
            raise ValueError(f"on_error must be 'fail' or 'skip', not {self.on_error!r}")

    def ok(self, item_id: str, fn: Callable, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        """Run check ``fn``; return its value, or None (the problem recorded) when it fails."""
        try:
            return fn(*args, **kwargs)
        except BadInputError as e:
            self.reject(item_id, *e.parts())
            return None

    def reject(self, item_id: str, path: str | Path, reason: str) -> None:
        """Record a bad item."""
        self.errors.append(Problem(item_id, str(path), reason))

    def drop(self, item_id: str, path: str | Path, reason: str) -> None:
        """Record an item removed by a filter (never fatal)."""
        self.dropped.append(Problem(item_id, str(path), reason))

    def warn(self, item_id: str, path: str | Path, reason: str) -> None:
        """Record a note about an accepted item."""
        self.warnings.append(Problem(item_id, str(path), reason))

    @property
    def skipped(self) -> list[str]:
        """Skip-list lines: bad items, then filtered ones."""
        return [p.line() for p in self.errors + self.dropped]

    def audio(self, paths: list[str], num_jobs: int = 1, full_decode: bool = True) -> list[AudioReport | str]:
        """Check every file once (cached by real path); a report or a failure reason each."""
        keys = [os.path.realpath(p) for p in paths]
        todo = sorted({k: p for k, p in zip(keys, paths) if k not in self.reports}.items())
        for (key, _), result in zip(todo, check_audio_files([p for _, p in todo], self.policy, num_jobs, full_decode)):
            self.reports[key] = result
        return [self.reports[k] for k in keys]

    def summary(self, limit: int | None = None) -> str:
        """The count and one line per bad item."""
        shown = self.errors if limit is None else self.errors[:limit]
        lines = [f"{len(self.errors)} bad item(s):"] + [f"  {p.describe()}" for p in shown]
        if len(shown) < len(self.errors):
            lines.append(f"  ... and {len(self.errors) - len(shown)} more")
        return "\n".join(lines)

    def raise_if_failed(self) -> None:
        """With ``fail``: raise one error listing every bad item found (nothing is written)."""
        if self.on_error == "fail" and self.errors:
            raise BadInputError(f"{self.summary()}\nNothing was written. Fix or remove these items, or rerun with "
                                f"--on-error skip to drop them (they are then listed in <prefix>_skipped.txt).")

    def fatal(self, message: str) -> BadInputError:
        """An error for a problem that ends the pass, listing the bad items found so far."""
        return BadInputError(f"{message}\n{self.summary()}" if self.errors else message)

    def write(self, out_dir: str | Path, prefix: str) -> None:
        """Write ``<prefix>_skipped.txt`` and ``<prefix>_warnings.txt`` (always, so that an empty
        file says "nothing"), and log the counts."""
        out_dir = Path(out_dir)
        write_lines(out_dir / f"{prefix}_skipped.txt", self.skipped)
        write_lines(out_dir / f"{prefix}_warnings.txt", [p.line() for p in self.warnings])
        if self.errors:
            logging.warning("skipped %d bad item(s); see %s", len(self.errors), out_dir / f"{prefix}_skipped.txt")
        for why, n in sorted(Counter(p.reason.split(":")[0] for p in self.dropped).items()):
            logging.warning("dropped %d item(s): %s (duration limits %g-%g s); see %s", n, why,
                            self.policy.min_duration, self.policy.max_duration or float("inf"),
                            out_dir / f"{prefix}_skipped.txt")
        notes = Counter(p.reason for p in self.warnings)
        for reason, n in sorted(notes.items()):
            logging.warning("%d file(s): %s; see %s", n, reason, out_dir / f"{prefix}_warnings.txt")
