"""Ray executor: each segment of map/filter steps runs as a Ray Data pipeline (``mode: data``, the default)
or as the local executor's shard tasks in Ray actors (``mode: actors``); a global stage's per-shard fit work
(``FitContext.map_shards``: MinHash signatures and candidate verification, SemDeDup embeddings, DSIR and
Moore-Lewis scoring) runs as Ray tasks across the cluster.

``executor: {type: ray, mode: data}``: the segment's shards are read by a Ray Data datasource (one read
task per shard, curate's own readers, so the input formats, bad-row skips and reserved-column checks are
the local ones), and one ``map_batches`` applies all the segment's steps to each batch: Arrow -> polars ->
the operators (:func:`curate.core.runner.process_batch`, the local loop) -> Arrow. When an operator loads
state in ``setup()`` (fastText, KenLM, embedding and LM models, word lists) the mapper is a callable class
in an actor pool of ``workers`` actors, so each model loads once per actor; otherwise the batches run as
Ray tasks. When an operator needs torch and the cluster has GPUs, each actor asks for ``num_gpus`` (a share
of one GPU). A Ray Data row is one whole curate batch, held as Arrow IPC bytes: Ray merges and splits blocks
only at row boundaries, so every operator sees the batches it sees locally (merging Arrow batches would unify
their schemas and change the output), and ``batch_size=1`` hands the actors one curate batch at a time.

The mapper stages each batch's kept and rejected rows (Arrow IPC, under ``segments/NNN/_ray/``) and
returns only its numbers (per-step stats, operator counters, traces). When all the batches of a shard are
in, a Ray task replays them in order through the local writers (:class:`curate.core.runner.ShardOutputs`)
and writes the shard's completion marker, so output and rejects parts, stats, traces and resume markers are
byte for byte those of the local executor, and a shard finishes (and resumes) on its own. The staged copy
costs one extra write and read of each batch on the work dir's disk (see benchmarks/bench_ray.py).

``mode: actors``: each shard runs :func:`curate.core.runner.run_shard` in one of ``workers`` long-lived
actors: no staging, one shard per actor at a time (no batch-level balancing).

The work dir and the output paths must be on storage every node sees (a shared filesystem; a ``s3://``
output is staged in the work dir and uploaded after the run, :mod:`curate.executors`). The global part of
each fit (grouping hashes, MinHash buckets and connected components, selector top-k) runs as Ray Data
shuffles (:mod:`curate.executors.ray_global`, installed into every fit's context), off the driver.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl

from curate.core.errors import CurateError, MissingDependencyError
from curate.core.operator import Operator
from curate.core.run import RunSpec
from curate.core.runner import (
    ShardOutputs,
    ShardTask,
    process_batch,
    read_step_stats,
    ready_ops,
    run_shard,
    shard_batches,
    write_json_atomic,
)
from curate.core.stats import StepStats
from curate.executors.base import Executor
from curate.io.readers import ReadReport

#: the read report a shard's read task leaves beside its staged batches (lines, skips, batch count)
_REPORT = "read.json"


class _ShardActor:
    """One Ray worker process kept for the whole run: its setup cache holds the loaded operators."""

    def ready(self) -> int:
        return os.getpid()

    def run(self, task: ShardTask) -> int:
        stats = run_shard(task)
        return stats[0].docs_in if stats else 0


def _remote_call(fn: Callable[..., Any], args: tuple) -> Any:
    return fn(*args)


def _staging(task: ShardTask) -> Path:
    """Where a shard's batches wait for its writer: ``segments/NNN/_ray/<shard>`` (beside ``_done``)."""
    return task.marker.parent.parent / "_ray" / task.shard.name


def _ipc(df: pl.DataFrame) -> bytes:
    import io

    buf = io.BytesIO()
    df.write_ipc(buf, compression="uncompressed")
    return buf.getvalue()


def _write_ipc(path: Path, df: pl.DataFrame) -> None:
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    df.write_ipc(tmp, compression="uncompressed")
    os.replace(tmp, path)  # a retried Ray task rewrites the same name whole


