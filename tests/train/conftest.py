"""Shared fixtures of the training tests: a tiny generated corpus and a small experiment config.

The corpus is the suite's shared session fixture (``tiny_dataset`` in tests/conftest.py), built with the
tiny recipe's own library functions; everything is written under pytest's tmp directories.
"""

from __future__ import annotations

import os
import random
import shutil
import struct
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from speechae.train.testing import small_experiment


@pytest.fixture(scope="session")
def tiny_data(tiny_dataset):
    """The suite's shared TinyDataset (tests/conftest.py; speechae.data.dummy): features,
    alignments and k-means units of 6 speakers x 4 utterances."""
    return tiny_dataset


@pytest.fixture()
def make_config(tiny_data):
    """``make_config(**block_overrides) -> dict``: a fast experiment config on the tiny corpus."""

    def make(**overrides: Any) -> dict:
        return small_experiment(tiny_data.cuts("train"), tiny_data.cuts("dev"), tiny_data.lang, **overrides)

    return make


@pytest.fixture()
def cli_env() -> dict[str, str]:
    """Environment for ``python -m speechae.cli`` subprocesses (one BLAS thread each)."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    return env


@pytest.fixture()
def python() -> str:
    """The interpreter running the tests."""
    return sys.executable


@pytest.fixture(scope="session")
def trained_exp(tmp_path_factory: pytest.TempPathFactory, tiny_data) -> Path:
    """An experiment trained for 6 steps with checkpoints at steps 3 and 6 (read-only: copy it)."""
    from speechae.train.config import experiment_config_from_dict
    from speechae.train.run import run_training

    cfg = small_experiment(tiny_data.cuts("train"), tiny_data.cuts("dev"), tiny_data.lang,
                           train={"max_steps": 6, "save_every": 3, "keep_last_k": 0, "valid_every": 0,
                                  "tensorboard": False})
    exp = tmp_path_factory.mktemp("trained") / "exp"
    assert run_training(experiment_config_from_dict(cfg), exp) == 0
    return exp


@pytest.fixture()
def exp_copy(trained_exp: Path, tmp_path: Path) -> Path:
    """A private copy of :func:`trained_exp`."""
    dst = tmp_path / "exp"
    shutil.copytree(trained_exp, dst)
    return dst


def _flip_bit_in_tensor_data(path: Path) -> None:
    """Flip one bit in the middle of the largest tensor record of a torch zip checkpoint."""
    with zipfile.ZipFile(path) as zf:
        info = max((i for i in zf.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26: info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    data[start + info.file_size // 2] ^= 0x04
    path.write_bytes(bytes(data))


def corrupt_file(path: Path, kind: str) -> None:
    """Damage a checkpoint: ``truncated``, ``garbage``, ``empty`` or ``flipped_bit`` (in tensor data)."""
    data = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "garbage":
        path.write_bytes(bytes(random.Random(0).getrandbits(8) for _ in range(4096)))
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        _flip_bit_in_tensor_data(path)


@pytest.fixture()
def corrupt():
    """:func:`corrupt_file`."""
    return corrupt_file
