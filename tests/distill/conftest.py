"""Fixtures of the distillation tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread: tiny models run faster on one, and on a shared 2-core box two threads spin
    and run ~6x slower than one."""
    torch = pytest.importorskip("torch")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