def _read_shard_blocks(task: ShardTask) -> Iterator[Any]:
    """The read task of one shard: its batches as Arrow rows (shard, seq, ipc); its read report to disk."""
    import pyarrow as pa

    stage = _staging(task)
    shutil.rmtree(stage, ignore_errors=True)  # batches of an interrupted attempt
    stage.mkdir(parents=True)
    rep = ReadReport()
    seconds, seq = 0.0, 0
    t0 = time.perf_counter()
    for batch in shard_batches(task, rep):
        seconds += time.perf_counter() - t0
        yield pa.table({"shard": [task.shard.index], "seq": [seq], "rows": [batch.height],
                        "ipc": pa.array([_ipc(batch)], type=pa.large_binary())})
        seq += 1
        t0 = time.perf_counter()
    if rep.rejects:
        _write_ipc(stage / "read-rejects.arrow", pl.DataFrame(rep.rejects))
    write_json_atomic(stage / _REPORT, {"batches": seq, "seconds": seconds, "lines": rep.lines,
                                        "skipped": dict(rep.skipped), "rejects": bool(rep.rejects)})


def _shard_source(tasks: list[ShardTask]) -> Any:
    """A Ray Data datasource with one read task per shard task (curate's readers do the reading)."""
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class ShardSource(Datasource):
        def estimate_inmemory_data_size(self) -> int | None:
            return None

        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                           data_context: Any = None) -> list[ReadTask]:
            # one task per shard whatever ``parallelism`` asks: a shard is the unit of output and resume
            return [ReadTask(lambda t=t: _read_shard_blocks(t),
                             BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None,
                                           input_files=(t.shard.path,)))
                    for t in tasks]

    return ShardSource()


class _SegmentMapper:
    """The ``map_batches`` callable of one segment: holds the set-up operators (once per actor or worker
    process), runs them over each curate batch, stages kept and rejected rows, returns the numbers."""

    def __init__(self, task: ShardTask, stages: dict[int, str]):
        self.task = task
        self.stages = {i: Path(d) for i, d in stages.items()}  # shard index -> its staging folder
        self.ready = ready_ops(task)

    def __call__(self, table: Any) -> Any:
        import pyarrow as pa

        ops = [op for op, _ in self.ready]
        out: dict[str, list] = {"shard": [], "seq": [], "rows": [], "meta": []}
        for shard, seq, rows, ipc in zip(*(table.column(c).to_pylist() for c in ("shard", "seq", "rows", "ipc"))):
            batch = pl.read_ipc(ipc)
            traces: dict[str, list[dict]] = {op.step_name: [] for op in ops}
            try:
                kept, rejected, step_stats = process_batch(ops, batch, keep_text=self.task.rejects.keep_text,
                                                           traces=traces, trace_docs=self.task.trace_docs)
            finally:  # this batch's operator numbers, also of a failed batch (they must not leak)
                numbers = [c.numbers.drain() for _, c in self.ready]
            stage = self.stages[shard]
            _write_ipc(stage / f"{seq:06d}.kept.arrow", kept)
            for k, (_, rej) in enumerate(rejected):
                _write_ipc(stage / f"{seq:06d}.rej{k}.arrow", rej)
            out["shard"].append(shard)
            out["seq"].append(seq)
            out["rows"].append(rows)
            out["meta"].append(json.dumps({
                "stats": [s.to_dict() if s is not None else None for s in step_stats],
                "numbers": numbers, "rejects": [step for step, _ in rejected],
                "traces": {k: v for k, v in traces.items() if v}}, default=str))
        return pa.table(out)


def _map_batches(table: Any, task: ShardTask, stages: dict[int, str]) -> Any:
    """Task mode (no operator loads state): the worker process's setup cache keeps operators set up."""
    return _SegmentMapper(task, stages)(table)


