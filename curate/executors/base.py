"""The run loop shared by executors: plan segments, run shard tasks, fit global stages, resume, report.

Executors differ only in how they run a list of :class:`ShardTask` (``_run_tasks``).
"""

from __future__ import annotations

import io
import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from curate._version import __version__
from curate.core.errors import ConfigError
from curate.core.lock import LOCK_NAME, RunLock
from curate.core.operator import FitContext, GlobalStage, RunContext
from curate.core.ownership import WORK_FILES, WORK_TREES, OwnedRoot, check_run_paths, owned
from curate.core.plan import Segment, plan_segments
from curate.core.pool import shared_pool
from curate.core.preflight import reserved_columns
from curate.core.progress import Progress
from curate.core.runner import Marker, ShardTask, clear_setup_cache, read_marker, write_json_atomic, writing
from curate.core.stats import StepStats, merge_stats
from curate.models.device import resolve_device

if TYPE_CHECKING:
    from curate.core.global_ops import GlobalOps
    from curate.core.run import RunSpec

log = logging.getLogger("curate")


@dataclass
class RunResult:
    work_dir: Path
    output: Path
    steps: list[StepStats] = field(default_factory=list)
    seconds: float = 0.0
    resumed_shards: int = 0
    #: per remote output URI, the objects uploaded and deleted by the final sync (curate.io.storage)
    remote: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    @property
    def docs_in(self) -> int:
        return self.steps[0].docs_in if self.steps else 0

    @property
    def docs_out(self) -> int:
        return self.steps[-1].docs_out if self.steps else 0

    def table(self) -> ResultTable:
        """The per-step table: a rich renderable (``Console().print``) that also prints as plain text."""
        t = ResultTable(title=f"curate run - {self.seconds:.1f}s, {self.docs_in:,} docs in, {self.docs_out:,} out")
        t.add_column("step", no_wrap=True)
        for col in ("docs in", "docs out", "kept %", "MB in", "MB out", "seconds"):
            t.add_column(col, justify="right", no_wrap=True)
        t.add_column("top drop reasons", overflow="fold")
        t.add_column("counters, timers", overflow="fold")
        for s in self.steps:
            reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(s.dropped.items(), key=lambda kv: -kv[1])[:3])
            kept = 100.0 * s.docs_out / s.docs_in if s.docs_in else 100.0
            t.add_row(s.step, f"{s.docs_in:,}", f"{s.docs_out:,}", f"{kept:.1f}", f"{s.bytes_in / 1e6:.1f}",
                      f"{s.bytes_out / 1e6:.1f}", f"{s.seconds:.2f}", reasons, s.numbers_text())
        return t

    def __str__(self) -> str:
        return f"{self.table()}\noutput: {self.output}  stats: {self.work_dir / 'stats.json'}"


class ResultTable(Table):
    """A rich table whose ``str()`` is the rendered text, so ``print(result.table())`` shows the table and a
    rich console still renders it natively."""

    def __str__(self) -> str:
        buf = io.StringIO()
        wide = Console(width=100_000, color_system=None)  # as wide as the table needs: never cut mid-number
        Console(file=buf, width=max(80, wide.measure(self).maximum), color_system=None, force_terminal=False,
                soft_wrap=False).print(self)
        return buf.getvalue().rstrip("\n")

    __repr__ = __str__


def detect_device(steps) -> str:
    """'cuda' when an operator needs torch and CUDA is present; torch is imported only then."""
    if not any("torch" in op.requires for op in steps):
        return "cpu"
    return resolve_device("auto")


