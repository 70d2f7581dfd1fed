"""Loss tests run single-threaded (see ``single_thread`` in tests/conftest.py)."""

import pytest


@pytest.fixture(autouse=True)
def _one_thread(single_thread):
    """Every test in this directory uses the root conftest's ``single_thread``."""
