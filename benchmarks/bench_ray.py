"""Ray executor overhead: docs/s of the same pipeline on the local executor, on a local Ray instance with
Ray Data (``executor: {type: ray, mode: data}``) and with shard actors (``mode: actors``); same machine,
same workers, same real corpus (:func:`benchmarks._corpus.real_documents`, files of ``--per-file`` docs,
one shard each).

Each run is a fresh child process, the variants interleaved (local, data, actors, local, ...) so a shared
box's load hits all alike. Reported per run: wall seconds of ``ray.init`` and of the run itself, and the CPU
seconds (user + sys) of the child's whole process tree - Ray's raylet, GCS and worker processes included:
this process is their subreaper (``PR_SET_CHILD_SUBREAPER``), reaps every one, and reads
``RUSAGE_CHILDREN``. A child that only starts and stops Ray gives the CPU cost of ``ray.init`` alone.
The overhead ratio is the Ray run's wall (ray.init excluded) over the local run's. The 1-minute load
average is printed before and after each run.

    python benchmarks/bench_ray.py --docs 10000 --workers 2 --repeat 2
    python benchmarks/bench_ray.py --steps rules   # C4 + Gopher rules only: one map/filter segment

Data-Juicer's Ray MinHash on the same corpus: benchmarks/bench_dj_ray_minhash.py.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _corpus import real_documents  # noqa: E402


def _corpus(root: Path, n: int, per_file: int) -> Path:
    d = root / f"corpus-{n}-{per_file}"
    if not d.exists():
        d.mkdir(parents=True)
        docs = real_documents(n)
        for k in range(0, n, per_file):
            (d / f"part{k // per_file:04d}.jsonl").write_text(
                "".join(json.dumps(r) + "\n" for r in docs[k:k + per_file]))
    return d


def _child(a: argparse.Namespace) -> None:
    """One measured run in this process: prints a JSON line (init and run wall seconds, docs)."""
    from curate import Pipeline, read, write
    from curate.core.config import ExecutorSpec
    from curate.filters.c4 import C4Quality
    from curate.filters.exact_dedup import ExactDedup
    from curate.filters.gopher import GopherQuality
    from curate.filters.minhash import MinHashDedup

    init = 0.0
    if a.one != "local":
        import ray

        t0 = time.perf_counter()
        ray.init(num_cpus=a.workers, include_dashboard=False, log_to_driver=False)
        init = time.perf_counter() - t0
    if a.one == "init":
        ray.shutdown()
        print(json.dumps({"init": init, "run": 0.0, "docs": 0}))
        return
    root = Path(a.work) / f"run-{a.one}"
    shutil.rmtree(root, ignore_errors=True)
    steps = [C4Quality(filter_no_terminal_punct=False), GopherQuality()] if a.steps == "rules" else \
        [C4Quality(filter_no_terminal_punct=False), ExactDedup(), MinHashDedup()]
    mode = "data" if a.one == "local" else a.one
    p = Pipeline(read(str(Path(a.corpus) / "*.jsonl"), batch_size=1000), *steps,
                 write(str(root / "out"), format="parquet"), executor=ExecutorSpec(mode=mode))
    t0 = time.perf_counter()
    res = p.run(work_dir=str(root / "work"), workers=a.workers, progress=False,
                executor="local" if a.one == "local" else "ray")
    run = time.perf_counter() - t0
    if a.one != "local":
        ray.shutdown()
    print(json.dumps({"init": init, "run": run, "docs": res.docs_in, "out": res.docs_out}))


def _reap_all() -> None:
    """Wait for every process left to this subreaper (Ray's raylet and workers exit after shutdown)."""
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.05)


def _measure(variant: str, a: argparse.Namespace, corpus: Path) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load0 = os.getloadavg()[0]
    out = subprocess.run([sys.executable, __file__, "--one", variant, "--corpus", str(corpus), "--work", a.work,
                          "--workers", str(a.workers), "--steps", a.steps],
                         check=True, capture_output=True, text=True).stdout
    _reap_all()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = json.loads(out.strip().splitlines()[-1])
    r["cpu"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    r["load"] = (load0, os.getloadavg()[0])
    return r


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=10000)
    ap.add_argument("--per-file", type=int, default=2500)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--steps", choices=["rules", "dedup"], default="dedup",
                    help="rules: C4 + Gopher (one segment); dedup: C4 + exact dedup + MinHash dedup")
    ap.add_argument("--work", default=str(Path(__file__).resolve().parent / "_work" / "ray"))
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--corpus", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        _child(a)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: Ray's daemons and workers are reaped here
    work = Path(a.work)
    corpus = _corpus(work, a.docs, a.per_file)
    print(f"{a.docs:,} docs in {len(list(corpus.glob('*.jsonl')))} files, steps {a.steps}, {a.workers} workers, "
          f"{os.cpu_count()} cores")
    runs: dict[str, list[dict]] = {}
    for _ in range(a.repeat):
        for v in ("local", "data", "actors", "init"):
            r = _measure(v, a, corpus)
            runs.setdefault(v, []).append(r)
            print(f"  {v:7s} init {r['init']:5.1f} s  run {r['run']:6.1f} s  cpu {r['cpu']:6.1f} s  "
                  f"load {r['load'][0]:.1f} -> {r['load'][1]:.1f}", flush=True)
    med = {v: {k: statistics.median(r[k] for r in rs) for k in ("init", "run", "cpu")} for v, rs in runs.items()}
    n = runs["local"][0]["docs"]
    for v in ("local", "data", "actors"):
        m = med[v]
        print(f"{v:7s} {n / m['run']:8,.0f} docs/s  run {m['run']:.1f} s wall, ray.init {m['init']:.1f} s, "
              f"{m['cpu']:.1f} CPU-s (process tree, init included)")
    print(f"ray.init alone: {med['init']['init']:.1f} s wall, {med['init']['cpu']:.1f} CPU-s")
    for v in ("data", "actors"):
        print(f"overhead ratio {v} (run wall / local run wall): {med[v]['run'] / med['local']['run']:.2f}; "
              f"CPU-s beyond ray.init / local CPU-s: {(med[v]['cpu'] - med['init']['cpu']) / med['local']['cpu']:.2f}")


if __name__ == "__main__":
    main()
