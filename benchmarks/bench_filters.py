"""Rule-filter pipeline throughput: curate vs DataTrove on the same real corpus, same rules.

    python benchmarks/bench_filters.py [--docs 20000] [--workers 2] [--datatrove-python PATH]

Pipeline on both sides: Gopher repetition -> Gopher quality -> C4 quality -> FineWeb quality -> exact dedup.
DataTrove runs its own 4-stage equivalent (filters + writer, exact-dedup signature, find dups, filter) in
its own environment (default benchmarks/_work/dtenv: datatrove 0.10.1, spaCy tokenizer). Prints docs/s,
docs/s per core, peak RSS (largest process) and the ratio, and the agreement of the kept sets.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _corpus import real_documents, write_shards  # noqa: E402

CURATE_SCRIPT = """
import json, resource, sys, time
from curate import Pipeline, read, write
from curate.filters.c4 import C4Quality, FineWebQuality
from curate.filters.exact_dedup import ExactDedup
from curate.filters.gopher import GopherQuality, GopherRepetition
inp, work, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
t0 = time.perf_counter()
res = Pipeline(read(inp + "/*.jsonl"), GopherRepetition(), GopherQuality(), C4Quality(), FineWebQuality(),
               ExactDedup(), write(work + "/out")).run(work_dir=work + "/run", workers=workers, progress=False)
secs = time.perf_counter() - t0
from curate import read_output
ids = read_output(work + "/out")["id"].to_list()
open(work + "/kept_ids.json", "w").write(json.dumps(ids))
rss = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
print(json.dumps({"seconds": secs, "kept": len(ids), "peak_rss_mb": rss / 1024}))
"""


def run(cmd: list[str]) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=20_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--datatrove-python", default=str(HERE / "_work/dtenv/bin/python"))
    a = ap.parse_args()
    work = HERE / "_work" / "bench_filters"
    shutil.rmtree(work, ignore_errors=True)
    docs = real_documents(a.docs)
    write_shards(docs, work / "input", a.shards)
    # warm numba's on-disk cache so neither side pays a one-time compile inside the timing
    run([sys.executable, "-c", CURATE_SCRIPT, str(work / "input"), str(work / "warm"), "1"])
    cur = run([sys.executable, "-c", CURATE_SCRIPT, str(work / "input"), str(work / "curate"), str(a.workers)])
    rows = {"curate": cur}
    if Path(a.datatrove_python).exists():
        rows["datatrove"] = run([a.datatrove_python, str(HERE / "_datatrove_filters.py"), str(work / "input"),
                                 str(work / "datatrove"), str(a.workers)])
    print(f"corpus: {a.docs:,} real documents ({sum(len(d['text']) for d in docs) / 1e6:.1f} MB), "
          f"{a.shards} shards, {a.workers} workers")
    print(f"{'system':<10} {'seconds':>8} {'docs/s':>9} {'docs/s/core':>12} {'kept':>7} {'peak RSS MB':>12}")
    for name, r in rows.items():
        dps = a.docs / r["seconds"]
        print(f"{name:<10} {r['seconds']:>8.1f} {dps:>9,.0f} {dps / a.workers:>12,.0f} {r['kept']:>7,} "
              f"{r['peak_rss_mb']:>12,.0f}")
    if "datatrove" in rows:
        ratio = rows["datatrove"]["seconds"] / rows["curate"]["seconds"]
        a_ids = set(json.loads((work / "curate/kept_ids.json").read_text()))
        b_ids = set(json.loads((work / "datatrove/kept_ids.json").read_text()))
        agree = 1 - len(a_ids ^ b_ids) / a.docs
        print(f"speed ratio curate/datatrove: {ratio:.1f}x docs/s; "
              f"RSS ratio {rows['curate']['peak_rss_mb'] / rows['datatrove']['peak_rss_mb']:.2f}; "
              f"keep/drop agreement {agree:.3%} of documents")
    _ = resource


if __name__ == "__main__":
    t = time.time()
    main()
    print(f"(bench wall time {time.time() - t:.0f}s)")
