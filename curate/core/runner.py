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


def ready_ops(task: ShardTask) -> list[tuple[Operator, RunContext]]:
    """The task's operators, each set up once per worker process, with the context it records into."""
    return [_ready(op, c, (task.segment, i, task.fingerprint, id(type(op)), str(c.state_dir))) for i, (op, c) in
            enumerate(zip(task.ops, task.ctx))]


def shard_batches(task: ShardTask, rep: ReadReport) -> Iterator[pl.DataFrame]:
    """The batches a shard task reads: its input shard (segment 0, checked for reserved column names;
    skips counted in ``rep``) or the previous segment's spill of it."""
    if isinstance(task.source, InputSpec):
        reserved = task.reserved if task.reserved is not None else reserved_columns(task.ops)
        for b in read_shard(task.source, task.shard, rep):
            check_input_batch(b, reserved, task.shard.path)
            yield b
    else:
        yield from read_spill(task.source)


def process_batch(ops: list[Operator], batch: pl.DataFrame, *, keep_text: bool,
                  traces: dict[str, list[dict]], trace_docs: int
                  ) -> tuple[pl.DataFrame, list[tuple[str, pl.DataFrame]], list[StepStats | None]]:
    """Run the fused operators over one batch: the kept rows, the rejected rows of each step (in step
    order, ``text`` dropped unless ``keep_text``), and each step's stats (None for steps not reached
    because an earlier one left no rows). Traces of text rewrites are appended to ``traces``."""
    rejected: list[tuple[str, pl.DataFrame]] = []
    step_stats: list[StepStats | None] = [None] * len(ops)
    with batch_scope():  # what the operators of this batch share (word tokens), dropped after it
        for i, op in enumerate(ops):
            before = batch.select(UID, "text") \
                if op.rewrites_text and len(traces[op.step_name]) < trace_docs \
                else None
            batch, rej, s = run_step(op, batch)
            if before is not None:
                _trace(traces[op.step_name], before, batch, trace_docs)
            step_stats[i] = s
            if rej is not None:
                rejected.append((op.step_name, rej if keep_text else rej.drop("text")))
            if batch.height == 0:
                break
    return batch, rejected, step_stats


def read_step_stats(rep: ReadReport, seconds: float, first: StepStats | None) -> StepStats:
    """The ``read`` row of segment 0: lines read, rows skipped by reason, the bytes handed to step one."""
    st = StepStats("read", seconds=seconds)
    st.docs_in = rep.lines
    st.docs_out = rep.lines - sum(rep.skipped.values())
    st.dropped = dict(rep.skipped)
    st.bytes_out = first.bytes_in if first is not None else 0
    return st