class Executor:
    """Runs a :class:`RunSpec`: the loop below is shared; subclasses say how shard tasks run."""

    def __init__(self, spec: RunSpec):
        self.spec = spec
        self.workers = spec.workers or 1
        self.work = Path(spec.work_dir)

    # -- executor-specific ---------------------------------------------------------------------
    def _run_tasks(self, tasks: list[ShardTask], progress: Callable[[int], None]) -> None:
        raise NotImplementedError

    def _fit_task_runner(self) -> Callable[..., Any] | None:
        """How a global stage's ``map_shards`` runs per-shard work; None: core's process pool."""
        return None

    # -- shared --------------------------------------------------------------------------------
    def _fit_global_ops(self) -> GlobalOps | None:
        """How a global stage's grouping, components and top-k run; None: in this process."""
        return None

    def _manifest(self, started: str) -> dict:
        import importlib.metadata as md

        # curate's own version from the package: the distribution is curate-llm, and md.version("curate")
        # would report the unrelated PyPI project of that name where it is installed
        versions: dict[str, str | None] = {"curate": __version__}
        for pkg in ("polars", "pyarrow", "numpy", "pydantic"):
            try:
                versions[pkg] = md.version(pkg)
            except md.PackageNotFoundError:
                versions[pkg] = None
        return {"started": started, "host": platform.node(), "python": platform.python_version(),
                "versions": versions, "seed": self.spec.seed, "workers": self.workers}

    def run(self, progress: bool = True) -> RunResult:
        p = self.spec
        assert p.input is not None and p.output is not None
        t0 = time.perf_counter()
        started = datetime.now(timezone.utc).isoformat()
        shards = p.input.shards()
        rejects = p.rejects_spec
        # before any work: where the run writes must not overlap the input or another run's folders
        problems = check_run_paths(p.input.path, p.output.path, rejects.path, self.work,
                                   overwrite=p.output.overwrite)
        if problems:
            raise ConfigError(problems)
        device = detect_device(p.steps)
        segments = plan_segments(p.input, list(p.steps), p.output, p.seed, rejects)
        work = OwnedRoot(self.work)
        roots = {"work": work, "output": OwnedRoot(p.output.path), "rejects": OwnedRoot(rejects.path)}
        self._claim(roots, segments, shards, commit=False)  # name clashes are refused before anything is made
        lock = RunLock(work.root)
        # a second run on this work dir fails here, naming this one; a foreign .curate-lock is left alone
        lock.acquire(is_foreign=lambda path: not owned(work.root, path))
        try:
            for what, root in (("work dir", work), ("output folder", roots["output"]),
                               ("rejects folder", roots["rejects"])):
                root.open(what)
            self._claim(roots, segments, shards)
            for root in roots.values():
                root.clean_tmp()  # leftovers of killed runs, only under curate's own names
            # one set of worker processes for every segment and fit of the run
            with shared_pool(p.executor.start_method, workers=self.workers):
                result, vouched = self._run_segments(p, segments, shards, rejects, device, progress, t0)
            for name in ("output", "rejects"):
                roots[name].sweep(vouched[name])
            work.sweep(set())
            manifest = self._manifest(started)
            manifest["finished"] = datetime.now(timezone.utc).isoformat()
            write_json_atomic(self.work / "manifest.json", manifest)
            return result
        finally:
            for root in roots.values():
                root.close()
            lock.release()

    def _claim(self, roots: dict[str, OwnedRoot], segments: list[Segment], shards, *, commit: bool = True) -> None:
        """Record, before any work, every name this run may write (``commit=False``: only check); a clash
        with a foreign file is a :class:`ConfigError` naming it, raised before anything is written."""
        work = roots["work"]
        work.adopt_file(LOCK_NAME)  # checked free before the lock was taken
        for f in WORK_FILES:
            work.claim_file(f)
        for t in WORK_TREES:
            work.claim_tree(t)
        for seg in segments:
            steps = (["read"] if seg.index == 0 else []) + [op.step_name for op in seg.ops]
            for sh in shards:
                stem = f"part-{sh.index:05d}"
                for step in steps:
                    roots["rejects"].claim_parts(step, stem)
                if seg.last:
                    roots["output"].claim_parts("", stem)
        problems = [c for r in roots.values() for c in r.clashes]
        if problems:
            raise ConfigError(problems)
        if commit:
            for r in roots.values():
                r.commit()

    def marker_roots(self) -> dict[str, Path]:
        """The folders the paths in completion markers are relative to."""
        assert self.spec.output is not None
        return {"work": OwnedRoot(self.work).root, "output": OwnedRoot(self.spec.output.path).root,
                "rejects": OwnedRoot(self.spec.rejects_spec.path).root}

    def _run_segments(self, p, segments, shards, rejects, device, progress, t0) -> tuple[RunResult, dict]:
        with writing(self.work / "pipeline.yaml"):
            (self.work / "pipeline.yaml").write_text(p.to_yaml())
        roots = self.marker_roots()
        per_shard_stats: list[list[StepStats]] = []
        stage_fit_seconds: dict[str, float] = {}
        fit_stats: dict[str, StepStats] = {}
        vouched: dict[str, set[str]] = {"output": set(), "rejects": set()}
        resumed = 0
        bar = Progress(enabled=progress, input_files=p.input.files(), shards=len(shards))
        try:
            with bar:
                for seg in segments:
                    if seg.stage is not None:
                        fs = self._fit(seg, shards, device, bar)
                        fit_stats[fs.step] = fs
                        stage_fit_seconds[fs.step] = fs.seconds
                    tasks, done = self._tasks(seg, shards, rejects, device)
                    resumed += len(shards) - len(tasks)
                    bar.start(f"segment {seg.index}: " + (", ".join(o.step_name for o in seg.ops) or "read")
                              + f" ({len(tasks)} of {len(shards)} shards to run)", total=None)
                    self._run_tasks(tasks, bar.advance)
                    for t in tasks:
                        m = read_marker(t.marker, t.fingerprint, roots)
                        assert m is not None, f"shard {t.shard.index} finished without a marker"
                        done.append(m)
                    for m in done:
                        per_shard_stats.append(m.stats)
                        for name in vouched:
                            vouched[name].update(m.files.get(name, {}))
        finally:
            clear_setup_cache()  # in-process runs must not keep models and stage state alive after the run
        duplicate_ids = self._finish_outputs(segments[-1], shards, rejects)
        steps = merge_stats(per_shard_stats)
        for s in steps:
            if s.step in fit_stats:  # the fit's seconds and numbers (ctx.stat / ctx.timer) join the stage's
                s.add(fit_stats[s.step])
        result = RunResult(self.work, Path(p.output.path), steps, time.perf_counter() - t0, resumed)
        write_json_atomic(self.work / "stats.json", {
            "seconds": result.seconds, "docs_in": result.docs_in, "docs_out": result.docs_out,
            "resumed_shards": resumed, "duplicate_ids": duplicate_ids, "steps": [s.to_dict() for s in steps],
            "fit_seconds": stage_fit_seconds})
        return result, vouched

    def _finish_outputs(self, last: Segment, shards, rejects) -> int:
        """One schema across output (and rejects) parquet parts; count and warn about duplicate ids."""
        from curate.core.runner import id_hash_path
        from curate.io.writers import count_duplicate_ids, unify_output

        assert self.spec.output is not None
        rewritten = {os.path.realpath(p) for p in unify_output(self.spec.output, rejects)}
        done = self.work / "segments" / f"{last.index:03d}" / "_done"
        if rewritten:  # the markers vouch for file sizes: record the unified parts' new sizes
            roots = self.marker_roots()
            for sh in shards:
                marker = done / f"{sh.name}.json"
                try:
                    data = json.loads(marker.read_text())
                except (OSError, ValueError):
                    continue
                changed = False
                for root_name, entries in (data.get("files") or {}).items():
                    for rel in entries:
                        path = os.path.realpath(roots[root_name] / rel) if root_name in roots else ""
                        if path in rewritten:
                            entries[rel] = os.path.getsize(path)
                            changed = True
                if changed:
                    write_json_atomic(marker, data)
        dups = count_duplicate_ids(id_hash_path(done / f"{sh.name}.json") for sh in shards)
        if dups:
            log.warning("%s output documents share their id with an earlier one (ids from different sources "
                        "can collide, e.g. int ids read as strings); they are counted as duplicate_ids in "
                        "stats.json", f"{dups:,}")
        return dups

    def _tasks(self, seg: Segment, shards, rejects, device) -> tuple[list[ShardTask], list[Marker]]:
        p = self.spec
        roots = self.marker_roots()
        seg_dir = self.work / "segments" / f"{seg.index:03d}"
        prev_dir = self.work / "segments" / f"{seg.index - 1:03d}"
        ctxs = []
        for op, step_i in zip(seg.ops, seg.step_indices):
            state = self._stage_dir(seg) / "state" if op is seg.stage else self.work / "steps" / f"{step_i:03d}"
            ctxs.append(RunContext(self.work, state, p.seed, self.workers, device, step_i))
        tasks: list[ShardTask] = []
        done: list[Marker] = []
        reserved = reserved_columns(p.steps) if seg.index == 0 else None
        for sh in shards:
            marker = seg_dir / "_done" / f"{sh.name}.json"
            m = read_marker(marker, seg.fingerprint, roots)
            if m is not None:
                done.append(m)
                continue
            tasks.append(ShardTask(
                segment=seg.index, shard=sh, ops=seg.ops, ctx=ctxs,
                source=p.input if seg.index == 0 else prev_dir / sh.name,
                spill_dir=None if seg.last else seg_dir, output=p.output if seg.last else None,
                rejects=rejects, marker=marker, fingerprint=seg.fingerprint, trace_dir=self.work / "trace",
                work_dir=roots["work"], reserved=reserved))
        return tasks, done

    def _stage_dir(self, seg: Segment) -> Path:
        return self.work / "stages" / f"{seg.index:03d}"

    def _fit(self, seg: Segment, shards, device: str, bar: Progress) -> StepStats:
        """Fit the segment's global stage (or reuse a finished fit); its seconds and the numbers it recorded."""
        stage = seg.stage
        assert isinstance(stage, GlobalStage)
        sdir = self._stage_dir(seg)
        marker = sdir / "_done.json"
        try:
            done = json.loads(marker.read_text())
            # resumed (its state files all there, sizes as recorded): report the original fit's figures
            if done.get("fingerprint") == seg.stage_fingerprint and done.get("state") == _file_sizes(sdir / "state"):
                return StepStats(stage.step_name, seconds=float(done["seconds"]), counters=done.get("counters", {}),
                                 timers=done.get("timers", {}))
        except (OSError, ValueError, KeyError):
            pass
        shutil.rmtree(sdir / "state", ignore_errors=True)
        (sdir / "state").mkdir(parents=True, exist_ok=True)
        scratch = sdir / "scratch"
        scratch_fp = scratch / "_fingerprint"
        if not scratch_fp.exists() or scratch_fp.read_text() != seg.stage_fingerprint:
            shutil.rmtree(scratch, ignore_errors=True)  # per-shard fit work from another config is stale
            scratch.mkdir(parents=True)
            scratch_fp.write_text(seg.stage_fingerprint)
        prev = self.work / "segments" / f"{seg.index - 1:03d}"
        ctx = FitContext(self.work, sdir / "state", self.spec.seed, self.workers, device, seg.step_indices[0],
                         shards=[prev / sh.name for sh in shards], scratch_dir=scratch,
                         _task_runner=self._fit_task_runner(), _global_ops=self._fit_global_ops())
        bar.start(f"fitting {stage.step_name}", total=None)
        t0 = time.perf_counter()
        stage.fit(ctx)
        secs = time.perf_counter() - t0
        counters, timers = ctx.numbers.drain()
        write_json_atomic(marker, {"fingerprint": seg.stage_fingerprint, "seconds": secs, "counters": counters,
                                   "timers": timers, "state": _file_sizes(sdir / "state")})
        return StepStats(stage.step_name, seconds=secs, counters=counters, timers=timers)


def _file_sizes(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` with its size: what a stage's fit marker vouches for."""
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}

