"""The run loop shared by executors: plan segments, run shard tasks, fit global stages, resume, report.

Executors differ only in how they run a list of :class:`ShardTask` (``_run_tasks``).
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from curate.core.operator import FitContext, GlobalStage, RunContext
from curate.core.plan import Segment, plan_segments
from curate.core.progress import Progress
from curate.core.runner import ShardTask, clear_setup_cache, read_marker, write_json_atomic
from curate.core.stats import StepStats, merge_stats

if TYPE_CHECKING:
    from curate.core.pipeline import Pipeline

log = logging.getLogger("curate")


@dataclass
class RunResult:
    work_dir: Path
    output: Path
    steps: list[StepStats] = field(default_factory=list)
    seconds: float = 0.0
    resumed_shards: int = 0

    @property
    def docs_in(self) -> int:
        return self.steps[0].docs_in if self.steps else 0

    @property
    def docs_out(self) -> int:
        return self.steps[-1].docs_out if self.steps else 0

    def table(self):
        from rich.table import Table

        t = Table(title=f"curate run - {self.seconds:.1f}s, {self.docs_in:,} docs in, {self.docs_out:,} out")
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


def detect_device(steps) -> str:
    """'cuda' when an operator needs torch and CUDA is present; torch is imported only then."""
    if not any("torch" in op.requires for op in steps):
        return "cpu"
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


class Executor:
    def __init__(self, pipeline: Pipeline, workers: int = 1):
        self.p = pipeline
        self.workers = workers
        self.work = Path(pipeline.work_dir)

    # -- executor-specific ---------------------------------------------------------------------
    def _run_tasks(self, tasks: list[ShardTask], progress: Callable[[int], None]) -> None:
        raise NotImplementedError

    # -- shared --------------------------------------------------------------------------------
    def _manifest(self, started: str) -> dict:
        import importlib.metadata as md

        import curate

        # curate's own version from the package: the distribution is curate-llm, and md.version("curate")
        # would report the unrelated PyPI project of that name where it is installed
        versions: dict[str, str | None] = {"curate": curate.__version__}
        for pkg in ("polars", "pyarrow", "numpy", "pydantic"):
            try:
                versions[pkg] = md.version(pkg)
            except md.PackageNotFoundError:
                versions[pkg] = None
        return {"started": started, "host": platform.node(), "python": platform.python_version(),
                "versions": versions, "seed": self.p.seed, "workers": self.workers}

    def run(self, progress: bool = True) -> RunResult:
        p = self.p
        assert p.input is not None and p.output is not None
        t0 = time.perf_counter()
        started = datetime.now(timezone.utc).isoformat()
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / "pipeline.yaml").write_text(p.to_yaml())
        shards = p.input.shards()
        rejects = p.rejects_spec()
        device = detect_device(p.steps)
        segments = plan_segments(p.input, p.steps, p.output, p.seed)
        per_shard_stats: list[list[StepStats]] = []
        stage_fit_seconds: dict[str, float] = {}
        fit_stats: dict[str, StepStats] = {}
        resumed = 0
        bar = Progress(enabled=progress, input_files=p.input.files(), shards=len(shards))
        try:
            with bar:
                for seg in segments:
                    if seg.stage is not None:
                        fs = self._fit(seg, shards, device, bar)
                        fit_stats[fs.step] = fs
                        stage_fit_seconds[fs.step] = fs.seconds
                    tasks, done_stats = self._tasks(seg, shards, rejects, device)
                    resumed += len(shards) - len(tasks)
                    bar.start(f"segment {seg.index}: " + (", ".join(o.step_name for o in seg.ops) or "read")
                              + f" ({len(tasks)} of {len(shards)} shards to run)", total=None)
                    self._run_tasks(tasks, bar.advance)
                    for t in tasks:
                        st = read_marker(t.marker, t.fingerprint)
                        assert st is not None, f"shard {t.shard.index} finished without a marker"
                        done_stats.append(st)
                    per_shard_stats.extend(done_stats)
        finally:
            clear_setup_cache()  # in-process runs must not keep models and stage state alive after the run
        steps = merge_stats(per_shard_stats)
        for s in steps:
            if s.step in fit_stats:  # the fit's seconds and numbers (ctx.stat / ctx.timer) join the stage's
                s.add(fit_stats[s.step])
        result = RunResult(self.work, Path(p.output.path), steps, time.perf_counter() - t0, resumed)
        write_json_atomic(self.work / "stats.json", {
            "seconds": result.seconds, "docs_in": result.docs_in, "docs_out": result.docs_out,
            "resumed_shards": resumed, "steps": [s.to_dict() for s in steps],
            "fit_seconds": stage_fit_seconds})
        manifest = self._manifest(started)
        manifest["finished"] = datetime.now(timezone.utc).isoformat()
        write_json_atomic(self.work / "manifest.json", manifest)
        return result

    def _tasks(self, seg: Segment, shards, rejects, device) -> tuple[list[ShardTask], list[list[StepStats]]]:
        p = self.p
        seg_dir = self.work / "segments" / f"{seg.index:03d}"
        prev_dir = self.work / "segments" / f"{seg.index - 1:03d}"
        ctxs = []
        for op, step_i in zip(seg.ops, seg.step_indices):
            state = self._stage_dir(seg) / "state" if op is seg.stage else self.work / "steps" / f"{step_i:03d}"
            ctxs.append(RunContext(self.work, state, p.seed, self.workers, device, step_i))
        tasks, done = [], []
        for sh in shards:
            marker = seg_dir / "_done" / f"{sh.name}.json"
            st = read_marker(marker, seg.fingerprint)
            if st is not None:
                done.append(st)
                continue
            tasks.append(ShardTask(
                segment=seg.index, shard=sh, ops=seg.ops, ctx=ctxs,
                source=p.input if seg.index == 0 else prev_dir / sh.name,
                spill_dir=None if seg.last else seg_dir, output=p.output if seg.last else None,
                rejects=rejects, marker=marker, fingerprint=seg.fingerprint, trace_dir=self.work / "trace"))
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
            if done.get("fingerprint") == seg.stage_fingerprint:  # resumed: report the original fit's figures
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
        ctx = FitContext(self.work, sdir / "state", self.p.seed, self.workers, device, seg.step_indices[0],
                         shards=[prev / sh.name for sh in shards], scratch_dir=scratch)
        bar.start(f"fitting {stage.step_name}", total=None)
        t0 = time.perf_counter()
        stage.fit(ctx)
        secs = time.perf_counter() - t0
        counters, timers = ctx.numbers.drain()
        write_json_atomic(marker, {"fingerprint": seg.stage_fingerprint, "seconds": secs, "counters": counters,
                                   "timers": timers})
        return StepStats(stage.step_name, seconds=secs, counters=counters, timers=timers)

