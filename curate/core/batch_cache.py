"""Per-batch cache of derived data (word tokens, ...) that several operators of one batch share.

The runner opens a :func:`batch_scope` around each batch's run through the operators; an operator asks
:func:`cached` for, e.g., the word tokens of ``text``, and the first asker computes them. Nothing is added
to the batch's columns, so nothing derived can leak into the output or the rejects, and the scope (and all
it holds) is dropped when the batch is written.

A cached value is tied to rows by the internal row key (``__uid``) and to the text it was computed from:
a later operator sees fewer rows (filters drop some), so the value is gathered for the rows still there;
rows whose text an operator rewrote in between (C4's line filter) are recomputed, and only those. Without
a scope (an operator called directly, outside a run) or without ``__uid``, the value is computed each time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from curate.core.operator import UID


@dataclass
class _Entry:
    uids: np.ndarray  # uint64, rows the value was computed for
    order: np.ndarray  # argsort of uids, for lookups
    text: pl.Series  # the column it was computed from (Arrow buffers are shared, not copied)
    value: Any  # supports .take(rows) and type(value).concat(parts)


@dataclass
class BatchCache:
    """What one batch's operators computed for each other: (column, kind) -> entry."""

    entries: dict[tuple[str, str], _Entry] = field(default_factory=dict)
    hits: int = 0  # every row reused
    partial: int = 0  # some rows reused, the new or rewritten ones computed
    misses: int = 0  # computed from scratch


_CURRENT: ContextVar[BatchCache | None] = ContextVar("curate_batch_cache", default=None)


@contextlib.contextmanager
def batch_scope() -> Iterator[BatchCache]:
    """A fresh cache for the operators of one batch, dropped on exit."""
    cache = BatchCache()
    token = _CURRENT.set(cache)
    try:
        yield cache
    finally:
        _CURRENT.reset(token)
        cache.entries.clear()


def cached(batch: pl.DataFrame, column: str, kind: str, compute: Callable[[pl.Series], Any]) -> Any:
    """``compute(batch[column])``, reusing what an earlier operator of this batch computed for the same
    rows and the same text; only rows that are new or whose text changed are computed again."""
    text = batch.get_column(column)
    cache = _CURRENT.get()
    if cache is None or UID not in batch.columns or batch.height == 0:
        return compute(text)
    uids = batch.get_column(UID).to_numpy()
    key = (column, kind)
    entry = cache.entries.get(key)
    if entry is None:
        cache.misses += 1
        value = compute(text)
        cache.entries[key] = _Entry(uids, np.argsort(uids, kind="stable"), text, value)
        return value
    pos = np.searchsorted(entry.uids, uids, sorter=entry.order)
    pos = np.minimum(pos, len(entry.order) - 1)
    rows = entry.order[pos]
    found = entry.uids[rows] == uids
    same = found.copy()
    if found.any():
        idx = np.flatnonzero(found)
        old = entry.text.gather(rows[idx])
        new = text.gather(idx)
        # exact comparison (not a hash): a rewritten text is recomputed, an unchanged one never is
        same[idx] = (old == new).fill_null(True).to_numpy()
    if same.all():
        cache.hits += 1
        return entry.value.take(rows)
    cache.partial += 1
    redo = np.flatnonzero(~same)
    fresh = compute(text.gather(redo))
    value = _interleave(entry.value, fresh, same, rows) if same.any() else fresh
    cache.entries[key] = _Entry(uids, np.argsort(uids, kind="stable"), text, value)
    return value


def _interleave(old: Any, fresh: Any, same: np.ndarray, rows: np.ndarray) -> Any:
    """Rows in batch order, each from ``old`` (where ``same``) or from ``fresh`` (in order)."""
    combined = type(old).concat([old, fresh])
    n_old = int(old.counts.shape[0])
    pick = np.where(same, rows, 0).astype(np.int64)
    pick[~same] = n_old + np.arange(int((~same).sum()))
    return combined.take(pick)