def _finish_shard(task: ShardTask, metas: list[str]) -> int:
    """Replay a shard's staged batches, in order, through the local writers; write its marker."""
    stage = _staging(task)
    report = json.loads((stage / _REPORT).read_text())
    assert len(metas) == report["batches"], f"shard {task.shard.index}: {len(metas)} of {report['batches']} batches"
    names = [op.step_name for op in task.ops]
    stats = [StepStats(n) for n in names]
    counters: list[tuple[dict[str, float], dict[str, float]]] = [({}, {}) for _ in names]
    traces: dict[str, list[dict]] = {n: [] for n in names}
    out = ShardOutputs(task)
    try:
        for seq, raw in enumerate(metas):
            meta = json.loads(raw)
            for st, s in zip(stats, meta["stats"]):
                if s is not None:
                    st.add(StepStats.from_dict(s))
            for (c, t), (bc, bt) in zip(counters, meta["numbers"]):
                for d, b in ((c, bc), (t, bt)):
                    for k, v in b.items():
                        d[k] = d.get(k, 0) + v
            for step, rows in meta["traces"].items():
                traces[step].extend(rows[:task.trace_docs - len(traces[step])])
            for k, step in enumerate(meta["rejects"]):
                out.reject(step, pl.read_ipc(stage / f"{seq:06d}.rej{k}.arrow"))
            out.write(pl.read_ipc(stage / f"{seq:06d}.kept.arrow"))
        read_stats = None
        if task.segment == 0:
            rep = ReadReport(lines=report["lines"])
            rep.skipped.update(report["skipped"])
            read_stats = read_step_stats(rep, report["seconds"], stats[0] if stats else None)
            if report["rejects"]:
                out.reject("read", pl.read_ipc(stage / "read-rejects.arrow"))
    except BaseException:
        out.abort()
        raise
    files = out.close()
    for st, (c, t) in zip(stats, counters):
        st.counters, st.timers = c, t
    out.finish(files, ([read_stats] if read_stats is not None else []) + stats, traces)
    shutil.rmtree(stage, ignore_errors=True)
    return len(metas)


def _loads_state(op: Operator) -> bool:
    """Whether ``op`` sets up state (a model, word lists) that an actor should keep between batches."""
    return type(op).setup is not Operator.setup


