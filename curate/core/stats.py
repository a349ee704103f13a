"""Per-step counters: docs and bytes in/out, seconds, and drop counts per reason."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class StepStats:
    step: str
    docs_in: int = 0
    docs_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0
    dropped: dict[str, int] = field(default_factory=dict)

    def add(self, other: StepStats) -> None:
        self.docs_in += other.docs_in
        self.docs_out += other.docs_out
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out
        self.seconds += other.seconds
        self.dropped = dict(Counter(self.dropped) + Counter(other.dropped))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StepStats:
        return cls(**d)


def merge_stats(per_shard: list[list[StepStats]]) -> list[StepStats]:
    """Sum the stats of each step over shards (steps in pipeline order)."""
    merged: dict[str, StepStats] = {}
    for shard in per_shard:
        for s in shard:
            merged.setdefault(s.step, StepStats(s.step)).add(s)
    return list(merged.values())
