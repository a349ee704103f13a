"""Ray executor overhead: docs/s of the same pipeline (C4 rules + exact dedup + MinHash dedup) on the local
executor and on a local Ray instance, same machine, same workers, same real corpus
(:func:`benchmarks._corpus.real_documents`, files of ``--per-file`` docs, one shard each).

The Ray figure is split into Ray start-up (``ray.init``, paid once per cluster session) and the run itself;
the overhead ratio is local docs/s over Ray docs/s for the run. The box may be shared: the 1-minute load
average before and after each run is printed beside the figures.

    python benchmarks/bench_ray.py --docs 20000 --workers 2

Data-Juicer's Ray MinHash on the same corpus: benchmarks/bench_dj_ray_minhash.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _corpus import real_documents  # noqa: E402

from curate import Pipeline, read, write  # noqa: E402
from curate.filters.c4 import C4Quality  # noqa: E402
from curate.filters.exact_dedup import ExactDedup  # noqa: E402
from curate.filters.minhash import MinHashDedup  # noqa: E402


def _corpus(root: Path, n: int, per_file: int) -> Path:
    d = root / f"corpus-{n}-{per_file}"
    if not d.exists():
        d.mkdir(parents=True)
        docs = real_documents(n)
        for k in range(0, n, per_file):
            (d / f"part{k // per_file:04d}.jsonl").write_text(
                "".join(json.dumps(r) + "\n" for r in docs[k:k + per_file]))
    return d


def _run(corpus: Path, root: Path, workers: int, executor: str) -> tuple[float, int]:
    shutil.rmtree(root, ignore_errors=True)
    p = Pipeline(read(str(corpus / "*.jsonl"), batch_size=1000), C4Quality(filter_no_terminal_punct=False),
                 ExactDedup(), MinHashDedup(), write(str(root / "out"), format="parquet"))
    t0 = time.perf_counter()
    res = p.run(work_dir=str(root / "work"), workers=workers, progress=False, executor=executor)
    return time.perf_counter() - t0, res.docs_in


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=20000)
    ap.add_argument("--per-file", type=int, default=2500)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", default=str(Path(__file__).resolve().parent / "_work" / "ray"))
    a = ap.parse_args()
    work = Path(a.work)
    corpus = _corpus(work, a.docs, a.per_file)
    print(f"{a.docs:,} docs in {len(list(corpus.glob('*.jsonl')))} files, {a.workers} workers, "
          f"{os.cpu_count()} cores")
    load0 = os.getloadavg()[0]
    secs_l, n = _run(corpus, work / "local", a.workers, "local")
    load1 = os.getloadavg()[0]
    import ray

    t0 = time.perf_counter()
    ray.init(num_cpus=a.workers, include_dashboard=False, log_to_driver=False)
    start = time.perf_counter() - t0
    try:
        secs_r, _ = _run(corpus, work / "ray", a.workers, "ray")
    finally:
        ray.shutdown()
    load2 = os.getloadavg()[0]
    print(f"local: {secs_l:.1f} s, {n / secs_l:,.0f} docs/s   (load {load0:.1f} -> {load1:.1f})")
    print(f"ray:   {secs_r:.1f} s, {n / secs_r:,.0f} docs/s, + {start:.1f} s ray.init   (load {load1:.1f} -> "
          f"{load2:.1f})")
    print(f"overhead ratio (local docs/s / ray docs/s): {secs_r / secs_l:.2f}")


if __name__ == "__main__":
    main()
