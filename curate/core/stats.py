"""Per-step counters: docs and bytes in/out, seconds, drop counts per reason, and the operator's own numbers.

An operator records its own figures on its context (DataTrove's ``stat_update`` / ``track_time``):
``ctx.stat("clusters", n)`` adds to a counter, ``with ctx.timer("buckets"):`` adds the block's wall time
to a phase timer. The runner moves them into the step's :class:`StepStats` (``counters``, ``timers`` in
seconds per phase): per shard for batch work (they travel in the shard's completion marker), once for a
global stage's fit (kept in the stage's marker); :func:`merge_stats` sums them over shards and workers, and
``stats.json`` and the run table show them.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any


def _sum(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0) + v
    return out


@dataclass
class StepStats:
    step: str
    docs_in: int = 0
    docs_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0
    dropped: dict[str, int] = field(default_factory=dict)
    #: the operator's own numbers (``ctx.stat``), summed over shards
    counters: dict[str, float] = field(default_factory=dict)
    #: seconds per phase (``ctx.timer``), summed over shards
    timers: dict[str, float] = field(default_factory=dict)

    def add(self, other: StepStats) -> None:
        self.docs_in += other.docs_in
        self.docs_out += other.docs_out
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out
        self.seconds += other.seconds
        self.dropped = dict(Counter(self.dropped) + Counter(other.dropped))
        self.counters = _sum(self.counters, other.counters)
        self.timers = _sum(self.timers, other.timers)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StepStats:
        return cls(**d)

    def numbers_text(self) -> str:
        """Counters then timers in one line, as the run table shows them (``clusters 12, buckets 0.31s``)."""
        parts = [f"{k} {v:,.0f}" if float(v).is_integer() else f"{k} {v:,.4g}" for k, v in self.counters.items()]
        parts += [f"{k} {v:.2f}s" for k, v in self.timers.items()]
        return ", ".join(parts)


class StepNumbers:
    """Counters and phase timers an operator records while it runs; the runner drains them into its
    :class:`StepStats`. Plain dicts, so a context carrying it pickles into worker processes."""

    def __init__(self) -> None:
        self.counters: dict[str, float] = {}
        self.timers: dict[str, float] = {}

    def stat(self, name: str, value: float = 1) -> None:
        """Add ``value`` to counter ``name`` (DataTrove's ``stat_update``)."""
        self.counters[name] = self.counters.get(name, 0) + value

    @contextmanager
    def timer(self, phase: str) -> Iterator[None]:
        """Add the wall time of the ``with`` block to timer ``phase`` (DataTrove's ``track_time``)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timers[phase] = self.timers.get(phase, 0.0) + time.perf_counter() - t0

    def drain(self) -> tuple[dict[str, float], dict[str, float]]:
        """The numbers recorded so far, which are then forgotten (the next shard starts from zero)."""
        out = (self.counters, self.timers)
        self.counters, self.timers = {}, {}
        return out


def merge_stats(per_shard: list[list[StepStats]]) -> list[StepStats]:
    """Sum the stats of each step over shards (steps in pipeline order)."""
    merged: dict[str, StepStats] = {}
    for shard in per_shard:
        for s in shard:
            merged.setdefault(s.step, StepStats(s.step)).add(s)
    return list(merged.values())
