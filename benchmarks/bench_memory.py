"""Peak memory of a full rule pipeline over a ~1 GB jsonl file (issue 3: "well under 2 GB of RAM").

    python benchmarks/bench_memory.py [--gb 1.0] [--workers 2]

Builds a jsonl file of real documents (repeated from ../shared/data with fresh ids) and runs
`curate run` on it (Gopher repetition + quality, C4, FineWeb, exact dedup) in a subprocess; memory is
benchmarks/_mem.py's: the peak summed PSS of the process tree (driver + workers, shared pages split, not
counted once per process as summed RSS would) and the largest per-process VmHWM, sampled every 0.1 s.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _corpus import real_documents  # noqa: E402
from _mem import load, measure  # noqa: E402


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
    m = measure([sys.executable, "-m", "curate.cli", "run", str(cfg), "--no-progress"], capture=True)
    secs = m["wall"]
    if m["rc"]:
        sys.exit(m["stdout"][-3000:])
    stats = json.loads((work / "run" / "stats.json").read_text())
    print(f"input: {src.stat().st_size / 1e9:.2f} GB, {i:,} documents; workers {a.workers}, "
          f"batch_size {a.batch_size}")
    print(f"time {secs:.0f} s ({i / secs:,.0f} docs/s), docs out {stats['docs_out']:,}, "
          f"peak summed PSS of the process tree {m['peak_pss_mb']:,.0f} MB, largest process VmHWM "
          f"{m['max_hwm_mb']:,.0f} MB, CPU {m['cpu_s']:.0f} s; load {load()}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
