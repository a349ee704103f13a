"""MinHash/LSH near-duplicate benchmark: curate ``minhash_dedup`` vs datasketch MinHashLSH vs DataTrove's
4-stage MinHash pipeline, same corpus, same shingling (word 5-grams of DataTrove's simplify_text), 14 x 8.

Corpus: real text (IMDB reviews, 20 Newsgroups, Gutenberg paragraphs from ../shared/data) + planted
near-duplicates (copies with 0-5% of words replaced). Quality: pair-level precision/recall of "same
cluster" against exact word-5-gram Jaccard >= 0.75 over all pairs sharing a shingle.

    python benchmarks/bench_minhash.py --docs 20000          # all peers
    python benchmarks/bench_minhash.py --small               # 3,000 docs
    python benchmarks/bench_minhash.py --docs 1000000 --only curate   # scale / memory run

DataTrove runs in benchmarks/_work/dtenv (datatrove 0.10.1, xxhash<4, spacy, orjson), if present.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("CURATE_SHARED_DATA", ROOT.parent / "shared" / "data"))
WORK = ROOT / "benchmarks" / "_work" / "minhash"
DT_PY = ROOT / "benchmarks" / "_work" / "dtenv" / "bin" / "python"
BANDS, ROWS, TAU = 14, 8, 0.75


def build_corpus(n: int, seed: int = 0) -> pl.DataFrame:
    rng = random.Random(seed)
    texts: list[str] = []
    with gzip.open(DATA / "reviews" / "aclImdb_v1.jsonl.gz", "rt") as fh:
        texts += [json.loads(line)["text"] for line in fh]
    with gzip.open(DATA / "web" / "20news-bydate.jsonl.gz", "rt") as fh:
        texts += [json.loads(line)["text"] for line in fh]
    n_base = int(n * 0.9)
    if n_base > len(texts):
        with gzip.open(DATA / "books" / "gutenberg_slice.jsonl.gz", "rt") as fh:
            for line in fh:
                body = json.loads(line)["text"].replace("\r\n", "\n")
                texts += [p.replace("\n", " ") for p in body.split("\n\n") if len(p.split()) >= 30]
    base = [texts[i % len(texts)] for i in rng.sample(range(len(texts)), min(n_base, len(texts)))]
    while len(base) < n_base:  # beyond the real pool: distinct shuffles of real paragraphs
        w = texts[rng.randrange(len(texts))].split()
        rng.shuffle(w)
        base.append(" ".join(w))
    rows = [{"id": f"b{i}", "text": t} for i, t in enumerate(base)]
    for k in range(n - n_base):
        i = rng.randrange(n_base)
        w = base[i].split()
        for _ in range(int(len(w) * rng.uniform(0.0, 0.05))):
            w[rng.randrange(len(w))] = rng.choice(["alpha", "beta", "gamma", "the", "and"])
        rows.append({"id": f"d{k}-b{i}", "text": " ".join(w)})
    rng.shuffle(rows)
    return pl.DataFrame(rows)


def peak_rss_mb(children: bool = False) -> float:
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024


def truth_pairs(texts: pl.Series) -> pl.DataFrame:
    from curate.filters import _minhash_kernels as K
    from curate.filters.minhash import shingle_hashes

    hv, counts = shingle_hashes(texts, "word", 5, True, 0, 99)
    vals, uc = K.sorted_unique_per_doc(hv, counts)
    inv = pl.DataFrame({"d": np.repeat(np.arange(len(texts)), uc), "h": vals})
    common = inv.group_by("h").len().filter(pl.col("len") <= 200)  # very common shingles: boilerplate
    inv = inv.join(common.select("h"), on="h")
    pairs = inv.join(inv, on="h").filter(pl.col("d") < pl.col("d_right")).group_by("d", "d_right").len()
    size = pl.Series(uc)
    j = pairs["len"] / (size.gather(pairs["d"]) + size.gather(pairs["d_right"]) - pairs["len"])
    return pairs.with_columns(j.alias("j")).filter(pl.col("j") >= 0.3)


def pr(cluster: np.ndarray, truth: pl.DataFrame) -> tuple[float, float]:
    """Pair precision/recall of 'same cluster' (cluster = -1 for singletons) vs exact J >= TAU."""
    ids = np.nonzero(cluster >= 0)[0]
    grp = pl.DataFrame({"d": ids, "c": cluster[ids]})
    pred = grp.join(grp, on="c").filter(pl.col("d") < pl.col("d_right")).select("d", "d_right")
    pos = truth.filter(pl.col("j") >= TAU).select("d", "d_right")
    tp = pred.join(pos, on=["d", "d_right"]).height
    return tp / max(pred.height, 1), tp / max(pos.height, 1)


def run_curate(df: pl.DataFrame, workers: int, verify: bool) -> dict:
    from curate import Pipeline, read, read_output, write
    from curate.filters.minhash import MinHashDedup

    d = WORK / "curate"
    shutil.rmtree(d, ignore_errors=True)
    (d / "in").mkdir(parents=True)
    df.with_row_index("order").write_parquet(d / "in" / "corpus.parquet")
    t = time.perf_counter()
    Pipeline(read(str(d / "in" / "corpus.parquet")),
             MinHashDedup(bands=BANDS, rows=ROWS, threshold=TAU, verify=verify),
             write(str(d / "out"), format="parquet")).run(work_dir=str(d / "work"), workers=workers, progress=False)
    secs = time.perf_counter() - t
    out = read_output(d / "out")
    rej = pl.read_ndjson(list((d / "work" / "rejects").rglob("*.jsonl"))) if list(
        (d / "work" / "rejects").rglob("*.jsonl")) else pl.DataFrame({"id": [], "dup_cluster_id": []})
    both = pl.concat([out.select("id", pl.col("dup_cluster_id").cast(pl.Int64)),
                      rej.select("id", pl.col("dup_cluster_id").cast(pl.Int64))],
                     how="vertical_relaxed")
    cl = df.select("id").with_row_index("d").join(both, on="id", how="left").sort("d")
    return {"seconds": secs, "cluster": cl["dup_cluster_id"].fill_null(-1).to_numpy(), "removed": rej.height}


def run_datasketch(df: pl.DataFrame) -> dict:
    from datasketch import MinHash, MinHashLSH

    from curate.core.text import simplify_text

    simple = df.select(simplify_text(pl.col("text"))).to_series().to_list()
    t = time.perf_counter()
    sigs = []
    for s in simple:
        w = s.split(" ")
        m = MinHash(num_perm=BANDS * ROWS, seed=1)
        m.update_batch([" ".join(w[i:i + 5]).encode() for i in range(len(w) - 4)])
        sigs.append(m)
    t_sig = time.perf_counter() - t
    lsh = MinHashLSH(num_perm=BANDS * ROWS, params=(BANDS, ROWS))
    parent = list(range(len(sigs)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, m in enumerate(sigs):
        for j in lsh.query(m):
            a, b = find(i), find(j)
            if a != b:
                parent[max(a, b)] = min(a, b)
        lsh.insert(i, m)
    secs = time.perf_counter() - t
    roots = np.array([find(i) for i in range(len(sigs))])
    size = np.bincount(roots, minlength=len(roots))
    cluster = np.where(size[roots] > 1, roots, -1)
    return {"seconds": secs, "sig_seconds": t_sig, "cluster": cluster, "removed": int((size[roots] > 1).sum() - (size > 1).sum())}


DT_SCRIPT = r'''
import sys, time, json
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupSignature, MinhashDedupBuckets,
    MinhashDedupCluster, MinhashDedupFilter)
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.hashing import HashConfig

class _WS:
    def word_tokenize(self, text, *a, **k):
        return text.split()

class WSSig(MinhashDedupSignature):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.word_tokenizer = _WS()

if __name__ == "__main__":
    inp, work, tok = sys.argv[1], sys.argv[2], sys.argv[3]
    cfg = MinhashConfig(hash_config=HashConfig(precision=64), num_buckets=14, hashes_per_bucket=8, n_grams=5)
    Sig = WSSig if tok == "ws" else MinhashDedupSignature
    t = time.perf_counter()
    stages = [
        [JsonlReader(inp), Sig(output_folder=f"{work}/sigs", config=cfg)],
        [MinhashDedupBuckets(input_folder=f"{work}/sigs", output_folder=f"{work}/buckets", config=cfg)],
        [MinhashDedupCluster(input_folder=f"{work}/buckets", output_folder=f"{work}/remove_ids", config=cfg,
                             save_cluster_id=True)],
        [JsonlReader(inp), MinhashDedupFilter(input_folder=f"{work}/remove_ids",
                                              exclusion_writer=JsonlWriter(f"{work}/removed"), load_cluster_ids=True),
         JsonlWriter(f"{work}/out")],
    ]
    for i, st in enumerate(stages):
        LocalPipelineExecutor(pipeline=st, tasks=cfg.num_buckets if i == 1 else 1, workers=1,
                              logging_dir=f"{work}/logs{i}").run()
    print(json.dumps({"seconds": time.perf_counter() - t}))
'''


def run_datatrove(df: pl.DataFrame, tok: str) -> dict | None:
    if not DT_PY.exists():
        return None
    d = WORK / f"dt_{tok}"
    shutil.rmtree(d, ignore_errors=True)
    (d / "in").mkdir(parents=True)
    df.write_ndjson(d / "in" / "corpus.jsonl")
    (d / "run.py").write_text(DT_SCRIPT)
    env = {**os.environ, "PYTHONPATH": "", "HF_HUB_OFFLINE": "1"}
    t = time.perf_counter()
    p = subprocess.run([str(DT_PY), str(d / "run.py"), str(d / "in"), str(d / "work"), tok], capture_output=True,
                       text=True, env=env)
    secs = time.perf_counter() - t
    if p.returncode:
        print(p.stderr[-3000:])
        return None
    rss = peak_rss_mb(children=True)
    removed_files = list((d / "work" / "removed").rglob("*"))
    removed = pl.concat([pl.read_ndjson(f) for f in removed_files if f.is_file()]) if removed_files else None
    kept = pl.concat([pl.read_ndjson(f) for f in (d / "work" / "out").rglob("*") if f.is_file()])
    parts = [kept.select("id", pl.col("metadata").struct.field("minhash_cluster_id").alias("c"))]
    if removed is not None and removed.height:
        parts.append(removed.select("id", pl.col("metadata").struct.field("minhash_cluster_id").alias("c")))
    allc = pl.concat(parts, how="vertical_relaxed")
    cl = df.select("id").with_row_index("d").join(allc, on="id", how="left").sort("d")
    return {"seconds": secs, "cluster": cl["c"].fill_null(-1).cast(pl.Int64).to_numpy(),
            "removed": 0 if removed is None else removed.height, "rss_children_mb": rss}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=20000)
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--only", default="curate,datasketch,datatrove")
    ap.add_argument("--no-truth", action="store_true")
    args = ap.parse_args()
    n = 3000 if args.small else args.docs
    only = set(args.only.split(","))
    t = time.perf_counter()
    df = build_corpus(n)
    print(f"corpus: {df.height} docs, {df['text'].str.len_bytes().sum() / 1e6:.1f} MB, built in "
          f"{time.perf_counter() - t:.1f}s; bands x rows = {BANDS} x {ROWS}, tau = {TAU}")
    truth = None if args.no_truth else truth_pairs(df["text"])
    rows = []

    def report(name: str, r: dict, rss: float) -> None:
        p, rc = pr(r["cluster"], truth) if truth is not None else (float("nan"), float("nan"))
        rows.append((name, n / r["seconds"], r["seconds"], rss, p, rc, r["removed"]))
        print(f"{name:28s} {n / r['seconds']:10.0f} docs/s {r['seconds']:8.1f}s peak RSS {rss:7.0f} MB "
              f"P={p:.3f} R={rc:.3f} removed={r['removed']}", flush=True)

    if "curate" in only:
        r = run_curate(df, args.workers, verify=False)
        report(f"curate (no verify, w={args.workers})", r, peak_rss_mb())
        if n <= 100_000:
            r = run_curate(df, args.workers, verify=True)
            report(f"curate (verify, w={args.workers})", r, peak_rss_mb())
    if "datasketch" in only:
        r = run_datasketch(df)
        report("datasketch MinHashLSH", r, peak_rss_mb())
        print(f"  datasketch signatures alone: {n / r['sig_seconds']:.0f} docs/s")
    if "datatrove" in only:
        for tok in ("ws", "spacy") if n <= 20000 else ("ws",):
            r = run_datatrove(df, tok)
            if r is not None:
                report(f"datatrove 4-stage ({tok})", r, r["rss_children_mb"])
    if "curate" in only:
        from curate.filters.minhash import _Cfg, compute_signatures

        cfg = _Cfg("word", 5, True, "fast", BANDS * ROWS, 1, BANDS, ROWS, None, "cpu")
        compute_signatures(df["text"][:100], cfg)
        t = time.perf_counter()
        for i in range(0, n, 10000):
            compute_signatures(df["text"][i:i + 10000], cfg)
        print(f"  curate signatures alone: {n / (time.perf_counter() - t):.0f} docs/s (1 core)")
    base = {r[0]: r for r in rows}
    cur = next((r for r in rows if r[0].startswith("curate (no")), None)
    if cur:
        for name, r in base.items():
            if not name.startswith("curate"):
                print(f"ratio curate(no verify)/{name}: {cur[1] / r[1]:.1f}x docs/s")


if __name__ == "__main__":
    main()
