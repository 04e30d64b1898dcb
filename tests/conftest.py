"""Fixtures every test folder may use."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny shapes: one intra-op thread is as fast, and far faster on a loaded machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
