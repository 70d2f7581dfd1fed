"""Shared fixtures of the training tests: a tiny generated corpus and a small experiment config.

The corpus is the suite's shared session fixture (``tiny_dataset`` in tests/conftest.py), built with the
tiny recipe's own library functions; everything is written under pytest's tmp directories.
"""

from __future__ import annotations

import os
import sys
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
