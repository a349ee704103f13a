"""Operators' own numbers through the stats: counters (``ctx.stat``) and phase timers (``ctx.timer``) from
per-shard steps and from a global stage's fit land in the step's stats, summed over shards, the same with
one or two workers, shown in the run table, and reported unchanged by a resumed run."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from rich.console import Console

from curate import Pipeline, read, write
from curate.core.stats import StepNumbers, StepStats, merge_stats
from curate.core.text import split_lines
from curate.filters.c4 import C4Quality
from curate.filters.exact_dedup import ExactDedup
from tests.conftest import planted_copies_corpus

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Three files of the bundled real sample, each with copies of earlier documents planted."""
    return planted_copies_corpus(tmp_path_factory.mktemp("corpus"), files=3, rows=240)


def _run(corpus: Path, root: Path, workers: int):
    p = Pipeline(read(str(corpus / "*.jsonl"), batch_size=40), C4Quality(filter_no_terminal_punct=False),
                 ExactDedup(), write(str(root / "out")))
    res = p.run(work_dir=str(root / "work"), workers=workers, progress=False)
    stats = json.loads((root / "work" / "stats.json").read_text())
    return res, {s["step"]: s for s in stats["steps"]}


def test_numbers_add_and_drain():
    n = StepNumbers()
    n.stat("a", 2)
    n.stat("a")
    with n.timer("phase"):
        pass
    counters, timers = n.drain()
    assert counters == {"a": 3} and set(timers) == {"phase"} and timers["phase"] >= 0
    assert n.drain() == ({}, {})
    a = StepStats("s", counters={"x": 1, "y": 2.5}, timers={"t": 1.0})
    b = StepStats("s", counters={"x": 4}, timers={"t": 0.5, "u": 2.0})
    (m,) = merge_stats([[a], [b]])
    assert m.counters == {"x": 5, "y": 2.5} and m.timers == {"t": 1.5, "u": 2.0}
    assert StepStats.from_dict(m.to_dict()) == m


def test_counters_from_shards_and_fit_are_summed_with_one_or_two_workers(corpus, tmp_path):
    texts = pl.concat([pl.read_ndjson(f) for f in sorted(corpus.glob("*.jsonl"))])
    n_lines = texts.select(split_lines(pl.col("text")).alias("l")).explode("l").drop_nulls("l").height
    by_workers = {}
    for workers in (1, 2):
        res, steps = _run(corpus, tmp_path / f"w{workers}", workers)
        c4, dd = steps["c4_quality"], steps["exact_dedup"]
        # per-shard counters: every line of every document was scored once, whatever the sharding
        assert c4["counters"]["lines"] == n_lines
        assert 0 < c4["counters"]["lines_removed"] < n_lines
        markers = sorted((tmp_path / f"w{workers}" / "work" / "segments" / "000" / "_done").glob("*.json"))
        assert len(markers) == 3
        per_shard = [next(s for s in json.loads(m.read_text())["stats"] if s["step"] == "c4_quality")
                     for m in markers]
        assert sum(s["counters"]["lines"] for s in per_shard) == n_lines
        assert all(0 < s["counters"]["lines"] < n_lines for s in per_shard)
        # fit counters: the duplicates the fit found are the rows the step dropped
        assert dd["counters"]["duplicates"] == dd["dropped"]["exact_duplicate"] >= 10
        assert dd["counters"]["distinct_texts"] + dd["counters"]["duplicates"] == dd["docs_in"]
        assert set(dd["timers"]) == {"hash", "group"} and all(v >= 0 for v in dd["timers"].values())
        assert dd["seconds"] >= sum(dd["timers"].values())  # the fit's phases are inside its seconds
        console = Console(width=250, record=True)
        console.print(res.table())
        shown = console.export_text()
        assert "lines_removed" in shown and "duplicates" in shown and "group" in shown
        by_workers[workers] = {k: v["counters"] for k, v in steps.items()}
    assert by_workers[1] == by_workers[2]


def test_resumed_run_reports_the_same_counters(corpus, tmp_path):
    first, steps1 = _run(corpus, tmp_path, 1)
    again, steps2 = _run(corpus, tmp_path, 1)
    assert again.resumed_shards == 2 * 3  # nothing reran: shard markers and the fit marker were reused
    for name in ("c4_quality", "exact_dedup"):
        assert steps2[name]["counters"] == steps1[name]["counters"] and steps1[name]["counters"]
        assert steps2[name]["timers"] == steps1[name]["timers"]
    assert [s.to_dict() for s in first.steps] == [s.to_dict() for s in again.steps]
