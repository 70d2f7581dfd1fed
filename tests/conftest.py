"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory):
    """6 speakers x 4 utterances, stages 0-3 done (train: 4 speakers, dev: 1, test: 1)."""
    from speechae.data.dummy import build_tiny_dataset

    return build_tiny_dataset(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def recipe_env() -> dict[str, str]:
    """Environment for running recipe shell scripts from tests: the current interpreter's
    environment, no re-install, repository root pinned."""
    env = dict(os.environ)
    env["SPEECHAE_SKIP_ENV"] = "1"
    env["SPEECHAE_ROOT"] = str(REPO)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env["PYTHONPATH"] = f"{REPO}:{env.get('PYTHONPATH', '')}"
    env["LC_ALL"] = env["LANG"] = "C.UTF-8"
    return env


@pytest.fixture()
def single_thread():
    """One intra-op thread for the duration of a test: the tensors in unit tests are small, and
    on a shared 2-core machine OpenMP barriers made them up to 10-100x slower.  Restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
