"""A minimal ctypes binding to the espeak-ng library, for synthetic corpora with exact phone times.

espeak-ng (GPL-3) is loaded at run time, never vendored: from the ``espeakng-loader`` wheel when
installed, else a system ``libespeak-ng`` (Debian's ``espeak-ng`` package).  Synthesis runs in
synchronous mode; phoneme events carry the sample offset at which each phone starts, which
gives frame-exact alignments for free.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass

import numpy as np

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INIT_PHONEME_EVENTS = 0x0001
_INIT_PHONEME_IPA = 0x0002
_EVENT_LIST_TERMINATED = 0
_EVENT_PHONEME = 7
_PARAM_RATE = 1
_PARAM_PITCH = 3
_PARAM_RANGE = 4
_CHARS_UTF8 = 1
# Stress marks are prosody, not phones: drop them so that /ˈa/ and /a/ share one label.
_STRESS = str.maketrans("", "", "ˈˌ")


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


class EspeakUnavailable(RuntimeError):
    """Neither espeakng-loader nor a system libespeak-ng could be loaded."""


@dataclass
class Synthesis:
    """One synthesized utterance at the engine's native rate."""

    audio: np.ndarray  # int16 samples
    sample_rate: int
    phones: list[tuple[str, int, int]]  # (IPA phone, start sample, end sample)


def _find_library() -> tuple[str, str | None]:
    try:
        import espeakng_loader

        return espeakng_loader.get_library_path(), espeakng_loader.get_data_path()
    except ImportError:
        pass
    name = ctypes.util.find_library("espeak-ng")
    if name is None:
        raise EspeakUnavailable(
            "espeak-ng not found: `pip install espeakng-loader` (tools/install.sh does this) "
            "or `apt-get install espeak-ng`"
        )
    return name, None


class Espeak:
    """The espeak-ng engine.  One instance per process (the C library keeps global state)."""

    _instance: "Espeak | None" = None

    def __init__(self) -> None:
        lib_path, data_path = _find_library()
        self._lib = ctypes.CDLL(lib_path)
        self._lib.espeak_Initialize.restype = ctypes.c_int
        self._lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]
        path = data_path.encode() if data_path else None
        rate = self._lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, path, _INIT_PHONEME_EVENTS | _INIT_PHONEME_IPA)
        if rate <= 0:
            raise EspeakUnavailable(f"espeak_Initialize failed (data path {data_path})")
        self.sample_rate = rate
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[str, int]] = []
        self._callback = _CALLBACK(self._on_audio)  # keep a reference: C holds only the pointer
        self._lib.espeak_SetSynthCallback(self._callback)

    @classmethod
    def get(cls) -> "Espeak":
        """The process-wide engine, created on first use."""
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def _on_audio(self, wav, num_samples, events) -> int:  # noqa: ANN001 (ctypes callback)
        if num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            ev = events[i]
            if ev.type == _EVENT_PHONEME:
                self._events.append((ev.id.string.decode("utf-8", "ignore"), ev.sample))
            i += 1
        return 0

    def synthesize(self, text: str, voice: str, rate: int = 170, pitch: int = 50, pitch_range: int = 50) -> Synthesis:
        """Speak ``text`` with ``voice`` (e.g. ``en-us+f2``, ``bn+m3``); rate in words/min, pitch 0-100."""
        if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice '{voice}'")
        self._lib.espeak_SetParameter(_PARAM_RATE, int(rate), 0)
        self._lib.espeak_SetParameter(_PARAM_PITCH, int(pitch), 0)
        self._lib.espeak_SetParameter(_PARAM_RANGE, int(pitch_range), 0)
        self._chunks, self._events = [], []
        data = text.encode("utf-8")
        err = self._lib.espeak_Synth(data, len(data) + 1, 0, 0, 0, _CHARS_UTF8, None, None)
        self._lib.espeak_Synchronize()
        if err != 0:
            raise RuntimeError(f"espeak_Synth failed with code {err} for {text!r}")
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        phones = []
        # Each phone ends where the next event (phone or pause marker, empty name) begins.
        for (name, start), (_, end) in zip(self._events, self._events[1:] + [("", len(audio))]):
            name = name.translate(_STRESS).strip()
            if name and end > start:
                phones.append((name, start, min(end, len(audio))))
        return Synthesis(audio=audio, sample_rate=self.sample_rate, phones=phones)