def _curate_cause(e: BaseException) -> BaseException:
    """The CurateError (bad input, unwritable path) a Ray task raised, as the local executor raises it."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, CurateError):
            return seen
        seen = seen.__cause__ or getattr(seen, "cause", None)
    return e


class RayExecutor(Executor):
    def __init__(self, spec: RunSpec):
        super().__init__(spec)
        self.address = spec.executor.address
        self.mode = spec.executor.mode

    def _ray(self) -> Any:
        try:
            import ray
        except ImportError:
            raise MissingDependencyError("executor: ray", "ray", "ray") from None
        if not ray.is_initialized():
            local = self.address is None
            ray.init(address=self.address, num_cpus=self.workers if local else None, include_dashboard=False,
                     log_to_driver=False, ignore_reinit_error=True)
        return ray

    def actor_gpus(self, ray: Any) -> float:
        """GPUs per shard actor: a share of the cluster's GPUs when an operator needs torch, else 0."""
        if not any("torch" in op.requires for op in self.spec.steps):
            return 0.0
        gpus = float(ray.cluster_resources().get("GPU", 0.0))
        return min(1.0, gpus / self.workers) if gpus else 0.0

    def _run_tasks(self, tasks: list[ShardTask], progress: Callable[[int], None]) -> None:
        if not tasks:
            return
        if self.mode == "data":
            self._run_data(tasks, progress)
        else:
            self._run_actors(tasks, progress)

    def _run_actors(self, tasks: list[ShardTask], progress: Callable[[int], None]) -> None:
        ray = self._ray()
        from ray.util import ActorPool

        actor = ray.remote(num_cpus=1, num_gpus=self.actor_gpus(ray))(_ShardActor)
        actors = [actor.remote() for _ in range(min(self.workers, len(tasks)))]
        try:
            for n in ActorPool(actors).map_unordered(lambda a, t: a.run.remote(t), tasks):
                progress(n)
        finally:
            for a in actors:  # the actors' loaded models go with them; the next segment starts fresh
                ray.kill(a)

    def data_pipeline(self, tasks: list[ShardTask]) -> Any:
        """The segment as a Ray Data dataset: read (one task per shard), then one ``map_batches`` of all its
        steps - an actor pool when an operator loads state, Ray tasks otherwise. Rows: (shard, seq, rows,
        meta), one per curate batch."""
        ray = self._ray()
        import ray.data as rd

        stages = {t.shard.index: str(_staging(t)) for t in tasks}
        first = tasks[0]
        common: dict[str, Any] = {"batch_size": 1, "batch_format": "pyarrow", "zero_copy_batch": True}
        if any(_loads_state(op) for op in first.ops):
            # the actors hold one CPU per worker for the whole segment; a read task asking for a CPU too
            # would never be scheduled beside them (Ray Data waits for its resource budget), so reads run
            # without a reservation, as the local executor's worker reads beside its own operators
            ds = rd.read_datasource(_shard_source(tasks), override_num_blocks=len(tasks), num_cpus=0)
            gpus = self.actor_gpus(ray)
            return ds.map_batches(_SegmentMapper, fn_constructor_kwargs={"task": first, "stages": stages},
                                  compute=rd.ActorPoolStrategy(size=self.workers),
                                  num_cpus=1, **({"num_gpus": gpus} if gpus else {}), **common)
        # no state to keep: the read and the steps of a shard fuse into one Ray task per shard
        ds = rd.read_datasource(_shard_source(tasks), override_num_blocks=len(tasks))
        return ds.map_batches(_map_batches, fn_kwargs={"task": first, "stages": stages}, **common)

    def _run_data(self, tasks: list[ShardTask], progress: Callable[[int], None]) -> None:
        from ray.data import DataContext

        ctx = DataContext.get_current()
        quiet = {"enable_progress_bars": False, "print_on_execution_start": False}  # curate's bar counts docs
        saved = {k: getattr(ctx, k) for k in quiet}
        for k, v in quiet.items():
            setattr(ctx, k, v)
        try:
            self._run_data_quiet(tasks, progress)
        finally:
            for k, v in saved.items():
                setattr(ctx, k, v)
        with contextlib.suppress(OSError):  # every shard's staging folder went with its marker
            _staging(tasks[0]).parent.rmdir()

    def _run_data_quiet(self, tasks: list[ShardTask], progress: Callable[[int], None]) -> None:
        ray = self._ray()
        ds = self.data_pipeline(tasks)
        # no CPU reserved: a shard's writer starts while the actors of the segment still hold theirs
        finish = ray.remote(num_cpus=0)(_finish_shard)
        by_index = {t.shard.index: t for t in tasks}
        metas: dict[int, dict[int, str]] = {i: {} for i in by_index}
        pending: dict[int, Any] = {}

        def complete(i: int) -> bool:
            try:
                report = json.loads((_staging(by_index[i]) / _REPORT).read_text())
            except (OSError, ValueError):
                return False
            return len(metas[i]) == report["batches"]

        def submit(i: int) -> None:
            pending[i] = finish.remote(by_index[i], [metas[i][k] for k in sorted(metas[i])])

        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                cols = [batch.column(c).to_pylist() for c in ("shard", "seq", "rows", "meta")]
                touched = set()
                for shard, seq, rows, meta in zip(*cols):
                    metas[shard][seq] = meta
                    touched.add(shard)
                    progress(rows)
                for i in touched:  # a shard whose batches are all in is written now: it resumes on its own
                    if i not in pending and complete(i):
                        submit(i)
            for i in by_index:
                if i not in pending:
                    submit(i)
            ray.get(list(pending.values()))
        except Exception as e:
            # the shards whose writer task started are written out before the failure is raised, so a failed
            # run leaves no task writing output, rejects or markers after it returned and let go of its locks
            # (a rerun would resume a shard that a late writer was still finishing, or miss it)
            if pending:
                ray.wait(list(pending.values()), num_returns=len(pending))
            cause = _curate_cause(e)
            if cause is not e:
                raise cause from None
            raise

    def _fit_task_runner(self) -> Callable[..., Iterator[Any]]:
        def run(fn: Callable[..., Any], tasks: list[tuple], *, workers: int) -> Iterator[Any]:
            if not tasks:
                return
            ray = self._ray()
            remote = ray.remote(num_cpus=1)(_remote_call)
            pending = [remote.remote(fn, t) for t in tasks]
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                yield ray.get(done[0])

        return run

    def _fit_global_ops(self) -> Any:
        from curate.executors.ray_global import RayGlobalOps

        return RayGlobalOps(self._ray)
