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
def _one_thread(single_thread):
    """Every model test uses the root conftest's ``single_thread``."""
