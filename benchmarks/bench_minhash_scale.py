"""MinHash dedup at scale on one machine (issue 14, item 5): time, CPU seconds and memory of
``read(parquet) -> minhash_dedup -> write(parquet)`` on the local executor and on a local Ray instance.

    python benchmarks/make_scale_corpus.py --docs 10000000 --out /work/bench-data/scale10m
    nice -n 10 python benchmarks/bench_minhash_scale.py --corpus /work/bench-data/scale10m \
        --work /work/bench-data/work --executors local,ray

Each executor runs in its own child process measured by benchmarks/_mem.py: the largest per-process VmHWM
of the process tree (driver, spawn workers or Ray's raylet/GCS/workers) and the peak of the summed PSS,
sampled every ``--interval`` s, plus user+sys CPU seconds of the whole tree. The work dir is deleted between
runs (the signature shards of 10M docs are ~7 GB). The child prints the stage timers and counters of
minhash_dedup and, from the corpus's ``src`` column (see make_scale_corpus.py), how many removed documents
are derived from another one (a removed base document is a false positive unless its twin shares it).
``--mem-limit-gb`` stops the run (SIGTERM to the tree) when the machine's MemAvailable falls below it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _mem import Sampler, load, self_hwm_mb, tree  # noqa: E402
from _workdir import clear_work  # noqa: E402


def _child(a: argparse.Namespace) -> None:

    from curate import Pipeline, read, write
    from curate.filters.minhash import MinHashDedup

    if a.executor == "ray":
        import ray

        ray.init(num_cpus=a.workers, include_dashboard=False, log_to_driver=False,
                 object_store_memory=a.object_store_mb << 20)
    out = Path(a.work) / "out"
    p = Pipeline(read(str(Path(a.corpus) / "*.parquet"), batch_size=a.batch_size),
                 MinHashDedup(bucket_memory_mb=a.bucket_memory_mb), write(str(out), format="parquet"))
    t0 = time.perf_counter()
    res = p.run(work_dir=str(Path(a.work) / "work"), workers=a.workers, progress=False, executor=a.executor)
    secs = time.perf_counter() - t0
    stats = json.loads(next((Path(a.work) / "work").rglob("stats.json")).read_text())
    print(json.dumps({"executor": a.executor, "docs_in": res.docs_in, "docs_out": res.docs_out,
                      "seconds": round(secs, 1), "driver_hwm_mb": round(self_hwm_mb()),
                      "stats": stats}, default=str), flush=True)


def _watch(pid: int, limit_gb: float, stop: threading.Event, tripped: list) -> None:
    while not stop.wait(2.0):
        with open("/proc/meminfo") as f:
            avail = next(int(x.split()[1]) for x in f if x.startswith("MemAvailable:")) / 2**20
        if avail < limit_gb:
            tripped.append(round(avail, 1))
            for q in reversed(tree(pid)):
                try:
                    os.kill(q, signal.SIGTERM)
                except OSError:
                    pass
            return


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--work", default=str(HERE / "_work" / "minhash_scale"))
    ap.add_argument("--executors", default="local,ray")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=10_000)
    ap.add_argument("--bucket-memory-mb", type=int, default=1024)
    ap.add_argument("--object-store-mb", type=int, default=2048)
    ap.add_argument("--interval", type=float, default=0.5)
    ap.add_argument("--mem-limit-gb", type=float, default=4.0)
    ap.add_argument("--keep-work", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--executor", default="local", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        _child(a)
        return
    for ex in a.executors.split(","):
        clear_work(Path(a.work))
        cmd = [sys.executable, __file__, "--child", "--executor", ex, "--corpus", a.corpus, "--work", a.work,
               "--workers", str(a.workers), "--batch-size", str(a.batch_size),
               "--bucket-memory-mb", str(a.bucket_memory_mb), "--object-store-mb", str(a.object_store_mb)]
        l0 = load()
        t = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        stop, tripped = threading.Event(), []
        w = threading.Thread(target=_watch, args=(p.pid, a.mem_limit_gb, stop, tripped), daemon=True)
        w.start()
        with Sampler(p.pid, a.interval) as s:
            stdout = p.stdout.read() if p.stdout else ""
            _, status, ru = os.wait4(p.pid, 0)
        stop.set()
        wall = time.perf_counter() - t
        du = subprocess.run(["du", "-sh", a.work], capture_output=True, text=True).stdout.split("\t")[0]
        res = s.result()
        print(f"== {ex}: rc {os.waitstatus_to_exitcode(status)}, wall {wall:.0f} s, CPU {ru.ru_utime + ru.ru_stime:.0f} s "
              f"(tree, waited-for), max VmHWM {res['max_hwm_mb']:,.0f} MB, peak summed PSS {res['peak_pss_mb']:,.0f} MB "
              f"over {res['processes']} processes, work dir {du}, load {l0} -> {load()}"
              + (f", STOPPED: MemAvailable {tripped[0]} GB" if tripped else ""), flush=True)
        top = sorted(s.hwm.items(), key=lambda kv: -kv[1])[:4]
        print("   largest VmHWM (pid: MB): " + ", ".join(f"{q}: {v / 1024:,.0f}" for q, v in top))
        print("   " + stdout.strip().replace("\n", "\n   "), flush=True)
        if not a.keep_work:
            clear_work(Path(a.work))


if __name__ == "__main__":
    main()
