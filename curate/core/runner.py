"""The work of one shard in one segment: read, run the fused operators batch by batch, write.

This function runs in worker processes (local executor) or Ray tasks; everything it needs travels in
:class:`ShardTask`, and everything it produces is renamed into place before its completion marker is
written, so an interrupted run resumes from the last finished shard.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from curate.core.operator import UID, Operator, RunContext
from curate.core.stats import StepStats
from curate.core.step import run_step
from curate.io.readers import InputSpec, ReadReport, read_shard
from curate.io.shards import Shard
from curate.io.spill import SpillWriter, read_spill
from curate.io.writers import OutputSpec, RejectsSpec, ShardWriter


@dataclass
class ShardTask:
    segment: int
    shard: Shard
    ops: list[Operator]
    ctx: list[RunContext]  # one per op (global stages get their state dir)
    source: InputSpec | Path  # input spec (segment 0) or spilled shard folder of the previous segment
    spill_dir: Path | None  # where to spill (non-final segments)
    output: OutputSpec | None  # final segment
    rejects: RejectsSpec
    marker: Path
    fingerprint: str
    trace_dir: Path | None = None
    trace_docs: int = 5


_SETUP_CACHE: dict[tuple, tuple[Operator, RunContext]] = {}


def _ready(op: Operator, ctx: RunContext, key: tuple) -> tuple[Operator, RunContext]:
    """Set each operator up once per worker process (models are loaded once, not per shard). Returns the
    operator with the context it was set up with: the one whose numbers (``ctx.stat``) it records into."""
    if key not in _SETUP_CACHE:
        op.setup(ctx)
        _SETUP_CACHE[key] = (op, ctx)
    return _SETUP_CACHE[key]


def clear_setup_cache() -> None:
    """Forget operators set up in this process (models, loaded state): called when a run ends."""
    _SETUP_CACHE.clear()


def read_marker(path: Path, fingerprint: str) -> list[StepStats] | None:
    """The stats in a completion marker, or None if absent or from a different configuration."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if data.get("fingerprint") != fingerprint:
        return None
    return [StepStats.from_dict(s) for s in data["stats"]]


def write_json_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


def run_shard(task: ShardTask, progress: Callable[[int], None] | None = None) -> list[StepStats]:
    ready = [_ready(op, c, (task.segment, i, task.fingerprint, id(type(op)), str(c.state_dir))) for i, (op, c) in
             enumerate(zip(task.ops, task.ctx))]
    ops = [op for op, _ in ready]
    stats = [StepStats(op.step_name) for op in ops]
    read_stats = StepStats("read") if task.segment == 0 else None
    rep = ReadReport()
    stem = f"part-{task.shard.index:05d}"
    rejects: dict[str, ShardWriter] = {}
    sink: SpillWriter | ShardWriter
    if task.output is not None:
        out_dir = Path(task.output.path)
        for old in [*out_dir.glob(f"{stem}.*"), *out_dir.glob(f"{stem}-*")]:
            old.unlink()
        sink = ShardWriter(out_dir, stem, task.output.format)
    else:
        assert task.spill_dir is not None
        sink = SpillWriter(task.spill_dir / task.shard.name)

    def batches() -> Iterator[pl.DataFrame]:
        if isinstance(task.source, InputSpec):
            yield from read_shard(task.source, task.shard, rep)
        else:
            yield from read_spill(task.source)

    def reject_writer(step: str) -> ShardWriter:
        if step not in rejects:
            folder = Path(task.rejects.path) / step
            for old in [*folder.glob(f"{stem}.*"), *folder.glob(f"{stem}-*")]:
                old.unlink()
            rejects[step] = ShardWriter(folder, stem, task.rejects.format)
        return rejects[step]

    traces: dict[str, list[dict]] = {op.step_name: [] for op in ops}
    try:
        t_read = time.perf_counter()
        for batch in batches():
            if read_stats is not None:
                read_stats.seconds += time.perf_counter() - t_read
            n = batch.height
            for op, st in zip(ops, stats):
                before = batch.select(UID, "text") if op.rewrites_text and len(traces[op.step_name]) < task.trace_docs \
                    else None
                batch, rej, s = run_step(op, batch)
                if before is not None:
                    _trace(traces[op.step_name], before, batch, task.trace_docs)
                st.add(s)
                if rej is not None:
                    if not task.rejects.keep_text:
                        rej = rej.drop("text")
                    reject_writer(op.step_name).write(rej)
                if batch.height == 0:
                    break
            if task.output is not None and task.output.columns is not None:
                keep = {"id", "text", *task.output.columns}
                batch = batch.select([c for c in batch.columns if c in keep or c.startswith("__")])
            sink.write(batch)
            if progress is not None:
                progress(n)
            t_read = time.perf_counter()
        if read_stats is not None:
            read_stats.docs_in = rep.lines
            read_stats.docs_out = rep.lines - sum(rep.skipped.values())
            read_stats.dropped = dict(rep.skipped)
            read_stats.bytes_out = stats[0].bytes_in if stats else 0
            if rep.rejects:
                reject_writer("read").write(pl.DataFrame(rep.rejects))
    except BaseException:
        for _, c in ready:  # a failed shard's numbers must not leak into the next shard of this worker
            c.numbers.drain()
        sink.abort()
        for w in rejects.values():
            w.abort()
        raise
    sink.close()
    for w in rejects.values():
        w.close()
    if task.trace_dir is not None:
        for step, rows in traces.items():
            if rows:
                write_json_atomic(task.trace_dir / step / f"{task.shard.name}.json", rows)
    for (_, c), st in zip(ready, stats):  # the operators' own numbers of this shard travel in its marker
        st.counters, st.timers = c.numbers.drain()
    all_stats = ([read_stats] if read_stats is not None else []) + stats
    write_json_atomic(task.marker, {"fingerprint": task.fingerprint, "shard": task.shard.index,
                                    "stats": [s.to_dict() for s in all_stats]})
    return all_stats


def _trace(rows: list[dict], before: pl.DataFrame, after: pl.DataFrame, limit: int) -> None:
    """Keep up to ``limit`` before/after pairs of documents whose text an operator changed."""
    if "id" not in after.columns:
        return
    changed = after.select(UID, "id", pl.col("text").alias("after")).join(before, on=UID).filter(
        pl.col("text") != pl.col("after"))
    for r in changed.head(limit - len(rows)).iter_rows(named=True):
        rows.append({"id": r["id"], "before": r["text"], "after": r["after"]})
