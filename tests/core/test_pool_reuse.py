"""Worker processes are spawned once per run (not per segment and per fit), and each gets a polars thread
pool sized to its share of the cores (curate.core.pool.shared_pool)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl

from curate import Mapper, Pipeline, read, write
from curate.core.operator import Column
from curate.core.pool import iter_tasks, shared_pool
from curate.filters.exact_dedup import ExactDedup


def _pid_env(_: int) -> tuple[int, str | None]:
    return os.getpid(), os.environ.get("POLARS_MAX_THREADS")


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def test_calls_inside_a_shared_pool_reuse_its_workers(monkeypatch):
    monkeypatch.delenv("POLARS_MAX_THREADS", raising=False)
    tasks = [(i,) for i in range(8)]
    with shared_pool():
        first = list(iter_tasks(_pid_env, tasks, 2))
        second = list(iter_tasks(_pid_env, tasks, 2))
    outside = list(iter_tasks(_pid_env, tasks, 2))
    pids = {p for p, _ in first}
    assert {p for p, _ in second} <= pids and os.getpid() not in pids
    assert not {p for p, _ in outside} & pids  # the shared workers were stopped with the block
    assert {env for _, env in first + second + outside} == {str(max(1, _cores() // 2))}
    assert "POLARS_MAX_THREADS" not in os.environ  # the driver's own setting is left as it was


def test_a_users_polars_threads_setting_is_kept(monkeypatch):
    monkeypatch.setenv("POLARS_MAX_THREADS", "3")
    assert {env for _, env in iter_tasks(_pid_env, [(i,) for i in range(4)], 2)} == {"3"}


class Pid(Mapper):
    """Adds the worker's pid (test operator)."""

    def __init__(self, column: str):
        super().__init__()
        self.column = column
        self.step_name = column

    def adds(self) -> dict[str, Column]:
        return {self.column: Column(pl.Int64, "pid of the process that ran the batch")}

    def map(self, batch: pl.DataFrame) -> pl.DataFrame:
        return batch.with_columns(pl.lit(os.getpid(), dtype=pl.Int64).alias(self.column))


def test_segments_before_and_after_a_global_stage_run_in_the_same_workers(tmp_path: Path):
    inp = tmp_path / "in"
    inp.mkdir()
    for k in range(4):
        (inp / f"p{k}.jsonl").write_text("".join(json.dumps({"id": f"{k}-{i}", "text": f"doc {'abcd'[k]} {'y' * (i + 1)}"}) + "\n"
                                                 for i in range(20)))
    Pipeline(read(str(inp / "*.jsonl")), Pid("pid_before"), ExactDedup(), Pid("pid_after"),
             write(str(tmp_path / "out"))).run(work_dir=str(tmp_path / "run"), workers=2, progress=False)
    from curate import read_output

    out = read_output(str(tmp_path / "out"))
    before, after = set(out.get_column("pid_before")), set(out.get_column("pid_after"))
    assert out.height == 80 and os.getpid() not in before
    assert after <= before  # segment 1 ran in segment 0's workers: no second spawn
