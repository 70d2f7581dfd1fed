"""Atomic writes: all-or-nothing, and files as readable as a plain open() would make them."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from speechae.utils.io import atomic_path, current_umask, temp_file_pattern, write_json


@pytest.fixture()
def umask():
    """``umask(value)`` for the rest of the test; the original is restored."""
    original = os.umask(0o022)
    os.umask(original)
    yield os.umask
    os.umask(original)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_atomic_files_and_dirs_respect_the_umask(tmp_path: Path, umask, mask: int) -> None:  # noqa: ANN001
    umask(mask)
    assert current_umask() == mask
    write_json(tmp_path / "a.json", {"x": 1})
    with atomic_path(tmp_path / "d", is_dir=True) as tmp:
        (tmp / "f").write_text("x")
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    plain_dir = tmp_path / "plain_dir"
    plain_dir.mkdir()
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~mask
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == stat.S_IMODE(plain_dir.stat().st_mode) == 0o777 & ~mask


def test_failed_write_leaves_nothing_and_temp_names_match_the_pattern(tmp_path: Path) -> None:
    target = tmp_path / "ckpt-00000007.pt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert temp_file_pattern(r"ckpt-\d+", ".pt").match(tmp.name), tmp.name
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
