"""The OpenSLR 53 reader: layout, a missing file and a malformed line, fail vs skip."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from lhotse import load_manifest

from speechae.data.validate import BadInputError
from speechae.recipes.bengali import prepare_bengali


@pytest.fixture
def damaged(corpora: dict[str, Path], tmp_path: Path) -> tuple[Path, str, int]:
    dl = tmp_path / "dl"
    shutil.copytree(corpora["slr53"] / "asr_bengali", dl / "asr_bengali")
    tsv = dl / "asr_bengali" / "utt_spk_text.tsv"
    lines = tsv.read_text(encoding="utf-8").splitlines()
    missing = lines[0].split("\t")[0]
    (dl / "asr_bengali" / "data" / missing[:2] / f"{missing}.flac").unlink()
    lines.insert(3, "deadbeef00 only-two-fields")
    tsv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dl, missing, 4  # the malformed line is line 4


def test_fail_names_file(damaged: tuple[Path, str, int], tmp_path: Path) -> None:
    dl, missing, _ = damaged
    with pytest.raises(BadInputError, match=rf"{missing}\.flac: audio file is missing"):
        prepare_bengali(dl, tmp_path / "man", corpora="slr53", dev_fraction=0.25, test_fraction=0.25)


def test_skip_lists_problems(damaged: tuple[Path, str, int], tmp_path: Path) -> None:
    dl, missing, line = damaged
    out = tmp_path / "man"
    counts = prepare_bengali(dl, out, corpora="slr53", on_error="skip", dev_fraction=0.25, test_fraction=0.25)
    assert sum(counts.values()) == 4 * 2 - 1
    skipped = (out / "bengali_skipped.txt").read_text(encoding="utf-8")
    assert f"utt_spk_text.tsv:{line}\tmalformed line" in skipped and f"{missing}.flac\taudio file is missing" in skipped
    assert all(len(entry.split("\t")) == 3 for entry in skipped.splitlines())
    sups = load_manifest(out / "bengali_supervisions_train.jsonl.gz")
    recs = load_manifest(out / "bengali_recordings_train.jsonl.gz")
    assert all(s.language == "bn" and s.speaker and "।" not in s.text for s in sups)
    assert all(r.sampling_rate == 16000 and r.sources[0].source.endswith(".flac") for r in recs)
    # speaker-disjoint splits
    spk = {split: {s.speaker for s in load_manifest(out / f"bengali_supervisions_{split}.jsonl.gz")}
           for split in ("train", "dev", "test")}
    assert not (spk["train"] & spk["dev"]) and not (spk["train"] & spk["test"]) and not (spk["dev"] & spk["test"])
