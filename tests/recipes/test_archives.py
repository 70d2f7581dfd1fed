"""Stage 0 rules: archives are verified before use, extraction is all-or-nothing and stays inside
its destination, downloads match the publisher's checksums, offline fails fast."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from speechae.recipes.archives import (BadArchiveError, CorpusUnavailableError, checksum_mismatch, extract_archive,
                                       fetch_archive, file_digest, verify_archive)


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


# ----------------------------------------------------------------------------- safe extraction


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for info, data in members:
            info.size = len(data) if data is not None else 0
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes = b"x", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode = mode
    return info, data


@pytest.mark.parametrize("name", ["../escaped.txt", "corpus/../../escaped.txt", "/tmp/speechae-escaped.txt"])
def test_tar_members_cannot_leave_the_destination(tmp_path: Path, name: str) -> None:
    archive = _tar(tmp_path / "evil.tar.gz", [_file("corpus/ok.txt"), _file(name)])
    dest = tmp_path / "dest"
    with pytest.raises(BadArchiveError, match="escapes"):
        extract_archive(archive, dest)
    assert not (tmp_path / "escaped.txt").exists() and not Path("/tmp/speechae-escaped.txt").exists()
    assert not (dest / "corpus").exists()


def test_tar_extraction_uses_the_data_filter(tmp_path: Path) -> None:
    link = tarfile.TarInfo("corpus/passwd")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    archive = _tar(tmp_path / "a.tar.gz", [_file("corpus/tool", b"#!/bin/sh\n", 0o4755),
                                            _file("corpus/private.txt", b"x", 0o600), (link, None)])
    dest = tmp_path / "dest"
    extract_archive(archive, dest)
    tool = dest / "corpus" / "tool"
    assert tool.read_bytes() == b"#!/bin/sh\n"
    if hasattr(tarfile, "data_filter"):
        assert not tool.stat().st_mode & (stat.S_ISUID | stat.S_ISGID)  # setuid bit dropped
    assert not (dest / "corpus" / "passwd").exists() and not (dest / "corpus" / "passwd").is_symlink()


# ----------------------------------------------------------------------------- published checksums


def _fake_download(monkeypatch, source: Path) -> list[str]:  # noqa: ANN001
    """Route lhotse's downloader to a local file; returns the list of URLs 'downloaded'."""
    import lhotse.utils

    calls: list[str] = []

    def download(url: str, filename: str | Path, force_download: bool = False, **kwargs) -> None:  # noqa: ANN003
        calls.append(url)
        shutil.copyfile(source, filename)

    monkeypatch.setattr(lhotse.utils, "resumable_download", download)
    return calls


def test_download_is_checked_against_its_published_checksum(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    source = _tar(tmp_path / "published.tar.gz", [_file("part/a.txt", b"hello")])
    md5 = file_digest(source, "md5")
    calls = _fake_download(monkeypatch, source)
    got = fetch_archive("https://example.org/part.tar.gz", tmp_path / "dl" / "part.tar.gz", "hint", network=True,
                        checksum=f"md5:{md5}")
    assert got.read_bytes() == source.read_bytes() and len(calls) == 1
    calls.clear()
    wrong = "0" * 32
    with pytest.raises(BadArchiveError, match=f"md5 {md5} differs from the published {wrong}"):
        fetch_archive("https://example.org/part.tar.gz", tmp_path / "dl2" / "part.tar.gz", "hint", network=True,
                      checksum=f"md5:{wrong}")
    assert len(calls) == 2  # fetched again from scratch before giving up
    assert checksum_mismatch(source, f"sha256:{file_digest(source, 'sha256')}") is None


def test_a_provided_archive_that_differs_is_used_with_a_warning(tmp_path: Path, caplog) -> None:  # noqa: ANN001
    archive = _tar(tmp_path / "part.tar.gz", [_file("part/a.txt")])
    with caplog.at_level("WARNING"):
        assert fetch_archive("https://example.org/part.tar.gz", archive, "hint", network=False,
                             checksum="md5:" + "1" * 32) == archive
    assert "differs from the published" in caplog.text and str(archive) in caplog.text


def test_librispeech_downloads_must_match_the_openslr_md5(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    from speechae.recipes import librispeech

    assert set(librispeech.PUBLISHED_MD5) == set(librispeech.SPLIT_OF)
    assert librispeech.PUBLISHED_MD5["dev-clean"] == "42e2234ba48799c1f50f24a7926300a1"
    fake = _tar(tmp_path / "fake.tar.gz", [_file("LibriSpeech/dev-clean-2/1/2/1-2.trans.txt", b"1-2-0000 HI\n")])
    _fake_download(monkeypatch, fake)
    monkeypatch.setattr(librispeech, "network_available", lambda url: True)
    with pytest.raises(BadArchiveError, match="differs from the published 6d7ab67ac6a1d2c993d050e16d61080d"):
        librispeech.download_librispeech(tmp_path / "dl", "dev-clean-2")
    # the same mechanism accepts the archive once the table holds its digest
    (tmp_path / "dl" / "dev-clean-2.tar.gz").unlink()
    monkeypatch.setitem(librispeech.PUBLISHED_MD5, "dev-clean-2", file_digest(fake, "md5"))
    corpus = librispeech.download_librispeech(tmp_path / "dl", "dev-clean-2")
    assert (corpus / "dev-clean-2" / "1" / "2" / "1-2.trans.txt").is_file()


def test_openslr53_uses_the_same_checksum_table_mechanism(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    import zipfile

    from speechae.recipes import openslr53

    fake = tmp_path / "fake.zip"
    with zipfile.ZipFile(fake, "w") as zf:
        zf.writestr("asr_bengali/utt_spk_text.tsv", "0a1b2c3d\tspk\ttext\n")
        zf.writestr("asr_bengali/data/0a/0a1b2c3d.flac", b"fLaC")
    _fake_download(monkeypatch, fake)
    monkeypatch.setattr(openslr53, "network_available", lambda url: True)
    monkeypatch.setitem(openslr53.PUBLISHED_CHECKSUMS, "0", "md5:" + "2" * 32)
    with pytest.raises(BadArchiveError, match="differs from the published"):
        openslr53.download_openslr53(tmp_path / "dl", parts="0")
    (tmp_path / "dl" / "asr_bengali_0.zip").unlink()
    monkeypatch.setitem(openslr53.PUBLISHED_CHECKSUMS, "0", "md5:" + file_digest(fake, "md5"))
    assert (openslr53.download_openslr53(tmp_path / "dl", parts="0") / "utt_spk_text.tsv").is_file()
