"""Run loops of many tiny BLAS calls (greedy coresets, model refits in valuation) single-threaded.

On a loaded machine BLAS/OpenMP thread hand-offs dominate small matrix products and model fits (measured
20x slower for LogisticRegression and facility-location re-evaluations on a busy 2-core machine).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def single_threaded(enabled: bool = True) -> Iterator[None]:
    """Limit BLAS/OpenMP pools to one thread inside the block (no-op without threadpoolctl)."""
    if not enabled:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        yield
        return
    with threadpool_limits(1):
        yield
