import numpy as np
import soundfile as sf

from speechae.data.espeak import Espeak
from speechae.data.synth import default_sentences, make_speakers, read_utterances


def test_both_languages_give_phones_inside_audio():
    engine = Espeak.get()
    for voice, text in (("en-us+f2", "The quick brown fox jumps."), ("bn+m3", "আমি বাংলায় গান গাই।")):
        syn = engine.synthesize(text, voice=voice, rate=160, pitch=50)
        assert syn.audio.size > syn.sample_rate * 0.5
        assert len(syn.phones) >= 8
        starts = [s for _, s, _ in syn.phones]
        assert starts == sorted(starts)
        for name, s, e in syn.phones:
            assert name and "ˈ" not in name and "ˌ" not in name
            assert 0 <= s < e <= len(syn.audio)


def test_corpus_alignments_ordered_and_inside_audio(tiny_dataset):
    utts = read_utterances(tiny_dataset.corpus)
    assert {u.language for u in utts} == {"en", "bn"}
    assert len({u.speaker for u in utts}) == 6
    for u in utts:
        info = sf.info(str(tiny_dataset.corpus / u.audio))
        assert info.samplerate == 16000
        assert abs(info.frames / 16000 - u.duration) < 1e-3
        assert u.phones, u.id
        prev_end = 0.0
        for _, s, e in u.phones:
            assert prev_end - 1e-6 <= s < e <= u.duration + 1e-6
            prev_end = e


def test_speakers_are_distinct_and_sentence_lists_are_rich():
    spk = make_speakers(12)
    assert len({(s.en_voice, s.pitch, s.rate) for s in spk}) == 12
    assert len({s.bn_voice for s in spk}) >= 8
    en, bn = default_sentences("en"), default_sentences("bn")
    assert len(en) >= 200 and len(bn) >= 150
    assert len(set(en)) == len(en) and len(set(bn)) == len(bn)
    assert all(any("\u0980" <= ch <= "\u09ff" for ch in s) for s in bn)


def test_audio_differs_between_speakers():
    engine = Espeak.get()
    a = engine.synthesize("Good morning to you.", voice="en-us+m1", rate=150, pitch=30).audio
    b = engine.synthesize("Good morning to you.", voice="en-us+f2", rate=190, pitch=80).audio
    assert len(a) != len(b) or not np.array_equal(a, b)


def test_read_utterances_without_a_checker_raises_on_a_bad_line(tmp_path):
    """Called on its own, the reader reports bad records instead of dropping them silently."""
    import pytest

    from speechae.data.synth import read_utterances
    from speechae.data.validate import BadInputError

    (tmp_path / "utterances.jsonl").write_bytes(b'{"id": 1}\n\xff\xfe not json\n')
    with pytest.raises(BadInputError, match="utterances.jsonl"):
        read_utterances(tmp_path)
