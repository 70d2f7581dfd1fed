"""Input checks shared by every recipe's manifest stage.

Each problem becomes a :class:`BadInputError` whose message starts with the offending file.
With ``on_error="skip"`` the item is dropped instead and listed in a skip file, so one broken
recording in a large corpus does not stop a stage (and nothing already written is lost).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import struct

import soundfile as sf

from speechae.utils.io import write_lines

OnError = Literal["fail", "skip"]


class BadInputError(ValueError):
    """A corpus file is unusable; the message names the file and the problem."""


def check_audio(path: str | Path, expected_sr: int | None = None, min_duration: float = 0.05,
                full_decode: bool = True) -> float:
    """Check that ``path`` is a readable, non-empty audio file; return its duration in seconds.

    ``full_decode`` reads every sample, which is the only way to catch a truncated file whose
    header promises more frames than it holds (libsndfile then fails or returns fewer frames).
    """
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: audio file is missing")
    if path.stat().st_size == 0:
        raise BadInputError(f"{path}: audio file is empty (0 bytes)")
    try:
        info = sf.info(str(path))
    except Exception as e:  # libsndfile raises RuntimeError/LibsndfileError with its own text
        raise BadInputError(f"{path}: cannot read audio header ({e})") from None
    if expected_sr is not None and info.samplerate != expected_sr:
        raise BadInputError(f"{path}: sample rate {info.samplerate} Hz, expected {expected_sr} Hz")
    frames = info.frames
    if info.format == "WAV":
        _check_wav_chunks(path)
    if full_decode:
        try:
            data, _ = sf.read(str(path), dtype="float32", always_2d=True)
        except Exception as e:
            raise BadInputError(f"{path}: audio is corrupt or truncated ({e})") from None
        if data.shape[0] < info.frames:
            raise BadInputError(f"{path}: truncated: header says {info.frames} samples, file holds {data.shape[0]}")
        frames = data.shape[0]
    duration = frames / info.samplerate if info.samplerate else 0.0
    if duration < min_duration:
        raise BadInputError(f"{path}: audio too short ({duration:.3f} s)")
    return duration


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
                    raise BadInputError(f"{path}: truncated: data chunk declares {length} bytes, "
                                        f"file holds {size - pos - 8}")
                return
            pos += 8 + length + (length & 1)


def check_text(text: str | bytes | None, where: str) -> str:
    """Return the transcript as ``str``; raise when it is missing, empty or not valid UTF-8."""
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
    return text


@dataclass
class Checker:
    """Applies the fail/skip policy and remembers what was skipped."""

    on_error: OnError = "fail"
    skipped: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.on_error not in ("fail", "skip"):
            raise ValueError(f"on_error must be 'fail' or 'skip', not {self.on_error!r}")

    def ok(self, item_id: str, fn, *args, **kwargs):  # noqa: ANN001, ANN201
        """Run check ``fn``; return its value, or None when the item is skipped."""
        try:
            return fn(*args, **kwargs)
        except BadInputError as e:
            if self.on_error == "fail":
                raise
            self.skipped.append(f"{item_id}\t{e}")
            return None

    def write(self, path: str | Path) -> None:
        """Write the skip list (always, so an empty list says 'nothing skipped')."""
        write_lines(path, self.skipped)
