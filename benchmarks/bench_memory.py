"""Peak memory of a full rule pipeline over a ~1 GB jsonl file (issue 3: "well under 2 GB of RAM").

    python benchmarks/bench_memory.py [--gb 1.0] [--workers 2]

Builds a jsonl file of real documents (repeated from ../shared/data with fresh ids) and runs
`curate run` on it (Gopher repetition + quality, C4, FineWeb, exact dedup) in a subprocess, sampling the
resident memory of the whole process tree (driver + workers, summed) from /proc every 0.1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _corpus import real_documents  # noqa: E402


def tree_rss_mb(pid: int) -> float:
    """Resident memory of pid and all its descendants, in MB."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
        stack.extend(children.get(p, []))
    return total / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=2_000)
    a = ap.parse_args()
    work = HERE / "_work" / "bench_memory"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    src = work / "big.jsonl"
    docs = real_documents(20_000)
    target, written, i = a.gb * 1e9, 0, 0
    with src.open("w") as f:
        while written < target:
            d = docs[i % len(docs)]
            line = json.dumps({"id": f"d{i}", "text": d["text"]}) + "\n"
            f.write(line)
            written += len(line)
            i += 1
    cfg = work / "p.yaml"
    cfg.write_text(f"""
input: {{path: "{src}", batch_size: {a.batch_size}}}
steps: [{{gopher_repetition: {{}}}}, {{gopher_quality: {{}}}}, {{c4_quality: {{}}}}, {{fineweb_quality: {{}}}},
        {{exact_dedup: {{}}}}]
output: {{path: "{work / 'out'}", format: parquet}}
work_dir: "{work / 'run'}"
executor: {{workers: {a.workers}}}
""")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "curate.cli", "run", str(cfg), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, tree_rss_mb(proc.pid))
        time.sleep(0.1)
    out = proc.stdout.read() if proc.stdout else ""
    secs = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(out[-3000:])
    stats = json.loads((work / "run" / "stats.json").read_text())
    print(f"input: {src.stat().st_size / 1e9:.2f} GB, {i:,} documents; workers {a.workers}, "
          f"batch_size {a.batch_size}")
    print(f"time {secs:.0f} s ({i / secs:,.0f} docs/s), docs out {stats['docs_out']:,}, "
          f"peak RSS of the process tree {peak:,.0f} MB")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
