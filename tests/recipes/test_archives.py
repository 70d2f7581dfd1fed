"""Stage 0 rules: archives are verified before use, extraction is all-or-nothing, offline fails fast."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from speechae.recipes.archives import (BadArchiveError, CorpusUnavailableError, extract_archive, fetch_archive,
                                       verify_archive)


def truncate(src: Path, dst: Path, keep: float = 0.6) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


def test_truncated_archives_are_detected(corpora: dict[str, Path], tmp_path: Path) -> None:
    good_tar = corpora["librispeech"] / "archives" / "dev-clean-2.tar.gz"
    good_zip = corpora["bengaliai"] / "archives" / "bengaliai-speech.zip"
    assert verify_archive(good_tar) > 0 and verify_archive(good_zip) > 0
    for good in (good_tar, good_zip):
        bad = truncate(good, tmp_path / good.name)
        with pytest.raises(BadArchiveError, match="truncated or corrupt"):
            verify_archive(bad)
        dest = tmp_path / f"out_{good.name}"
        with pytest.raises(BadArchiveError):
            extract_archive(bad, dest)
        # nothing half-extracted is left behind, and no completion marker
        assert not dest.exists() or not any(p for p in dest.iterdir())


def test_bad_archive_offline_is_not_trusted(corpora: dict[str, Path], tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("SPEECHAE_OFFLINE", "1")
    bad = truncate(corpora["librispeech"] / "archives" / "dev-clean-2.tar.gz", tmp_path / "dev-clean-2.tar.gz")
    with pytest.raises(CorpusUnavailableError, match="truncated or corrupt.*no network"):
        fetch_archive("https://www.openslr.org/resources/31/dev-clean-2.tar.gz", bad, "put it in --dl-dir")


def test_offline_download_fails_fast_with_instructions(tmp_path: Path) -> None:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("SPEECHAE_OFFLINE", None)  # the real connectivity probe, bounded by its 3 s timeout
    for args in (["librispeech", str(tmp_path / "empty")], ["bengali", str(tmp_path / "empty"), "--corpora", "slr53"],
                 ["bengali", str(tmp_path / "empty"), "--corpora", "commonvoice"]):
        t0 = time.perf_counter()
        proc = subprocess.run(["speechae", "download-corpus", *args], env=env, capture_output=True, text=True,
                              timeout=60)
        elapsed = time.perf_counter() - t0
        if proc.returncode == 0:
            pytest.skip("this machine has network access")  # pragma: no cover
        assert proc.returncode == 1
        assert "--dl-dir" in proc.stderr or "manual download" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
        assert elapsed < 30, f"took {elapsed:.1f} s"


def test_extracted_tree_is_used_without_archive(corpora: dict[str, Path], tmp_path: Path) -> None:
    from speechae.recipes.librispeech import download_librispeech

    dl = tmp_path / "dl"
    shutil.copytree(corpora["librispeech"] / "LibriSpeech", dl / "LibriSpeech")
    assert download_librispeech(dl, "train-clean-5,dev-clean-2") == dl / "LibriSpeech"


def test_slr53_extracted_tree_is_used_without_archives(corpora: dict[str, Path], tmp_path: Path) -> None:
    from speechae.recipes.openslr53 import download_openslr53

    dl = tmp_path / "dl"
    shutil.copytree(corpora["slr53"] / "asr_bengali", dl / "asr_bengali")
    assert download_openslr53(dl) == dl / "asr_bengali"
