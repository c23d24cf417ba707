"""Fixtures the reference (parity) tests share."""
from __future__ import annotations

import pytest


@pytest.fixture
def one_torch_thread():
    """PyTorch on one thread while a test runs: the reference models are tiny, so one thread is
    fastest, and immune to a busy neighbour on a 2-core machine."""
    torch = pytest.importorskip("torch", reason="the reference extra (torch) is not installed")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
