"""Loss tests run single-threaded: the tensors are tiny, and on a shared 2-core machine intra-op
threads only add contention (10x slower in practice).  Restored after each test."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
