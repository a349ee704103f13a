"""SemDeDup's driver memory: the peak RSS (``VmHWM``) of the driver process of one ``semdedup`` run.

The same pipeline (read -> semdedup with model2vec embeddings in the fit, warm embedding cache -> write,
two workers so the per-shard work runs in worker processes) is run once per checkout given with
``--repo`` (e.g. ``/work/main`` before the sampled k-means and this tree after it), each in a fresh
interpreter importing that checkout's ``curate``; the driver prints its own ``VmHWM`` at the end
(benchmarks/_mem.py). A first untimed run warms the embedding cache, so the figures compare the
k-means / assignment / pruning part, not the encoding. Kept counts must agree across checkouts.

With the local executor the within-cluster pruning (``map_groups``) also runs in the driver, one
partition of clusters at a time (about 1 GB by its estimate), so the driver's peak is at least one
partition's vectors either way; the removed part is the whole matrix (and its normalised copy) the
k-means used to need.

Run: python benchmarks/bench_semdedup_driver.py --docs 200000 --repo /work/main --repo .
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import _corpus  # noqa: E402
from _corpus import real_documents, write_shards  # noqa: E402
from _mem import load  # noqa: E402

if os.environ.get("CURATE_SHARED_DATA"):  # a worktree's parent has no shared/ beside it
    _corpus.SHARED = Path(os.environ["CURATE_SHARED_DATA"])

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[5])
from _mem import self_hwm_mb
from curate import Pipeline, read, write
from curate.filters.semdedup import SemDeDup
src, work, cache, k = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
t0 = time.perf_counter()
r = Pipeline(read(src), SemDeDup(eps=0.01, backend="model2vec", cache_dir=cache,
                                 n_clusters=None if k == "auto" else int(k)),
             write(work + "/out", format="parquet")).run(work_dir=work + "/w", workers=2, progress=False)
import curate
print(json.dumps({"seconds": time.perf_counter() - t0, "kept": r.docs_out, "driver_hwm_mb": self_hwm_mb(),
                  "curate": curate.__file__}))
"""


def run(repo: Path, src: str, work: Path, cache: Path, k: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(repo))
    out = subprocess.run([sys.executable, "-c", CHILD, src, str(work), str(cache), k, str(REPO / "benchmarks")],
                         env=env, capture_output=True, text=True, check=True, cwd=work.parent)  # not cwd: '' leads sys.path
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--clusters", default="auto", help="n_clusters (default: the stage's sqrt(N))")
    ap.add_argument("--cache", type=Path, default=None, help="embedding cache folder to keep (default: a temporary one)")
    ap.add_argument("--repo", action="append", type=Path, required=True, help="checkout to measure (repeat)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        write_shards(real_documents(a.docs), t / "in", a.shards)
        src, cache = str(t / "in" / "*.jsonl"), a.cache or t / "cache"
        run(a.repo[0], src, t / "warm", cache, a.clusters)  # fills the embedding cache
        print(f"docs {a.docs:,}, {a.shards} input files, load {load()}")
        for repo in a.repo:
            r = run(repo, src, t / f"run-{len(os.listdir(t))}", cache, a.clusters)
            print(f"{str(repo):<40} driver VmHWM {r['driver_hwm_mb']:8.0f} MB  {r['seconds']:7.1f} s  "
                  f"kept {r['kept']:,}  ({r['curate']})")


if __name__ == "__main__":
    main()
