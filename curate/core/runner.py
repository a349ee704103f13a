"""The work of one shard in one segment: read, run the fused operators batch by batch, write.

This function runs in worker processes (local executor) or Ray tasks; everything it needs travels in
:class:`ShardTask`, and everything it produces is renamed into place before its completion marker is
written, so an interrupted run resumes from the last finished shard. The marker lists every file the
shard wrote with its size, and counts only while they are all there (:func:`read_marker`). A shard
replaces only part files of its own that the folder's ownership journal records as curate's
(:mod:`curate.core.ownership`); an ``OSError`` while writing (disk full, permissions) is reported as a
:class:`CurateError` naming the path.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from curate.core.batch_cache import batch_scope
from curate.core.errors import CurateError
from curate.core.operator import UID, Operator, RunContext
from curate.core.ownership import owned, part_pattern
from curate.core.preflight import check_input_batch, reserved_columns
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
    work_dir: Path | None = None  # root of the spill paths recorded in the marker
    #: segment 0: column name -> who writes it, for the input name-clash guard (default: this segment's ops)
    reserved: dict[str, str] | None = None


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


@dataclass
class Marker:
    """A verified completion marker: the shard's stats and the files it vouches for (root -> rel -> size)."""

    stats: list[StepStats]
    files: dict[str, dict[str, int]] = field(default_factory=dict)


def read_marker(path: Path, fingerprint: str, roots: dict[str, Path] | None = None) -> Marker | None:
    """The marker of a finished shard, or None if absent, from a different configuration, or if any file it
    vouches for is missing or has another size (``rm -rf out`` reruns the shards)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if data.get("fingerprint") != fingerprint:
        return None
    files = data.get("files")
    if not isinstance(files, dict):
        return None  # a marker from before files were recorded cannot vouch for anything
    for root_name, entries in files.items():
        root = (roots or {}).get(root_name)
        if root is None:
            return None
        for rel, size in entries.items():
            try:
                if os.path.getsize(Path(root) / rel) != size:
                    return None
            except OSError:
                return None
    return Marker([StepStats.from_dict(s) for s in data["stats"]], files)


@contextlib.contextmanager
def writing(path: Path | str | Callable[[], Path | str]) -> Iterator[None]:
    """Turn an ``OSError`` (disk full, permission denied, read-only file system) into a
    :class:`CurateError` that names the path being written (``path`` may be a callable, asked then)."""
    try:
        yield
    except CurateError:
        raise
    except OSError as e:
        where = path() if callable(path) else path
        raise CurateError(f"cannot write '{where}': {e.strerror or e}") from e


def _current_file(w: ShardWriter | SpillWriter, default: Path) -> Callable[[], Path]:
    """The file a writer is writing now (its final name), for error messages."""
    return lambda: (w.current if isinstance(w, ShardWriter) else None) or default


def id_hash_path(marker: Path) -> Path:
    """Where the final segment keeps a shard's output id hashes (beside its completion markers)."""
    return marker.parent.parent / "_ids" / f"{marker.stem}.npy"


def write_json_atomic(path: Path, obj) -> None:
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
        tmp.write_text(json.dumps(obj, indent=1, default=str))
        os.replace(tmp, path)


def _clear_parts(root: Path, folder: Path, stem: str) -> None:
    """Delete this shard's earlier part files in ``folder`` - only those the root's journal owns."""
    pat = part_pattern(stem)
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return
    for name in names:
        if pat.match(name) and owned(root, folder / name):
            with writing(folder / name):
                (folder / name).unlink()


