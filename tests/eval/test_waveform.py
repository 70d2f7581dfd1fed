"""Waveform metrics and judges (speechae.eval.waveform): closed forms, limits and orderings.

Speech comes from espeak-ng at 16 kHz.  Judge tests skip only when their package (the ``audio``
extra, installed by tools/install.sh) is genuinely absent.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from speechae.data.synth import Speaker
from speechae.eval import waveform as W
from speechae.recipes.fixtures import speak

SR = 16000
SENTENCE = "This is a test of the speech recognition system."
OTHER = "Open the door please."


@pytest.fixture(scope="module")
def speech() -> dict[str, np.ndarray]:
    """Synthesised once per module: espeak-ng output varies by a few samples from call to call."""
    a = Speaker("a", "en-us", "bn", pitch=50, rate=130)
    b = Speaker("b", "en-us+f2", "bn", pitch=85, rate=175)
    return {
        "a": speak(SENTENCE, "en-us", a, SR).astype(np.float64),
        "b": speak(SENTENCE, "en-us+f2", b, SR).astype(np.float64),
        "other": speak(OTHER, "en-us", a, SR).astype(np.float64),
    }


@pytest.fixture(scope="module")
def scorer() -> W.WaveformScorer:
    """One scorer, so each judge's model is loaded once for the module."""
    return W.WaveformScorer(progress=False)


def _noise(n: int, std: float, seed: int = 0) -> np.ndarray:
    return std * np.random.default_rng(seed).standard_normal(n)


# --- SI-SDR ------------------------------------------------------------------------------------


def test_si_sdr_hand_computed() -> None:
    ref = np.array([1.0, -1.0, 1.0, -1.0])
    noise = np.array([1.0, 1.0, -1.0, -1.0])  # zero-mean and orthogonal to ref
    # target = 2 ref (energy 16), residual = noise (energy 4): 10 log10(16 / 4) = 6.0206 dB
    assert W.si_sdr(ref, 2 * ref + noise) == pytest.approx(10 * math.log10(4.0), abs=1e-12)
    # equal energies: 0 dB
    assert W.si_sdr(ref, ref + noise) == pytest.approx(0.0, abs=1e-12)
    # scale- and offset-invariant (both signals are made zero-mean first)
    assert W.si_sdr(ref + 3.0, 0.25 * (2 * ref + noise) - 7.0) == pytest.approx(10 * math.log10(4.0), abs=1e-12)


def test_si_sdr_limits() -> None:
    ref = np.array([1.0, -1.0, 1.0, -1.0])
    noise = np.array([1.0, 1.0, -1.0, -1.0])
    assert W.si_sdr(ref, 3 * ref) == math.inf
    assert W.si_sdr(ref, noise) == -math.inf
    with pytest.warns(RuntimeWarning, match="constant reference"):
        assert math.isnan(W.si_sdr(np.ones(4), noise))
    # lengths are trimmed to the shorter signal
    assert W.si_sdr(ref, np.concatenate([2 * ref + noise, [9.0, 9.0]])) == pytest.approx(10 * math.log10(4.0))


# --- WER ---------------------------------------------------------------------------------------


def test_normalize_words() -> None:
    assert W.normalize_words("Don't STOP, the well-known “Café”!") == \
        ["dont", "stop", "the", "well", "known", "café"]


def test_wer_hand_computed() -> None:
    assert W.edit_distance("a b c".split(), "a x c d".split()) == 2  # one substitution, one insertion
    assert W.edit_distance("a x c d".split(), "a b c".split()) == 2
    assert W.edit_distance("kitten sat".split(), []) == 2
    assert W.edit_distance([], "a b".split()) == 2
    # one deletion out of six words, after lowercasing and dropping punctuation
    assert W.wer("The cat sat on the mat.", "the cat sat on mat!!") == pytest.approx(1 / 6)
    assert W.word_errors("The cat sat on the mat.", "a cat sat on the hat and") == (3, 6)
    assert W.wer("hello world", "") == 1.0
    assert W.wer("hello world", "Hello, world.") == 0.0
    assert math.isnan(W.wer("", "anything"))


