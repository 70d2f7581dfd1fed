"""Waveform quality of resynthesised speech: signal metrics and optional pretrained judges.

Each utterance pairs an original waveform ``ref`` with a resynthesised one ``hyp`` (for
example a vocoder's output for the autoencoder's reconstructed log-mel), both mono at one
sample rate ``sr``; when their lengths differ both are trimmed to the shorter.

Signal metrics (need only numpy/torch, plus ``pystoi`` and ``pesq`` for STOI and PESQ):

* :func:`si_sdr` -- scale-invariant SDR in dB (Le Roux et al., 2019);
* :func:`stoi` -- short-time objective intelligibility (Taal et al., 2011), via ``pystoi``;
* :func:`pesq_wb` -- wide-band PESQ MOS-LQO (ITU-T P.862.2), via ``pesq``;
* :func:`mr_stft_distance` -- multi-resolution STFT spectral convergence and log-magnitude
  distance (Yamamoto et al., 2020).

Pretrained judges, each optional (``pip install 'speechae[audio]'``; every one ships its weights
inside its wheel, so nothing is downloaded at run time):

* :class:`SpeakerJudge` -- GE2E speaker-embedding cosine similarity (``resemblyzer``);
* :class:`AsrJudge` -- word error rate of a pocketsphinx en-us decode (English only);
* :class:`DnsmosJudge` -- DNSMOS P.835 SIG/BAK/OVRL (``speechmos``' ONNX models).

:class:`WaveformScorer` scores a batch of :class:`Utt` and returns means, counts,
per-utterance values and notes (metric keys ``waveform.*`` and ``judges.*``);
:meth:`WaveformScorer.score_reference` scores the originals with the single-signal judges so
that they can be reported beside each system.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import re
import unicodedata
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.signal import resample_poly
from tqdm import tqdm

PESQ_SR = 16000  # P.862.2 wide-band is defined at 16 kHz
JUDGE_SR = 16000  # GE2E (resemblyzer), pocketsphinx en-us and DNSMOS all take 16 kHz input
# Parallel WaveGAN-style resolutions: (FFT size, hop, Hann window length = FFT size).
MRSTFT_RESOLUTIONS: tuple[tuple[int, int, int], ...] = ((512, 128, 512), (1024, 256, 1024), (2048, 512, 2048))
# Floor on STFT magnitudes before the log, as in the Parallel WaveGAN implementation (1e-7).
MRSTFT_EPS = 1e-7
JUDGES = ("speaker", "asr", "dnsmos")
# The Python package (module name) each judge needs.
JUDGE_PACKAGES = {"speaker": "resemblyzer", "asr": "pocketsphinx", "dnsmos": "speechmos"}
# Signal metrics that need a package of the ``audio`` extra.
METRIC_PACKAGES = {"waveform.stoi": "pystoi", "waveform.pesq_wb": "pesq"}


# ---------------------------------------------------------------------------------------------
# Helpers


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported (checked without importing it)."""
    return importlib.util.find_spec(module) is not None


def judge_availability(try_import: bool = False) -> dict[str, bool]:
    """``{judge: available}`` for every judge in :data:`JUDGES` (see :data:`JUDGE_PACKAGES`).

    By default a judge is available when its package is installed (found without importing
    it); ``try_import=True`` also imports the package, catching installs that are present but
    broken (e.g. webrtcvad without ``pkg_resources``), at the cost of the imports (seconds)."""
    out = {}
    for name in JUDGES:
        ok = _installed(JUDGE_PACKAGES[name])
        if ok and try_import:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    importlib.import_module(JUDGE_PACKAGES[name])
            except Exception:
                ok = False
        out[name] = ok
    return out


