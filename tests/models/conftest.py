"""Fixtures for model tests."""

from __future__ import annotations

import pytest
import torch

from speechae.models import ModelConfig, SpeechAE, build_model


@pytest.fixture
def tiny_model() -> SpeechAE:
    """The tiny preset with a fixed seed."""
    torch.manual_seed(0)
    return build_model(ModelConfig(preset="tiny"))


@pytest.fixture(autouse=True)
def single_thread():
    """Run model tests on one intra-op thread: on a shared 2-core machine OpenMP barriers make
    the many small ops of short test inputs up to 100x slower; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
