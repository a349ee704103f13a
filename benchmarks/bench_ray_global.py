"""Cost of the global steps of exact dedup and MinHash dedup (no verification) run where the executor puts
them: on the driver (local executor) or as Ray Data shuffles (Ray executor, :mod:`curate.executors.ray_global`).

One process per run (``--executor local|ray``; ``--rounds`` makes Ray's connected components run
large-star / small-star rounds instead of handing a small graph to one task), so run the modes interleaved
(A B A B) from a shell loop. Prints one JSON line: wall seconds of the run, CPU seconds of this process and
of its reaped children (Ray's workers are children of the raylet, reaped at ``ray.shutdown``), the phase
timers of both stages from ``stats.json`` (``hash``/``group``, ``signatures``/``buckets``/``cluster``) and the
1-minute load average before and after.

    for i in 1 2; do for m in local ray; do python benchmarks/bench_ray_global.py --docs 20000 --executor $m; done; done

``--verify``: MinHash at 0.8 with verification instead (the clusters then come from the verified union,
run per group of connected components of the bucket graph: on Ray as tasks).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _corpus import real_documents  # noqa: E402

from curate import Pipeline, read, write  # noqa: E402
from curate.filters.exact_dedup import ExactDedup  # noqa: E402
from curate.filters.minhash import MinHashDedup  # noqa: E402


def _corpus(root: Path, n: int, per_file: int) -> Path:
    d = root / f"corpus-{n}-{per_file}"
    if not d.exists():
        tmp = root / f".tmp-corpus-{os.getpid()}"
        tmp.mkdir(parents=True)
        docs = real_documents(n)
        for k in range(0, n, per_file):
            (tmp / f"part{k // per_file:04d}.jsonl").write_text(
                "".join(json.dumps(r) + "\n" for r in docs[k:k + per_file]))
        tmp.rename(d)
    return d


def _cpu() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=20000)
    ap.add_argument("--per-file", type=int, default=2500)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--executor", choices=("local", "ray"), default="local")
    ap.add_argument("--rounds", action="store_true", help="Ray: components by rounds, never one task")
    ap.add_argument("--verify", action="store_true", help="MinHash at 0.8 with verification (the verified "
                    "union runs per group of components: on Ray in tasks)")
    ap.add_argument("--work", default=str(Path(__file__).resolve().parent / "_work" / "ray_global"))
    a = ap.parse_args()
    work = Path(a.work)
    corpus = _corpus(work, a.docs, a.per_file)
    root = work / f"run-{a.executor}-{os.getpid()}"
    load0 = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), _cpu()
    if a.executor == "ray":
        import ray

        ray.init(num_cpus=a.workers, object_store_memory=512 << 20, include_dashboard=False,
                 log_to_driver=False)
        if a.rounds:
            import curate.executors.ray_global as rg

            rg.FINISH_EDGES = -1  # read at RayGlobalOps construction
    t_init = time.perf_counter() - t0
    try:
        p = Pipeline(read(str(corpus / "*.jsonl"), batch_size=1000), ExactDedup(),
                     (MinHashDedup(threshold=0.8, verify=True) if a.verify
                                                   else MinHashDedup(threshold=0.7, verify=False)), write(str(root / "out"), format="parquet"))
        t1 = time.perf_counter()
        res = p.run(work_dir=str(root / "work"), workers=a.workers, progress=False, executor=a.executor)
        secs = time.perf_counter() - t1
    finally:
        if a.executor == "ray":
            import ray

            ray.shutdown()
    cpu = _cpu() - c0
    steps = {s["step"]: s for s in json.loads((root / "work" / "stats.json").read_text())["steps"]}
    mc = steps["minhash_dedup"]["counters"]
    out = {"executor": a.executor + ("-rounds" if a.rounds else ""), "verify": a.verify, "docs": res.docs_in,
           "run_s": round(secs, 2), "ray_init_s": round(t_init, 2), "cpu_s": round(cpu, 2),
           "exact": {k: round(v, 2) for k, v in steps["exact_dedup"]["timers"].items()},
           "minhash": {k: round(v, 2) for k, v in steps["minhash_dedup"]["timers"].items()},
           "clusters": steps["minhash_dedup"]["counters"].get("clusters"),
           "removed": steps["minhash_dedup"]["counters"].get("removed"),
           "verified_pairs": mc.get("verified_pairs"), "false_positive_pairs": mc.get("false_positive_pairs"),
           "load": [round(load0, 1), round(os.getloadavg()[0], 1)]}
    print(json.dumps(out))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