class ShardOutputs:
    """Where one shard task writes: its kept rows (the output parts of the final segment, else its spill),
    one rejects part per step, its traces and, last, its completion marker. Earlier part files of the
    shard are deleted first, only those the folder's ownership journal records as curate's."""

    def __init__(self, task: ShardTask):
        self.task = task
        self.stem = f"part-{task.shard.index:05d}"
        self.rejects: dict[str, ShardWriter] = {}
        self.rejects_root = Path(task.rejects.path)
        self.sink: SpillWriter | ShardWriter
        if task.output is not None:
            out_dir = Path(task.output.path)
            _clear_parts(out_dir, out_dir, self.stem)
            with writing(out_dir / self.stem):
                self.sink = ShardWriter(out_dir, self.stem, task.output.format, id_hashes=id_hash_path(task.marker),
                                        level=task.output.compression_level)
            self.sink_where = out_dir / self.stem
        else:
            assert task.spill_dir is not None
            self.sink_where = task.spill_dir / task.shard.name
            with writing(self.sink_where):
                self.sink = SpillWriter(self.sink_where)

    def reject(self, step: str, rej: pl.DataFrame) -> None:
        """Append rejected rows to the step's rejects part (opened on the first)."""
        if step not in self.rejects:
            folder = self.rejects_root / step
            _clear_parts(self.rejects_root, folder, self.stem)
            with writing(folder / self.stem):
                self.rejects[step] = ShardWriter(folder, self.stem, self.task.rejects.format, typed_head=True,
                                                 level=self.task.rejects.compression_level)
        w = self.rejects[step]
        with writing(_current_file(w, w.folder / self.stem)):
            w.write(rej)

    def write(self, batch: pl.DataFrame) -> None:
        """Append kept rows (the final segment keeps only ``output.columns`` when set)."""
        out = self.task.output
        if out is not None and out.columns is not None:
            keep = {"id", "text", *out.columns}
            batch = batch.select([c for c in batch.columns if c in keep or c.startswith("__")])
        with writing(_current_file(self.sink, self.sink_where)):
            self.sink.write(batch)

    def abort(self) -> None:
        self.sink.abort()
        for w in self.rejects.values():
            w.abort()

    def close(self) -> dict[str, dict[str, int]]:
        """Rename every part into place; the files written (root name -> relative path -> size)."""
        files: dict[str, dict[str, int]] = {}
        try:
            with writing(_current_file(self.sink, self.sink_where)):
                finals = self.sink.close()
            for w in self.rejects.values():
                with writing(w.folder / self.stem):
                    files.setdefault("rejects", {}).update(_sizes(self.rejects_root, w.close()))
        except BaseException:
            for w in self.rejects.values():
                w.abort()
            raise
        task = self.task
        if task.output is not None:
            files["output"] = _sizes(Path(task.output.path), finals or [])
        else:
            assert task.work_dir is not None
            files["work"] = _sizes(task.work_dir, sorted(p for p in self.sink_where.iterdir() if p.is_file()))
        return files

    def finish(self, files: dict[str, dict[str, int]], stats: list[StepStats], traces: dict[str, list[dict]]) -> None:
        """Write the traces, then the completion marker vouching for ``files`` with the shard's stats."""
        task = self.task
        if task.trace_dir is not None:
            for step, rows in traces.items():
                if rows:
                    write_json_atomic(task.trace_dir / step / f"{task.shard.name}.json", rows)
        write_json_atomic(task.marker, {"fingerprint": task.fingerprint, "shard": task.shard.index,
                                        "stats": [s.to_dict() for s in stats], "files": files})


def run_shard(task: ShardTask, progress: Callable[[int], None] | None = None) -> list[StepStats]:
    ready = ready_ops(task)
    ops = [op for op, _ in ready]
    stats = [StepStats(op.step_name) for op in ops]
    rep = ReadReport()
    out = ShardOutputs(task)
    traces: dict[str, list[dict]] = {op.step_name: [] for op in ops}
    read_seconds = 0.0
    read_stats: StepStats | None = None
    try:
        t_read = time.perf_counter()
        for batch in shard_batches(task, rep):
            read_seconds += time.perf_counter() - t_read
            n = batch.height
            batch, rejected, step_stats = process_batch(ops, batch, keep_text=task.rejects.keep_text,
                                                        traces=traces, trace_docs=task.trace_docs)
            for st, s in zip(stats, step_stats):
                if s is not None:
                    st.add(s)
            for step, rej in rejected:
                out.reject(step, rej)
            out.write(batch)
            if progress is not None:
                progress(n)
            t_read = time.perf_counter()
        if task.segment == 0:
            read_stats = read_step_stats(rep, read_seconds, stats[0] if stats else None)
            if rep.rejects:
                out.reject("read", pl.DataFrame(rep.rejects))
    except BaseException:
        for _, c in ready:  # a failed shard's numbers must not leak into the next shard of this worker
            c.numbers.drain()
        out.abort()
        raise
    files = out.close()
    for (_, c), st in zip(ready, stats):  # the operators' own numbers of this shard travel in its marker
        st.counters, st.timers = c.numbers.drain()
    all_stats = ([read_stats] if read_stats is not None else []) + stats
    out.finish(files, all_stats, traces)
    return all_stats


def _trace(rows: list[dict], before: pl.DataFrame, after: pl.DataFrame, limit: int) -> None:
    """Keep up to ``limit`` before/after pairs of documents whose text an operator changed."""
    if "id" not in after.columns:
        return
    changed = after.select(UID, "id", pl.col("text").alias("after")).join(before, on=UID).filter(
        pl.col("text") != pl.col("after"))
    for r in changed.head(limit - len(rows)).iter_rows(named=True):
        rows.append({"id": r["id"], "before": r["text"], "after": r["after"]})
