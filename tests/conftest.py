"""Fixtures shared by test files that ask for them (none is autouse)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def single_thread():
    """One torch thread: tiny tensors gain nothing from threads, and other processes share
    the cores (OpenMP spinning on a busy machine costs several times the work)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