def align(ref: np.ndarray, hyp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both signals as 1-D float64 arrays trimmed to the shorter length.

    Shapes: ``ref (T1,)``, ``hyp (T2,)`` -> two arrays of shape ``(min(T1, T2),)``."""
    r = np.asarray(ref, dtype=np.float64).reshape(-1)
    h = np.asarray(hyp, dtype=np.float64).reshape(-1)
    n = min(len(r), len(h))
    return r[:n], h[:n]


def resample(wav: np.ndarray, sr: int, target_sr: int) -> np.ndarray:
    """``wav (T,)`` resampled from ``sr`` to ``target_sr`` with a polyphase filter
    (``scipy.signal.resample_poly``); returned unchanged when the rates agree."""
    if sr == target_sr:
        return np.asarray(wav)
    g = math.gcd(int(sr), int(target_sr))
    return resample_poly(np.asarray(wav, dtype=np.float64), target_sr // g, sr // g)


def _reason(exc: BaseException) -> str:
    """A short one-line description of ``exc`` for notes."""
    msg = exc.args[0] if exc.args else ""
    if isinstance(msg, bytes):  # cypesq raises with byte-string messages
        msg = msg.decode("utf-8", "replace")
    msg = str(msg).strip().splitlines()[0] if str(msg).strip() else ""
    return f"{type(exc).__name__}: {msg[:120]}" if msg else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# Signal metrics


def si_sdr(ref: np.ndarray, hyp: np.ndarray) -> float:
    """Scale-invariant signal-to-distortion ratio of ``hyp`` against ``ref``, in dB.

    Le Roux, Wisdom, Erdogan & Hershey (2019), "SDR -- half-baked or well done?", ICASSP,
    Eqs. (1)-(3): both signals are made zero-mean, ``hyp`` is projected on ``ref``,
    ``e_target = (<hyp, ref> / ||ref||^2) ref``, ``e_res = hyp - e_target``, and
    ``SI-SDR = 10 log10(||e_target||^2 / ||e_res||^2)``.  Invariant to the gain of ``hyp`` and
    to constant offsets of either signal.  ``+inf`` when ``hyp`` is an exact multiple of
    ``ref``; NaN when ``ref`` is constant.  Shapes ``(T,)``; lengths are trimmed to the shorter.
    """
    r, h = align(ref, hyp)
    r = r - r.mean()
    h = h - h.mean()
    ref_energy = float(r @ r)
    if ref_energy == 0.0:
        warnings.warn("SI-SDR undefined: constant reference", RuntimeWarning, stacklevel=2)
        return float("nan")
    target = (float(h @ r) / ref_energy) * r
    residual = h - target
    res_energy = float(residual @ residual)
    target_energy = float(target @ target)
    if res_energy == 0.0:
        return float("inf")
    if target_energy == 0.0:
        return float("-inf")
    return 10.0 * math.log10(target_energy / res_energy)


def stoi(ref: np.ndarray, hyp: np.ndarray, sr: int) -> float:
    """Short-time objective intelligibility of ``hyp`` given the clean ``ref`` (0..1, higher is
    more intelligible).

    Taal, Hendriks, Heusdens & Jensen (2011), "An algorithm for intelligibility prediction of
    time-frequency weighted noisy speech", IEEE TASLP 19(7): one-third-octave band envelopes
    over 384 ms segments, correlated after clipping; computed by ``pystoi`` (``extended=False``),
    which resamples to 10 kHz and drops silent frames itself.  Returns NaN (with a
    ``RuntimeWarning``) for a silent ``ref`` and where pystoi would return its placeholder
    1e-5 because too little non-silent signal is left.  Shapes ``(T,)``.
    """
    from pystoi import stoi as _stoi

    r, h = align(ref, hyp)
    if not np.any(r):  # pystoi would correlate all-zero envelopes and return 0
        warnings.warn("STOI undefined: silent reference", RuntimeWarning, stacklevel=2)
        return float("nan")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = float(_stoi(r, h, int(sr), extended=False))
    for w in caught:
        if "Not enough STFT frames" in str(w.message):
            warnings.warn("STOI undefined: too few non-silent frames", RuntimeWarning, stacklevel=2)
            return float("nan")
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return value


def pesq_wb_or_reason(ref: np.ndarray, hyp: np.ndarray, sr: int = PESQ_SR) -> tuple[float, str | None]:
    """:func:`pesq_wb` plus the reason when it is NaN (``None`` when it is a number)."""
    from pesq import pesq as _pesq

    r, h = align(ref, hyp)
    r, h = resample(r, sr, PESQ_SR), resample(h, sr, PESQ_SR)
    try:
        with np.errstate(divide="ignore", invalid="ignore"):  # it normalises silence by 0 first
            return float(_pesq(PESQ_SR, r, h, "wb")), None
    except Exception as exc:  # cypesq.NoUtterancesError, BufferTooShortError, ...
        return float("nan"), _reason(exc)


def pesq_wb(ref: np.ndarray, hyp: np.ndarray, sr: int = PESQ_SR) -> float:
    """Wide-band PESQ of ``hyp`` against ``ref`` as MOS-LQO (about 1.04 .. 4.64).

    ITU-T Rec. P.862.2 (2007), "Wideband extension to Recommendation P.862", with the P.862.2
    mapping of the raw PESQ score to MOS-LQO; computed by the ``pesq`` package (mode ``"wb"``).
    Signals at another rate are first resampled to 16 kHz.  Returns NaN (and emits a
    ``RuntimeWarning`` with the reason) when the package raises, e.g. "No utterances detected"
    for silence or a too-short buffer.  Shapes ``(T,)``.
    """
    value, why = pesq_wb_or_reason(ref, hyp, sr)
    if why is not None:
        warnings.warn(f"PESQ undefined: {why}", RuntimeWarning, stacklevel=2)
    return value


def mr_stft_distance(ref: np.ndarray, hyp: np.ndarray,
                     resolutions: Sequence[tuple[int, int, int]] = MRSTFT_RESOLUTIONS,
                     eps: float = MRSTFT_EPS) -> dict[str, float]:
    """Multi-resolution STFT distance: ``{"sc": ..., "logmag": ...}`` averaged over resolutions.

    Yamamoto, Song & Kim (2020), "Parallel WaveGAN", ICASSP, Eqs. (4)-(6), with
    ``|X| = max(|STFT(x)|, eps)`` for each (FFT size, hop, Hann window length):

    * spectral convergence ``SC = || |X_ref| - |X_hyp| ||_F / || |X_ref| ||_F``;
    * log-magnitude distance ``LM = mean over bins and frames of |ln|X_ref| - ln|X_hyp||``
      (natural logarithm; an L1 mean, as in the paper's ``(1/N) ||.||_1``).

    Both are 0 for identical signals; ``hyp = a * ref`` (``a > 0``) gives ``SC = |a - 1|`` and
    ``LM = |ln a|`` wherever the magnitudes exceed ``eps / min(a, 1)``.  Frames are centred
    with reflect padding (``torch.stft(center=True)``), in float64.  The signals must be
    longer than half the largest FFT size.  Shapes ``(T,)``; lengths trimmed to the shorter.
    """
    r, h = align(ref, hyp)
    x = torch.from_numpy(np.stack([r, h]))
    sc, lm = [], []
    for n_fft, hop, win in resolutions:
        if x.shape[1] <= n_fft // 2:
            raise ValueError(f"signal of {x.shape[1]} samples is too short for an FFT of {n_fft}")
        spec = torch.stft(x, n_fft=n_fft, hop_length=hop, win_length=win,
                          window=torch.hann_window(win, dtype=torch.float64), center=True,
                          pad_mode="reflect", return_complex=True)
        mag = spec.abs().clamp_min(eps)
        mag_ref, mag_hyp = mag[0], mag[1]
        sc.append(float(torch.linalg.norm(mag_ref - mag_hyp) / torch.linalg.norm(mag_ref)))
        lm.append(float((mag_ref.log() - mag_hyp.log()).abs().mean()))
    return {"sc": float(np.mean(sc)), "logmag": float(np.mean(lm))}


# ---------------------------------------------------------------------------------------------
# Word error rate


def normalize_words(text: str) -> list[str]:
    """Words of ``text`` for WER scoring: NFKC, lowercase, apostrophes removed ("don't" ->
    "dont", so ASR and transcript spellings meet), every other punctuation character (Unicode
    category P*) turned into a space, then split on whitespace."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"['\u2019\u02bc]", "", text)
    text = "".join(" " if unicodedata.category(c).startswith("P") else c for c in text)
    return text.split()


def edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Levenshtein distance between two word sequences: the least number of substitutions,
    deletions and insertions (each of cost 1) turning ``ref`` into ``hyp`` (Levenshtein, 1966;
    Wagner & Fischer, 1974 dynamic programme)."""
    prev = list(range(len(hyp) + 1))
    for i, rw in enumerate(ref, start=1):
        cur = [i] + [0] * len(hyp)
        for j, hw in enumerate(hyp, start=1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (rw != hw))
        prev = cur
    return prev[-1]


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """``(edits, reference words)`` after :func:`normalize_words`; their ratio is the WER."""
    r, h = normalize_words(reference), normalize_words(hypothesis)
    return edit_distance(r, h), len(r)


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate ``(S + D + I) / N`` of ``hypothesis`` against ``reference`` (N words),
    from the Levenshtein alignment of :func:`normalize_words`.  NaN for an empty reference."""
    edits, n = word_errors(reference, hypothesis)
    return edits / n if n else float("nan")


def is_english(language: str | None) -> bool:
    """Whether a language tag names English (``en``, ``en-US``, ``en_gb``, ``eng``)."""
    if not language:
        return False
    return re.split(r"[-_]", language.strip().lower())[0] in ("en", "eng")


# ---------------------------------------------------------------------------------------------
# Pretrained judges (each loads its model once, lazily)


class SpeakerJudge:
    """Speaker similarity from the GE2E VoiceEncoder of ``resemblyzer`` (Wan, Wang, Papir &
    Lopez Moreno, 2018, "Generalized end-to-end loss for speaker verification"; weights
    ``pretrained.pt`` ship inside the wheel).  Runs on CPU with torch's thread setting."""

    def __init__(self) -> None:
        self._encoder: Any = None

    def _load(self) -> Any:
        if self._encoder is None:
            with warnings.catch_warnings():
                # webrtcvad (a resemblyzer dependency) imports the deprecated pkg_resources.
                warnings.simplefilter("ignore", UserWarning)
                from resemblyzer import VoiceEncoder
            self._encoder = VoiceEncoder("cpu", verbose=False)
        return self._encoder

    def embed(self, wav: np.ndarray, sr: int) -> np.ndarray:
        """The L2-normalised 256-dim utterance embedding of ``wav (T,)``, after resemblyzer's
        own preprocessing (16 kHz, volume normalised to -30 dBFS, long silences trimmed by VAD)."""
        from resemblyzer import preprocess_wav

        encoder = self._load()
        if not np.any(wav):
            raise ValueError("silent signal")
        x = preprocess_wav(resample(np.asarray(wav, np.float64), sr, JUDGE_SR).astype(np.float32), JUDGE_SR)
        if x.size == 0:
            raise ValueError("no speech left after voice-activity trimming")
        return np.asarray(encoder.embed_utterance(x), dtype=np.float64)

    def similarity(self, ref: np.ndarray, hyp: np.ndarray, sr: int) -> float:
        """Cosine similarity of the utterance embeddings of ``ref`` and ``hyp`` (1 for the same
        signal; GE2E embeddings are non-negative, so the value lies in [0, 1])."""
        a, b = self.embed(ref, sr), self.embed(hyp, sr)
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


class AsrJudge:
    """Intelligibility as the WER of a pocketsphinx decode (Huggins-Daines et al., 2006,
    "PocketSphinx: a free, real-time continuous speech recognition system for hand-held
    devices"), with the en-us acoustic model, language model and dictionary bundled in the
    ``pocketsphinx`` wheel.  English only.  With ``cache`` (default) transcripts are kept by the
    audio's digest, so the originals are decoded once however many systems are scored."""

    def __init__(self, cache: bool = True) -> None:
        self._decoder: Any = None
        self._cache: dict[bytes, str] | None = {} if cache else None

    def _load(self) -> Any:
        if self._decoder is None:
            from pocketsphinx import Decoder

            self._decoder = Decoder(samprate=JUDGE_SR, loglevel="FATAL")
        return self._decoder

    def transcribe(self, wav: np.ndarray, sr: int) -> str:
        """The best hypothesis for ``wav (T,)`` (float in [-1, 1], resampled to 16 kHz and sent
        as 16-bit PCM); the empty string when nothing is recognised.  Each call starts from the
        configured initial feature state, so the result does not depend on earlier calls."""
        x = resample(np.asarray(wav, np.float64), sr, JUDGE_SR)
        pcm = (np.clip(x, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()
        if self._cache is None:
            return self._decode(pcm)
        key = hashlib.sha1(pcm).digest()
        if key not in self._cache:
            self._cache[key] = self._decode(pcm)
        return self._cache[key]

    def _decode(self, pcm: bytes) -> str:
        decoder = self._load()
        # Live cepstral-mean and noise estimates otherwise carry over from the previous
        # utterance, which made the same audio decode differently depending on what came before.
        decoder.reinit_feat()
        decoder.start_utt()
        decoder.process_raw(pcm, full_utt=True)
        decoder.end_utt()
        hyp = decoder.hyp()
        return hyp.hypstr if hyp is not None else ""


class DnsmosJudge:
    """DNSMOS P.835 (Reddy, Gopal & Cutler, 2022, "DNSMOS P.835: a non-intrusive perceptual
    objective speech quality metric to evaluate noise suppressors", ICASSP): predicted SIG
    (speech), BAK (background) and OVRL (overall) MOS, plus the P.808 overall MOS, from the ONNX
    models bundled with ``speechmos`` (non-personalised ``sig_bak_ovr.onnx`` and ``model_v8.onnx``)
    and its polynomial calibration.  ONNX Runtime uses torch's intra-op thread count.  With
    ``cache`` (default) scores are kept by the audio's digest, so the originals are scored once
    however many systems are scored."""

    def __init__(self, cache: bool = True) -> None:
        self._model: Any = None
        self._cache: dict[bytes, dict[str, float]] | None = {} if cache else None

    def _load(self) -> Any:
        if self._model is None:
            import os

            import onnxruntime as ort
            from speechmos import dnsmos

            options = ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            options.inter_op_num_threads = 1
            root = os.path.dirname(os.path.abspath(dnsmos.__file__))
            model = dnsmos.DNSMOS.__new__(dnsmos.DNSMOS)  # its __init__ takes no session options
            model.primary_model_path = os.path.join(root, "dnsmos_models", "sig_bak_ovr.onnx")
            model.onnx_sess = ort.InferenceSession(model.primary_model_path, options,
                                                   providers=["CPUExecutionProvider"])
            model.p808_onnx_sess = ort.InferenceSession(os.path.join(root, "dnsmos_models", "model_v8.onnx"),
                                                        options, providers=["CPUExecutionProvider"])
            self._model = model
        return self._model

    def score(self, wav: np.ndarray, sr: int) -> dict[str, float]:
        """``{"sig", "bak", "ovrl", "p808"}`` for ``wav (T,)``, resampled to 16 kHz and clipped
        to [-1, 1] (as writing it to 16-bit PCM would); clips under 9.01 s are repeated to that
        length and longer ones scored on 1 s hops and averaged, as in the reference
        implementation."""
        x = np.clip(resample(np.asarray(wav, np.float64), sr, JUDGE_SR), -1.0, 1.0).astype(np.float32)
        if x.size == 0 or not np.any(x):
            raise ValueError("empty or silent signal")
        if self._cache is None:
            return self._predict(x)
        key = hashlib.sha1(x.tobytes()).digest()
        if key not in self._cache:
            self._cache[key] = self._predict(x)
        return dict(self._cache[key])

    def _predict(self, x: np.ndarray) -> dict[str, float]:
        out = self._load()(x, JUDGE_SR, False)
        return {"sig": float(out["sig_mos"]), "bak": float(out["bak_mos"]),
                "ovrl": float(out["ovrl_mos"]), "p808": float(out["p808_mos"])}


# ---------------------------------------------------------------------------------------------
# Batch scoring


@dataclass
class Utt:
    """One utterance to score: original ``ref`` and resynthesised ``hyp`` waveforms, shape
    ``(T,)`` float in [-1, 1] at ``sr`` Hz (``hyp`` may be ``None`` for
    :meth:`WaveformScorer.score_reference`); ``text`` is the reference transcript and
    ``language`` its tag (``"en"``, ``"bn"``, ...), used by the ASR judge."""

    id: str
    ref: np.ndarray
    hyp: np.ndarray | None = None
    sr: int = 16000
    text: str | None = None
    language: str | None = None


class WaveformScorer:
    """Scores batches of :class:`Utt` with the signal metrics and the selected judges.

    ``judges`` is a subset of :data:`JUDGES`; a judge (or STOI/PESQ) whose package is not
    installed is skipped with the note ``"skipped: <package> not installed"`` and gives no
    keys.  Models are
    loaded once per scorer, on first use.  ``signal_metrics=False`` leaves out STOI, PESQ,
    SI-SDR and MR-STFT (for instance to run only the judges)."""

    def __init__(self, judges: Sequence[str] = JUDGES, signal_metrics: bool = True, progress: bool = True) -> None:
        unknown = set(judges) - set(JUDGES)
        if unknown:
            raise ValueError(f"unknown judges {sorted(unknown)}; known: {list(JUDGES)}")
        self.signal_metrics = signal_metrics
        self.progress = progress
        self.skipped: dict[str, str] = {}
        self.judges: dict[str, Any] = {}
        makers = {"speaker": SpeakerJudge, "asr": AsrJudge, "dnsmos": DnsmosJudge}
        if signal_metrics:
            for key, package in METRIC_PACKAGES.items():
                if not _installed(package):
                    self.skipped[key] = f"skipped: {package} not installed"
        for name in judges:
            package = JUDGE_PACKAGES[name]
            if _installed(package):
                self.judges[name] = makers[name]()
            else:
                self.skipped[name] = f"skipped: {package} not installed"

    def score(self, utterances: Iterable[Utt]) -> dict[str, Any]:
        """Scores of the resynthesised ``hyp`` of every utterance against its ``ref``.

        Returns ``{"metrics": {key: mean}, "counts": {key: n}, "per_utterance": {id: {key:
        value}}, "notes": [str], "num_utterances": int}`` with keys ``waveform.si_sdr_db``,
        ``waveform.stoi``, ``waveform.pesq_wb``, ``waveform.mrstft_sc``,
        ``waveform.mrstft_logmag``, ``judges.speaker_sim``, ``judges.dnsmos_{sig,bak,ovrl,p808}``
        (of ``hyp``), ``judges.asr_wer`` (of ``hyp``) and ``judges.asr_wer_ref`` (of ``ref``).
        Means skip NaN (``counts`` says how many values entered each); the two WERs are
        corpus-level, total edits over total reference words of the English utterances with a
        transcript.  A metric that fails on an utterance gives NaN there and a note."""
        return self._run(utterances, reference_only=False)

    def score_reference(self, refs: Iterable[Utt]) -> dict[str, Any]:
        """Single-signal judges of the originals ``ref`` (``hyp`` is ignored): DNSMOS and the
        pocketsphinx WER, under the same keys as :meth:`score` gives a system
        (``judges.dnsmos_*``, ``judges.asr_wer``), so the originals form one more row beside
        the systems.  Same return layout as :meth:`score`."""
        return self._run(refs, reference_only=True)

    def _run(self, utterances: Iterable[Utt], reference_only: bool) -> dict[str, Any]:
        per_utt: dict[str, dict[str, float]] = {}
        errors: dict[str, list[int]] = {"judges.asr_wer": [0, 0], "judges.asr_wer_ref": [0, 0]}
        failures: Counter[tuple[str, str]] = Counter()
        trimmed, max_diff, non_english = 0, 0, 0
        desc = "waveform reference" if reference_only else "waveform"
        for utt in tqdm(utterances, desc=desc, unit="utt", disable=not self.progress):
            if utt.id in per_utt:
                raise ValueError(f"duplicate utterance id {utt.id}")
            ref = np.asarray(utt.ref, dtype=np.float64).reshape(-1)
            if reference_only:
                hyp = ref
            else:
                if utt.hyp is None:
                    raise ValueError(f"utterance {utt.id} has no hyp")
                hyp = np.asarray(utt.hyp, dtype=np.float64).reshape(-1)
                if len(hyp) != len(ref):
                    trimmed += 1
                    max_diff = max(max_diff, abs(len(hyp) - len(ref)))
                ref, hyp = align(ref, hyp)
            values: dict[str, float] = {}

            def attempt(keys: Sequence[str], fn: Any) -> None:
                # One bad utterance must not end the evaluation: an exception or a NaN becomes
                # NaN plus a note with the reason (the exception, else the last warning).
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    try:
                        out, why = [float(v) for v in fn()], None
                    except Exception as exc:
                        out, why = [float("nan")] * len(keys), _reason(exc)
                for key, value in zip(keys, out):
                    values[key] = value
                    if math.isnan(value):
                        failures[(key, why or (str(caught[-1].message)[:120] if caught else "undefined"))] += 1

            if self.signal_metrics and not reference_only:
                attempt(["waveform.si_sdr_db"], lambda: [si_sdr(ref, hyp)])
                if "waveform.stoi" not in self.skipped:
                    attempt(["waveform.stoi"], lambda: [stoi(ref, hyp, utt.sr)])
                if "waveform.pesq_wb" not in self.skipped:
                    attempt(["waveform.pesq_wb"], lambda: [pesq_wb(ref, hyp, utt.sr)])
                attempt(["waveform.mrstft_sc", "waveform.mrstft_logmag"],
                        lambda: list(mr_stft_distance(ref, hyp).values()))
            if "speaker" in self.judges and not reference_only:
                attempt(["judges.speaker_sim"], lambda: [self.judges["speaker"].similarity(ref, hyp, utt.sr)])
            if "dnsmos" in self.judges:
                keys = ["judges.dnsmos_sig", "judges.dnsmos_bak", "judges.dnsmos_ovrl", "judges.dnsmos_p808"]
                attempt(keys, lambda: list(self.judges["dnsmos"].score(hyp, utt.sr).values()))
            if "asr" in self.judges:
                if is_english(utt.language) and utt.text:
                    signals = {"judges.asr_wer": hyp} if reference_only else {"judges.asr_wer": hyp,
                                                                              "judges.asr_wer_ref": ref}
                    for key, wav in signals.items():
                        try:
                            edits, n = word_errors(utt.text, self.judges["asr"].transcribe(wav, utt.sr))
                        except Exception as exc:
                            failures[(key, _reason(exc))] += 1
                            continue
                        errors[key][0] += edits
                        errors[key][1] += n
                        values[key] = edits / n if n else float("nan")
                else:
                    non_english += 1
            per_utt[utt.id] = values
        return self._summarise(per_utt, errors, failures, trimmed, max_diff, non_english)

    def _summarise(self, per_utt: dict[str, dict[str, float]], errors: dict[str, list[int]],
                   failures: Counter[tuple[str, str]], trimmed: int, max_diff: int,
                   non_english: int) -> dict[str, Any]:
        keys = sorted({k for values in per_utt.values() for k in values})
        metrics: dict[str, float] = {}
        counts: dict[str, int] = {}
        for key in keys:
            column = np.array([v[key] for v in per_utt.values() if key in v], dtype=np.float64)
            finite = column[~np.isnan(column)]
            counts[key] = int(finite.size)
            if key in errors:
                edits, words = errors[key]
                metrics[key] = edits / words if words else float("nan")
            else:
                metrics[key] = float(finite.mean()) if finite.size else float("nan")
        notes = [f"{name}: {why}" for name, why in self.skipped.items()]
        notes += [f"{key}: NaN for {n} utterance(s) ({why})" for (key, why), n in sorted(failures.items())]
        if trimmed:
            notes.append(f"trimmed {trimmed} utterance(s) to the shorter of ref/hyp "
                         f"(largest difference {max_diff} samples)")
        if non_english and "asr" in self.judges:
            notes.append(f"asr: {non_english} utterance(s) skipped (not English or no transcript)")
        return {"metrics": metrics, "counts": counts, "per_utterance": per_utt, "notes": notes,
                "num_utterances": len(per_utt)}
