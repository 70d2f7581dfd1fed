"""Evaluation tests run single-threaded: tensors are small and intra-op threads only add
contention on a shared machine."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