def test_is_english() -> None:
    assert [W.is_english(t) for t in ("en", "en-US", "en_gb", "eng", "bn", "", None)] == \
        [True, True, True, True, False, False, False]


# --- multi-resolution STFT ----------------------------------------------------------------------


def test_mr_stft_closed_forms() -> None:
    ref = _noise(SR, 0.1, seed=1)  # white noise: no STFT bin comes near the 1e-7 floor
    assert W.mr_stft_distance(ref, ref) == {"sc": 0.0, "logmag": 0.0}
    out = W.mr_stft_distance(ref, 2 * ref)
    assert out["sc"] == pytest.approx(1.0, abs=1e-12)  # || |X| - 2|X| || / || |X| ||
    assert out["logmag"] == pytest.approx(math.log(2.0), abs=1e-12)  # natural log
    half = W.mr_stft_distance(ref, 0.5 * ref)
    assert half["sc"] == pytest.approx(0.5, abs=1e-12)
    assert half["logmag"] == pytest.approx(math.log(2.0), abs=1e-12)


def test_mr_stft_matches_numpy_definition() -> None:
    """One resolution against an independent numpy STFT (reflect padding, periodic Hann)."""
    ref, hyp = _noise(4000, 0.1, seed=2), _noise(4000, 0.1, seed=3) + _noise(4000, 0.05, seed=2)
    n_fft, hop = 512, 128
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)

    def mag(x: np.ndarray) -> np.ndarray:
        x = np.pad(x, n_fft // 2, mode="reflect")
        frames = np.stack([x[i:i + n_fft] for i in range(0, len(x) - n_fft + 1, hop)])
        return np.maximum(np.abs(np.fft.rfft(frames * window, axis=1)), 1e-7)

    mr, mh = mag(ref), mag(hyp)
    out = W.mr_stft_distance(ref, hyp, resolutions=[(n_fft, hop, n_fft)])
    assert out["sc"] == pytest.approx(np.linalg.norm(mr - mh) / np.linalg.norm(mr), rel=1e-10)
    assert out["logmag"] == pytest.approx(np.mean(np.abs(np.log(mr) - np.log(mh))), rel=1e-10)


def test_mr_stft_rejects_too_short_signal() -> None:
    with pytest.raises(ValueError, match="too short"):
        W.mr_stft_distance(np.ones(1000), np.ones(1000))


# --- STOI and PESQ ------------------------------------------------------------------------------


def test_stoi(speech: dict[str, np.ndarray]) -> None:
    pytest.importorskip("pystoi")
    x = speech["a"]
    assert W.stoi(x, x, SR) == pytest.approx(1.0, abs=1e-6)
    light = W.stoi(x, x + _noise(len(x), 0.01), SR)
    heavy = W.stoi(x, x + _noise(len(x), 0.2), SR)
    unrelated = W.stoi(x, _noise(len(x), 0.1, seed=5), SR)
    assert 1.0 > light > heavy > unrelated
    assert unrelated < 0.5
    # undefined: a silent reference, and too little speech (pystoi's placeholder 1e-5) give NaN
    with pytest.warns(RuntimeWarning, match="silent reference"):
        assert math.isnan(W.stoi(np.zeros(SR), np.zeros(SR), SR))
    with pytest.warns(RuntimeWarning, match="too few non-silent frames"):
        assert math.isnan(W.stoi(x[:4000], x[:4000], SR))


def test_pesq_wb(speech: dict[str, np.ndarray]) -> None:
    pytest.importorskip("pesq")
    x = speech["a"]
    assert W.pesq_wb(x, x) >= 4.0
    degraded = W.pesq_wb(x, x + _noise(len(x), 0.02))
    assert 1.0 <= degraded < 2.5
    # silence: the package raises "No utterances detected"; the metric is NaN with the reason
    value, why = W.pesq_wb_or_reason(np.zeros(SR), np.zeros(SR))
    assert math.isnan(value) and "No utterances detected" in why
    with pytest.warns(RuntimeWarning, match="No utterances detected"):
        assert math.isnan(W.pesq_wb(np.zeros(SR), np.zeros(SR)))


# --- judges -------------------------------------------------------------------------------------


def test_speaker_similarity(speech: dict[str, np.ndarray], scorer: W.WaveformScorer) -> None:
    pytest.importorskip("resemblyzer")
    judge = scorer.judges["speaker"]
    x = speech["a"]
    assert judge.similarity(x, x, SR) == pytest.approx(1.0, abs=1e-6)
    noised = judge.similarity(x, x + _noise(len(x), 0.01), SR)
    other_speaker = judge.similarity(x, speech["b"], SR)
    assert 1.0 > noised > other_speaker > 0.0


def test_dnsmos(speech: dict[str, np.ndarray], scorer: W.WaveformScorer) -> None:
    pytest.importorskip("speechmos")
    judge = scorer.judges["dnsmos"]
    clean = judge.score(speech["a"], SR)
    assert W.DnsmosJudge(cache=False).score(speech["a"], SR) == pytest.approx(clean, abs=1e-5)
    noisy = judge.score(speech["a"] + _noise(len(speech["a"]), 0.03), SR)
    for out in (clean, noisy):
        assert set(out) == {"sig", "bak", "ovrl", "p808"}
        assert all(1.0 <= v <= 5.0 for v in out.values())
    assert clean["bak"] > noisy["bak"] + 0.5  # background noise is what BAK rates


def test_pocketsphinx_wer(speech: dict[str, np.ndarray], scorer: W.WaveformScorer) -> None:
    pytest.importorskip("pocketsphinx")
    judge = scorer.judges["asr"]
    text = judge.transcribe(speech["a"], SR)
    other = judge.transcribe(speech["other"], SR)
    # no decoder state carried between utterances (checked without the transcript cache)
    uncached = W.AsrJudge(cache=False)
    assert [uncached.transcribe(speech[k], SR) for k in ("other", "a", "a")] == [other, text, text]
    matched = W.wer(SENTENCE, text)
    mismatched = W.wer(SENTENCE, other)
    # The bundled en-us models are trained on natural speech; on espeak-ng's formant speech
    # they reach only about 50-80 % WER, but a matching transcript must still score far better.
    assert matched < 0.8
    assert mismatched >= matched + 0.2


# --- batch scorer --------------------------------------------------------------------------------


def test_scorer_batch(speech: dict[str, np.ndarray], scorer: W.WaveformScorer) -> None:
    for package in ("pystoi", "pesq", "resemblyzer", "pocketsphinx", "speechmos"):
        pytest.importorskip(package)
    x = speech["a"]
    noisy = x + _noise(len(x), 0.02)
    utts = [
        W.Utt("en1", ref=x, hyp=noisy[:-160], sr=SR, text=SENTENCE, language="en"),
        W.Utt("bn1", ref=x, hyp=x, sr=SR, text="আমি", language="bn"),
        W.Utt("silent", ref=np.zeros(SR), hyp=np.zeros(SR), sr=SR, text=None, language="en"),
    ]
    out = scorer.score(utts)
    assert out["num_utterances"] == 3
    per = out["per_utterance"]
    en = per["en1"]
    # per-utterance values are the library functions on the trimmed pair
    r, h = x[:-160], noisy[:-160]
    assert en["waveform.si_sdr_db"] == pytest.approx(W.si_sdr(r, h))
    assert en["waveform.stoi"] == pytest.approx(W.stoi(r, h, SR))
    assert en["waveform.pesq_wb"] == pytest.approx(W.pesq_wb(r, h))
    mr = W.mr_stft_distance(r, h)
    assert (en["waveform.mrstft_sc"], en["waveform.mrstft_logmag"]) == pytest.approx((mr["sc"], mr["logmag"]))
    assert en["judges.asr_wer"] == pytest.approx(W.wer(SENTENCE, scorer.judges["asr"].transcribe(h, SR)))
    assert en["judges.asr_wer_ref"] == pytest.approx(W.wer(SENTENCE, scorer.judges["asr"].transcribe(r, SR)))
    assert per["bn1"]["judges.speaker_sim"] == pytest.approx(1.0, abs=1e-6)
    assert "judges.asr_wer" not in per["bn1"]  # not English
    # silence: PESQ, SI-SDR, MR-STFT, speaker and DNSMOS are undefined, and nothing crashes
    assert math.isnan(per["silent"]["waveform.pesq_wb"]) and math.isnan(per["silent"]["judges.dnsmos_ovrl"])
    m, counts = out["metrics"], out["counts"]
    assert m["waveform.pesq_wb"] == pytest.approx((en["waveform.pesq_wb"] + per["bn1"]["waveform.pesq_wb"]) / 2)
    assert counts["waveform.pesq_wb"] == 2
    assert m["waveform.stoi"] == pytest.approx((en["waveform.stoi"] + per["bn1"]["waveform.stoi"]) / 2)
    assert counts["waveform.stoi"] == 2 and counts["judges.dnsmos_ovrl"] == 2
    assert counts["judges.asr_wer"] == 1 and m["judges.asr_wer"] == pytest.approx(en["judges.asr_wer"])
    expected = {"waveform.si_sdr_db", "waveform.stoi", "waveform.pesq_wb", "waveform.mrstft_sc",
                "waveform.mrstft_logmag", "judges.speaker_sim", "judges.asr_wer", "judges.asr_wer_ref",
                "judges.dnsmos_sig", "judges.dnsmos_bak", "judges.dnsmos_ovrl", "judges.dnsmos_p808"}
    assert set(m) == expected
    notes = "\n".join(out["notes"])
    assert "waveform.pesq_wb: NaN for 1 utterance(s) (PESQ undefined: NoUtterancesError: No utterances" in notes
    assert "waveform.si_sdr_db: NaN for 1 utterance(s) (SI-SDR undefined: constant reference)" in notes
    assert "waveform.stoi: NaN for 1 utterance(s) (STOI undefined: silent reference)" in notes
    assert "judges.speaker_sim: NaN for 1 utterance(s) (ValueError: silent signal)" in notes
    assert "trimmed 1 utterance(s)" in notes and "160 samples" in notes
    assert "asr: 2 utterance(s) skipped" in notes

    ref_out = scorer.score_reference([W.Utt("en1", ref=x, sr=SR, text=SENTENCE, language="en")])
    assert set(ref_out["metrics"]) == {"judges.asr_wer", "judges.dnsmos_sig", "judges.dnsmos_bak",
                                       "judges.dnsmos_ovrl", "judges.dnsmos_p808"}
    # the originals' WER is the same decode as the system's asr_wer_ref
    assert ref_out["metrics"]["judges.asr_wer"] == pytest.approx(en["judges.asr_wer_ref"])


def test_scorer_reports_missing_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(W, "_installed", lambda module: module not in ("resemblyzer", "pystoi", "pesq"))
    scorer = W.WaveformScorer(judges=("speaker",), progress=False)
    assert scorer.judges == {}
    x = _noise(SR, 0.1)
    out = scorer.score([W.Utt("u", ref=x, hyp=0.5 * x, sr=SR)])
    assert out["metrics"] == pytest.approx({"waveform.si_sdr_db": math.inf, "waveform.mrstft_sc": 0.5,
                                            "waveform.mrstft_logmag": math.log(2.0)})
    assert out["notes"] == ["waveform.stoi: skipped: pystoi not installed",
                            "waveform.pesq_wb: skipped: pesq not installed",
                            "speaker: skipped: resemblyzer not installed"]
    with pytest.raises(ValueError, match="unknown judges"):
        W.WaveformScorer(judges=("mos",))
    with pytest.raises(ValueError, match="duplicate utterance id"):
        scorer.score([W.Utt("u", ref=x, hyp=x), W.Utt("u", ref=x, hyp=x)])


def test_judge_availability(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(W, "_installed", lambda module: module != "pocketsphinx")

    def broken_import(name: str) -> None:
        raise ModuleNotFoundError("No module named 'pkg_resources'")

    monkeypatch.setattr(W.importlib, "import_module", broken_import)
    assert W.judge_availability() == {"speaker": True, "asr": False, "dnsmos": True}
    assert W.judge_availability(try_import=True) == {"speaker": False, "asr": False, "dnsmos": False}
