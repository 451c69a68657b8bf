"""Test configuration shared by the test suite and the doctests."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _single_torch_thread():
    """Run torch on one thread: the tests use tiny tensors, for which thread
    synchronization costs more than it saves (and a loaded 2-core machine makes
    it far worse)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
