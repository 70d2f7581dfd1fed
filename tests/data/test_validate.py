"""The stage-1 policy item by item: plain messages, NaN/Inf, silence, rates, channels, durations,
ids across splits, BOM, single-line skip entries, and stage 2 naming a failing cut."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from lhotse import Recording, RecordingSet, SupervisionSegment, SupervisionSet, load_manifest

from speechae.cli import main
from speechae.data.features import compute_fbank
from speechae.data.validate import AudioPolicy, BadInputError, Checker, Problem, check_audio
from speechae.recipes.common import tsv_rows
from speechae.recipes.generic import prepare_tsv_corpus

SR = 16000


def tone(seconds: float = 0.5, sr: int = SR, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    x = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    return x if channels == 1 else np.stack([x * (c + 1) / channels for c in range(channels)], axis=1)


def write(path: Path, x: np.ndarray, sr: int = SR, subtype: str = "PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x, sr, subtype=subtype)
    return path


@pytest.mark.parametrize("name, content, message", [
    ("empty.flac", b"", "empty file (0 bytes)"),
    ("page.mp3", b"<!DOCTYPE html>\n<html><body>404</body></html>\n", "not an audio file (looks like HTML"),
    ("notes.wav", b"utt1 hello world\nutt2 more text\n", "not an audio file (looks like text"),
    ("junk.wav", b"RIFF\x00\x00garbage" + bytes(range(256)), "cannot read audio header"),
])
def test_plain_messages(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(BadInputError) as err:
        check_audio(tmp_path / name)
    text = str(err.value)
    assert text.startswith(f"{tmp_path / name}: {message}") and "\n" not in text
    assert "possibly a pipe" not in text and "Exception #" not in text


def test_nan_inf_silence_dc_rejected(tmp_path: Path) -> None:
    x = tone()
    for value, message in ((np.nan, "non-finite samples (3 NaN)"), (np.inf, "non-finite samples (3 Inf)")):
        y = x.copy()
        y[100:103] = value
        with pytest.raises(BadInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
            check_audio(write(tmp_path / "f.wav", y, subtype="FLOAT"))
    with pytest.raises(BadInputError, match="digital silence"):
        check_audio(write(tmp_path / "z.wav", np.zeros(SR, np.float32)))
    with pytest.raises(BadInputError, match="no signal"):
        check_audio(write(tmp_path / "dc.wav", np.full(SR, 0.2, np.float32)))
    dither = (np.random.default_rng(0).integers(-1, 2, SR) / 32768).astype(np.float32)  # +-1 LSB
    with pytest.raises(BadInputError, match="no signal"):
        check_audio(write(tmp_path / "d.wav", dither))
    quiet = 0.003 * tone(1.0)  # -50 dBFS speech-level signal is kept
    assert check_audio(write(tmp_path / "q.wav", quiet)).duration == pytest.approx(1.0)


def test_sample_rate_policy(tmp_path: Path) -> None:
    low = write(tmp_path / "8k.wav", tone(sr=8000), sr=8000)
    with pytest.raises(BadInputError, match="below the minimum 16000 Hz"):
        check_audio(low)
    policy = AudioPolicy(min_sample_rate=8000)
    assert policy.notes(check_audio(low, policy)) == ["resampled from 8000 Hz to 16000 Hz"]
    high = check_audio(write(tmp_path / "44k.wav", tone(sr=44100), sr=44100))
    assert AudioPolicy().notes(high) == ["resampled from 44100 Hz to 16000 Hz"]
    stereo = check_audio(write(tmp_path / "st.wav", tone(channels=2)))
    assert AudioPolicy().notes(stereo) == ["2 channels: channel 0 used"]


def test_too_long_is_not_decoded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import speechae.data.validate as v

    path = write(tmp_path / "long.flac", np.tile(tone(1.0), 40))
    monkeypatch.setattr(v, "_scan_samples", lambda *a: pytest.fail("decoded a file that is dropped anyway"))
    report = check_audio(path)
    assert not report.decoded and AudioPolicy().drop_reason(report.duration).startswith("too long: 40.00 s")


def test_skip_entries_are_one_line() -> None:
    entry = Problem("utt\t1", "/data/a\nb.wav", "libsndfile says:\nline two\r")
    assert entry.line() == "utt\\x091\t/data/a\\x0ab.wav\tlibsndfile says:\\x0aline two\\x0d"


def test_bom_on_first_line_is_not_part_of_the_id(tmp_path: Path) -> None:
    tsv = tmp_path / "u.tsv"
    tsv.write_bytes("\ufeffutt1\tspk\tটেক্সট\r\nutt2\tspk\tটেক্সট\n".encode())
    checker = Checker("skip")
    assert [fields[0] for _, _, fields in tsv_rows(tsv, checker)] == ["utt1", "utt2"]
    assert not checker.errors


def _tsv_corpus(root: Path, extra: list[str], speakers: int = 5) -> Path:
    lines = []
    for s in range(speakers):
        for u in range(2):
            write(root / f"s{s}u{u}.wav", tone(0.5 + 0.1 * u))
            lines.append(f"s{s}u{u}\tspk{s}\ts{s}u{u}.wav\thello world")
    (root / "utterances.tsv").write_text("\n".join(lines + extra) + "\n", encoding="utf-8")
    return root / "utterances.tsv"


def test_duplicate_id_across_speakers_lands_in_no_split(tmp_path: Path) -> None:
    # s0u0 listed again under another speaker: before, one copy went to train and one to test
    tsv = _tsv_corpus(tmp_path / "c", ["s0u0\tspk4\ts0u0.wav\thello again"])
    with pytest.raises(BadInputError, match=r"2 bad item\(s\)") as err:
        prepare_tsv_corpus(tsv, tmp_path / "m", "x", dev_fraction=0.2, test_fraction=0.2)
    assert str(err.value).count("'s0u0' is listed 2 times") == 2
    counts = prepare_tsv_corpus(tsv, tmp_path / "m", "x", on_error="skip", dev_fraction=0.2, test_fraction=0.2)
    ids = [s.id for split in counts for s in load_manifest(tmp_path / "m" / f"x_supervisions_{split}.jsonl.gz")]
    assert "s0u0" not in ids and len(ids) == len(set(ids)) == 9


def test_duration_filter_drops_and_lists_but_never_fails(tmp_path: Path) -> None:
    root = tmp_path / "c"
    write(root / "long.wav", np.tile(tone(1.0), 31))
    write(root / "short.wav", tone(0.05))
    tsv = _tsv_corpus(root, ["long\tspk0\tlong.wav\tlong one", "short\tspk1\tshort.wav\tshort one"])
    counts = prepare_tsv_corpus(tsv, tmp_path / "m", "x", dev_fraction=0.2, test_fraction=0.2)  # fail mode
    assert sum(counts.values()) == 10
    skipped = (tmp_path / "m" / "x_skipped.txt").read_text(encoding="utf-8").splitlines()
    assert sorted(line.split("\t")[0] for line in skipped) == ["long", "short"]
    assert any("too long: 31.00 s > --max-duration 30 s" in line for line in skipped)
    counts = prepare_tsv_corpus(tsv, tmp_path / "m2", "x", policy=AudioPolicy(max_duration=0, min_duration=0.01),
                                dev_fraction=0.2, test_fraction=0.2)
    assert sum(counts.values()) == 12


def test_every_bad_item_in_one_pass(tmp_path: Path) -> None:
    root = tmp_path / "c"
    (root / "empty.wav").parent.mkdir(parents=True)
    (root / "empty.wav").write_bytes(b"")
    write(root / "nan.wav", np.full(SR, np.nan, np.float32), subtype="FLOAT")
    tsv = _tsv_corpus(root, ["a\tspk0\tempty.wav\tx", "b\tspk1\tnan.wav\tx", "c\tspk2\tgone.wav\tx",
                             "d\tspk3\ts0u0.wav\t", "e\tspk3"])
    with pytest.raises(BadInputError) as err:
        prepare_tsv_corpus(tsv, tmp_path / "m", "x", dev_fraction=0.2, test_fraction=0.2)
    lines = str(err.value).splitlines()
    assert lines[0] == "5 bad item(s):"
    for marker in ("empty.wav: empty file (0 bytes)", "nan.wav: non-finite samples", "gone.wav: audio file is missing",
                   "transcript is empty [d]", "malformed line"):
        assert sum(marker in line for line in lines) == 1, (marker, lines)


def _manifests(out: Path, recordings: list[Recording]) -> None:
    sups = [SupervisionSegment(id=r.id, recording_id=r.id, start=0.0, duration=r.duration, channel=0, text="x",
                               speaker="s") for r in recordings]
    out.mkdir(parents=True, exist_ok=True)
    RecordingSet.from_recordings(recordings).to_file(out / "p_recordings_train.jsonl.gz")
    SupervisionSet.from_segments(sups).to_file(out / "p_supervisions_train.jsonl.gz")


def test_stage2_names_the_failing_cut_and_file(tmp_path: Path) -> None:
    good = write(tmp_path / "good.wav", tone())
    y = tone()
    y[10] = np.nan
    poisoned = write(tmp_path / "nan.wav", y, subtype="FLOAT")  # past stage 1 (a manifest made by hand)
    _manifests(tmp_path / "m", [Recording.from_file(good, "good"), Recording.from_file(poisoned, "poisoned")])
    with pytest.raises(BadInputError) as err:
        compute_fbank(tmp_path / "m", tmp_path / "f", "p", "train", num_jobs=1)
    message = str(err.value)
    assert "1 failing cut(s)" in message and f"cut poisoned-1 ({poisoned}): 1 NaN" in message
    assert "good" not in message.split("failing cut(s)")[1]
    root = logging.getLogger()
    handlers, configured = root.handlers[:], getattr(root, "_speechae_configured", False)
    root._speechae_configured = False  # type: ignore[attr-defined]
    try:
        result = CliRunner().invoke(main, ["compute-fbank", str(tmp_path / "m"), str(tmp_path / "f"), "--prefix", "p",
                                           "--splits", "train", "--nj", "1"])
    finally:
        root.handlers[:] = handlers
        root._speechae_configured = configured  # type: ignore[attr-defined]
    assert result.exit_code == 1 and "Traceback" not in result.output and str(poisoned) in result.output


def test_stereo_uses_channel_zero_in_stage2(tmp_path: Path) -> None:
    root = tmp_path / "c"
    x = tone(1.0, channels=2)
    x[:, 1] = np.random.default_rng(0).standard_normal(len(x)) * 0.1  # channel 1: something else
    write(root / "st.wav", x)
    write(root / "mono.wav", x[:, 0])
    tsv = _tsv_corpus(root, ["st\tspk0\tst.wav\tstereo", "mono\tspk0\tmono.wav\tmono"])
    counts = prepare_tsv_corpus(tsv, tmp_path / "m", "x", dev_fraction=0.2, test_fraction=0.2)
    warnings = (tmp_path / "m" / "x_warnings.txt").read_text(encoding="utf-8")
    assert warnings == f"st\t{root / 'st.wav'}\t2 channels: channel 0 used\n"
    split = next(s for s in counts if any(sup.id == "st" for sup in
                                          load_manifest(tmp_path / "m" / f"x_supervisions_{s}.jsonl.gz")))
    compute_fbank(tmp_path / "m", tmp_path / "f", "x", split, num_jobs=1)
    cuts = {c.supervisions[0].id: c for c in load_manifest(tmp_path / "f" / f"x_cuts_{split}.jsonl.gz")}
    np.testing.assert_allclose(cuts["st"].load_features(), cuts["mono"].load_features(), atol=1e-2)
