"""Every kind of bad input gives an error naming the file, or is skipped and listed."""

import json
import shutil

import numpy as np
import pytest
import soundfile as sf

from speechae.data.manifests import prepare_synth_manifests
from speechae.data.validate import AudioPolicy, BadInputError, check_audio, check_text


@pytest.fixture()
def corpus(tiny_dataset, tmp_path):
    dst = tmp_path / "corpus"
    shutil.copytree(tiny_dataset.corpus, dst)
    return dst


def _first_wav(corpus):
    line = (corpus / "utterances.jsonl").read_text(encoding="utf-8").splitlines()[0]
    return corpus / json.loads(line)["audio"], json.loads(line)["id"]


def _corrupt(path):
    path.write_bytes(b"RIFF\x00\x00garbage" + bytes(range(256)) * 4)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _empty(path):
    path.write_bytes(b"")


def _resample(path):
    x, sr = sf.read(str(path))
    sf.write(str(path), x[::2], 8000, subtype="PCM_16")


@pytest.mark.parametrize("damage, message", [
    (_corrupt, "cannot read audio header"),
    (_truncate, "truncated"),
    (_empty, "empty"),
    (_resample, "sample rate 8000 Hz is below the minimum 16000 Hz"),
])
def test_bad_audio_fails_naming_file_or_is_skipped(corpus, tmp_path, damage, message):
    wav, utt_id = _first_wav(corpus)
    damage(wav)
    out = tmp_path / "manifests"
    with pytest.raises(BadInputError, match=message) as err:
        prepare_synth_manifests(corpus, out, num_dev_speakers=1, num_test_speakers=1)
    assert str(wav) in str(err.value)
    assert not list(out.glob("*recordings*"))  # nothing half-written
    counts = prepare_synth_manifests(corpus, out, num_dev_speakers=1, num_test_speakers=1, on_error="skip")
    assert sum(counts.values()) == 23
    skipped = (out / "mini_skipped.txt").read_text(encoding="utf-8")
    assert skipped.startswith(utt_id) and message.split()[0] in skipped


def _rewrite_first_record(corpus, fn):
    path = corpus / "utterances.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    lines[0] = fn(lines[0])
    path.write_bytes(b"".join(lines))


@pytest.mark.parametrize("edit, message", [
    (lambda raw: json.dumps({**json.loads(raw), "text": "   "}).encode() + b"\n", "transcript is empty"),
    (lambda raw: raw.replace(b'"text"', b'"txt"'), "malformed utterance record"),
    (lambda raw: raw.replace(b'"text": "', b'"text": "\xff\xfe'), "not valid UTF-8"),
])
def test_bad_transcripts(corpus, tmp_path, edit, message):
    _rewrite_first_record(corpus, edit)
    with pytest.raises(BadInputError, match=message) as err:
        prepare_synth_manifests(corpus, tmp_path / "m", num_dev_speakers=1, num_test_speakers=1)
    assert "utterances.jsonl" in str(err.value)
    counts = prepare_synth_manifests(corpus, tmp_path / "m", num_dev_speakers=1, num_test_speakers=1, on_error="skip")
    assert sum(counts.values()) == 23
    assert message.split()[0] in (tmp_path / "m" / "mini_skipped.txt").read_text(encoding="utf-8")


def test_duplicate_id_under_another_speaker_and_one_pass(corpus, tmp_path):
    # the first record again under the last speaker (a test speaker): before, it landed in train and test
    path = corpus / "utterances.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    last = sorted({r["speaker"] for r in records})[-1]
    lines.append(json.dumps({**records[0], "speaker": last}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    _truncate(corpus / records[1]["audio"])
    _empty(corpus / records[2]["audio"])
    with pytest.raises(BadInputError) as err:
        prepare_synth_manifests(corpus, tmp_path / "m", num_dev_speakers=1, num_test_speakers=1)
    message = str(err.value)
    assert message.startswith("4 bad item(s):") and message.count("is listed 2 times") == 2
    assert "truncated" in message and "empty file (0 bytes)" in message
    counts = prepare_synth_manifests(corpus, tmp_path / "m", num_dev_speakers=1, num_test_speakers=1, on_error="skip")
    assert sum(counts.values()) == 21
    skipped = (tmp_path / "m" / "mini_skipped.txt").read_text(encoding="utf-8").splitlines()
    assert len(skipped) == 4 and all(len(line.split("\t")) == 3 for line in skipped)


def test_failed_rerun_keeps_earlier_outputs(corpus, tmp_path):
    out = tmp_path / "m"
    prepare_synth_manifests(corpus, out, num_dev_speakers=1, num_test_speakers=1)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    _truncate(_first_wav(corpus)[0])
    with pytest.raises(BadInputError):
        prepare_synth_manifests(corpus, out, num_dev_speakers=1, num_test_speakers=1)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_check_helpers(tmp_path):
    wav = tmp_path / "ok.wav"
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(1600) / 16000)
    sf.write(str(wav), tone.astype(np.float32), 16000)
    report = check_audio(wav)
    assert report.duration == pytest.approx(0.1) and report.channels == 1 and report.sample_rate == 16000
    with pytest.raises(BadInputError, match="missing"):
        check_audio(tmp_path / "nope.wav")
    assert AudioPolicy().drop_reason(0.05).startswith("too short")
    assert AudioPolicy().drop_reason(31.0).startswith("too long")
    assert AudioPolicy(max_duration=0).drop_reason(3600.0) is None
    assert check_text("নমস্কার".encode(), "x") == "নমস্কার"
    with pytest.raises(BadInputError, match="missing"):
        check_text(None, "utt1")