def _sizes(root: Path, paths: list[Path]) -> dict[str, int]:
    r = Path(os.path.realpath(root))
    return {Path(os.path.realpath(p)).relative_to(r).as_posix(): os.path.getsize(p) for p in paths}


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
    rejects_root = Path(task.rejects.path)
    if task.output is not None:
        out_dir = Path(task.output.path)
        _clear_parts(out_dir, out_dir, stem)
        with writing(out_dir / stem):
            sink = ShardWriter(out_dir, stem, task.output.format, id_hashes=id_hash_path(task.marker),
                               level=task.output.compression_level)
        sink_where = out_dir / stem
    else:
        assert task.spill_dir is not None
        sink_where = task.spill_dir / task.shard.name
        with writing(sink_where):
            sink = SpillWriter(sink_where)

    def batches() -> Iterator[pl.DataFrame]:
        if isinstance(task.source, InputSpec):
            reserved = task.reserved if task.reserved is not None else reserved_columns(task.ops)
            for b in read_shard(task.source, task.shard, rep):
                check_input_batch(b, reserved, task.shard.path)
                yield b
        else:
            yield from read_spill(task.source)

    def reject_writer(step: str) -> ShardWriter:
        if step not in rejects:
            folder = rejects_root / step
            _clear_parts(rejects_root, folder, stem)
            with writing(folder / stem):
                rejects[step] = ShardWriter(folder, stem, task.rejects.format, typed_head=True,
                                            level=task.rejects.compression_level)
        return rejects[step]

    traces: dict[str, list[dict]] = {op.step_name: [] for op in ops}
    try:
        t_read = time.perf_counter()
        for batch in batches():
            if read_stats is not None:
                read_stats.seconds += time.perf_counter() - t_read
            n = batch.height
            with batch_scope():  # what the operators of this batch share (word tokens), dropped after it
                for op, st in zip(ops, stats):
                    before = batch.select(UID, "text") \
                        if op.rewrites_text and len(traces[op.step_name]) < task.trace_docs \
                        else None
                    batch, rej, s = run_step(op, batch)
                    if before is not None:
                        _trace(traces[op.step_name], before, batch, task.trace_docs)
                    st.add(s)
                    if rej is not None:
                        if not task.rejects.keep_text:
                            rej = rej.drop("text")
                        w = reject_writer(op.step_name)
                        with writing(_current_file(w, w.folder / stem)):
                            w.write(rej)
                    if batch.height == 0:
                        break
            if task.output is not None and task.output.columns is not None:
                keep = {"id", "text", *task.output.columns}
                batch = batch.select([c for c in batch.columns if c in keep or c.startswith("__")])
            with writing(_current_file(sink, sink_where)):
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
                w = reject_writer("read")
                with writing(w.folder / stem):
                    w.write(pl.DataFrame(rep.rejects))
    except BaseException:
        for _, c in ready:  # a failed shard's numbers must not leak into the next shard of this worker
            c.numbers.drain()
        sink.abort()
        for w in rejects.values():
            w.abort()
        raise
    files: dict[str, dict[str, int]] = {}
    try:
        with writing(_current_file(sink, sink_where)):
            finals = sink.close()
        for w in rejects.values():
            with writing(w.folder / stem):
                files.setdefault("rejects", {}).update(_sizes(rejects_root, w.close()))
    except BaseException:
        for w in rejects.values():
            w.abort()
        raise
    if task.output is not None:
        files["output"] = _sizes(Path(task.output.path), finals or [])
    else:
        assert task.work_dir is not None
        files["work"] = _sizes(task.work_dir, sorted(p for p in sink_where.iterdir() if p.is_file()))
    if task.trace_dir is not None:
        for step, rows in traces.items():
            if rows:
                write_json_atomic(task.trace_dir / step / f"{task.shard.name}.json", rows)
    for (_, c), st in zip(ready, stats):  # the operators' own numbers of this shard travel in its marker
        st.counters, st.timers = c.numbers.drain()
    all_stats = ([read_stats] if read_stats is not None else []) + stats
    write_json_atomic(task.marker, {"fingerprint": task.fingerprint, "shard": task.shard.index,
                                    "stats": [s.to_dict() for s in all_stats], "files": files})
    return all_stats


def _trace(rows: list[dict], before: pl.DataFrame, after: pl.DataFrame, limit: int) -> None:
    """Keep up to ``limit`` before/after pairs of documents whose text an operator changed."""
    if "id" not in after.columns:
        return
    changed = after.select(UID, "id", pl.col("text").alias("after")).join(before, on=UID).filter(
        pl.col("text") != pl.col("after"))
    for r in changed.head(limit - len(rows)).iter_rows(named=True):
        rows.append({"id": r["id"], "before": r["text"], "after": r["after"]})
