"""MinHash/LSH near-duplicate benchmark: curate ``minhash_dedup`` vs datasketch MinHashLSH vs DataTrove's
4-stage MinHash pipeline, same corpus, same shingling (word 5-grams of DataTrove's simplify_text), 14 x 8.

Corpus: real text (IMDB reviews, 20 Newsgroups, Gutenberg paragraphs from ../shared/data) + planted
near-duplicates (copies with 0-5% of words replaced), written as parquet parts of 50k docs (one shard
each). Quality: pair-level precision/recall of "same cluster" against exact word-5-gram Jaccard >= 0.75
over all pairs sharing a shingle.

Each system runs in its own process; its peak RSS is measured from outside: ``max RSS`` is the largest
single process (``os.wait4`` rusage, which covers the child and the processes it waited for) and
``tree RSS`` the peak of the summed RSS of the child and all its descendants (/proc polling, 0.2 s).

    python benchmarks/bench_minhash.py --docs 20000          # all peers
    python benchmarks/bench_minhash.py --small               # 3,000 docs
    python benchmarks/bench_minhash.py --docs 1000000 --only curate --no-truth --cluster-mem   # scale run

``--cluster-mem`` re-runs curate's clustering stage alone (buckets, candidate docs, verification,
union-find; signatures resumed from the run) in a fresh process and prints its RSS growth.
DataTrove runs in benchmarks/_work/dtenv (datatrove 0.10.1, xxhash<4, spacy, orjson), if present.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import shutil
import subprocess
import sys
import threading
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
PART_DOCS = 50_000


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


def corpus_dir(n: int) -> Path:
    """The corpus of n docs as parquet parts (and one jsonl for DataTrove), built once and reused."""
    d = WORK / f"corpus_{n}"
    if (d / "_done").exists():
        return d
    shutil.rmtree(d, ignore_errors=True)
    (d / "parquet").mkdir(parents=True)
    df = build_corpus(n).with_row_index("order")
    for i in range(0, n, PART_DOCS):
        df[i:i + PART_DOCS].write_parquet(d / "parquet" / f"part-{i // PART_DOCS:04d}.parquet")
    (d / "_done").touch()
    return d


def _status_kb(pid: int | str, field: str) -> int:
    """A ``VmRSS`` / ``VmHWM`` line of /proc/<pid>/status, in kB (0 if the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def measure(cmd: list[str], env: dict | None = None, log: Path | None = None) -> dict:
    """Run cmd; wall seconds and, in MB, ``max_rss_mb`` (the largest ``VmHWM``, i.e. peak RSS since exec,
    of the child or any descendant, polled every 0.2 s) and ``tree_rss_mb`` (peak of the summed RSS of
    the child and its descendants). ``ru_maxrss`` is not used: a forked child inherits the parent's
    high-water mark at fork, so it would report this (large) benchmark process."""
    import psutil

    t = time.perf_counter()
    out = open(log, "w") if log else None  # noqa: SIM115
    p = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT if out else None)
    peak_tree, hwm = [0], {}
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            try:
                procs = [psutil.Process(p.pid), *psutil.Process(p.pid).children(recursive=True)]
            except psutil.Error:
                procs = []
            total = 0
            for q in procs:
                total += _status_kb(q.pid, "VmRSS")
                hwm[q.pid] = max(hwm.get(q.pid, 0), _status_kb(q.pid, "VmHWM"))
            peak_tree[0] = max(peak_tree[0], total)
            stop.wait(0.2)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    rc = p.wait()
    stop.set()
    th.join()
    if out:
        out.close()
    return {"wall": time.perf_counter() - t, "max_rss_mb": max(hwm.values(), default=0) / 1024,
            "tree_rss_mb": peak_tree[0] / 1024, "rc": rc}


def self_rss_mb() -> float:
    """This process's peak RSS since exec (``VmHWM``), in MB."""
    return _status_kb("self", "VmHWM") / 1024


def truth_pairs(texts: pl.Series) -> pl.DataFrame:
    from curate.filters import _minhash_kernels as K
    from curate.filters.minhash import shingle_hashes

    hv, counts = shingle_hashes(texts, shingle="word", ngram=5, normalize=True, kind=0, seed=99)
    vals, uc = K.sorted_unique_per_doc(hv, counts)
    inv = pl.DataFrame({"d": np.repeat(np.arange(len(texts)), uc), "h": vals})
    common = inv.group_by("h").len().filter(pl.col("len") <= 200)  # very common shingles: boilerplate
    inv = inv.join(common.select("h"), on="h")
    pairs = inv.join(inv, on="h").filter(pl.col("d") < pl.col("d_right")).group_by("d", "d_right").len()
    size = pl.Series(uc)
    j = pairs["len"] / (size.gather(pairs["d"]) + size.gather(pairs["d_right"]) - pairs["len"])
    return pairs.with_columns(j.alias("j")).filter(pl.col("j") >= 0.3)


def shingle_sets(texts: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique word-5-gram hashes of every doc (values, offsets), for exact Jaccard of any pair."""
    from curate.filters import _minhash_kernels as K
    from curate.filters.minhash import shingle_hashes

    hv, counts = shingle_hashes(texts, shingle="word", ngram=5, normalize=True, kind=0, seed=99)
    vals, uc = K.sorted_unique_per_doc(hv, counts)
    return vals, np.concatenate([[0], np.cumsum(uc)]).astype(np.int64)


def pr(cluster: np.ndarray, truth: pl.DataFrame, sets: tuple[np.ndarray, np.ndarray], samples: int = 20000,
       seed: int = 0) -> tuple[float, float]:
    """Pair precision and recall of 'same cluster' (cluster = -1 for singletons) vs exact J >= TAU.

    Precision: exact Jaccard of ``samples`` predicted pairs drawn uniformly from all predicted pairs
    (cluster c with probability C(m_c, 2) / sum, then a random pair in it): unbiased, s.e. <= 0.004, and
    right for big clusters of real duplicates (boilerplate) that the truth list leaves out. Recall: over
    the truth pairs (pairs sharing a shingle held by <= 200 docs)."""
    from curate.filters import _minhash_kernels as K

    ids = np.nonzero(cluster >= 0)[0]
    order = ids[np.argsort(cluster[ids], kind="stable")]
    _, start, size = np.unique(cluster[order], return_index=True, return_counts=True)
    w = size.astype(np.float64) * (size - 1) / 2
    if w.sum() == 0:
        prec = float("nan")
    else:
        rng = np.random.default_rng(seed)
        c = rng.choice(len(size), samples, p=w / w.sum())
        i = rng.integers(0, size[c])
        j = rng.integers(0, size[c] - 1)
        j = j + (j >= i)
        a, b = order[start[c] + i], order[start[c] + j]
        vals, off = sets
        _, exact = K.pair_jaccards(a.astype(np.int64), b.astype(np.int64), np.zeros((len(cluster), 1), np.uint32),
                                   vals, off, True)
        prec = float((exact >= TAU).mean())
    pos = truth.filter(pl.col("j") >= TAU)
    d, e = pos["d"].to_numpy(), pos["d_right"].to_numpy()
    rec = float(((cluster[d] == cluster[e]) & (cluster[d] >= 0)).mean()) if len(d) else float("nan")
    return prec, rec


# ------------------------------------------------------------------------------ children (one system each)
def child_curate(corpus: Path, res: Path, workers: int, verify: bool) -> None:
    from curate import Pipeline, read, write
    from curate.filters.minhash import MinHashDedup

    d = res / "run"
    shutil.rmtree(d, ignore_errors=True)
    t = time.perf_counter()
    Pipeline(read(str(corpus / "parquet" / "*.parquet")),
             MinHashDedup(bands=BANDS, rows=ROWS, threshold=TAU, verify=verify),
             write(str(d / "out"), format="parquet")).run(work_dir=str(d / "work"), workers=workers, progress=False)
    secs = time.perf_counter() - t
    rss = self_rss_mb()
    kept = pl.scan_parquet(str(d / "out" / "**" / "*.parquet")).select("order", "dup_cluster_id")
    rej_files = list((d / "work" / "rejects").rglob("*.jsonl"))
    parts = [kept.collect()]
    if rej_files:
        parts.append(pl.concat([pl.read_ndjson(f, schema_overrides={"dup_cluster_id": pl.Int64})
                                .select("id", "dup_cluster_id") for f in rej_files]))
        ids = pl.scan_parquet(str(corpus / "parquet" / "*.parquet")).select("id", "order").collect()
        parts[1] = parts[1].join(ids, on="id").select("order", "dup_cluster_id")
    both = pl.concat([x.select(pl.col("order").cast(pl.Int64), pl.col("dup_cluster_id").cast(pl.Int64))
                      for x in parts]).sort("order")
    np.save(res / "cluster.npy", both["dup_cluster_id"].fill_null(-1).to_numpy())
    run_stats = json.loads((d / "work" / "stats.json").read_text())
    stats = next(s for s in run_stats["steps"] if s["step"] == "minhash_dedup")["counters"]
    (res / "result.json").write_text(json.dumps({"seconds": secs, "self_rss_mb": rss,
                                                 "removed": sum(1 for f in rej_files for _ in open(f)),
                                                 "stats": stats}))


def child_cluster_stage(res: Path, verify: bool) -> None:
    """Re-run the fit of a finished curate run with its signature shards kept: the clustering stage."""
    from curate.core.operator import FitContext
    from curate.filters.minhash import MinHashDedup

    work = res / "run" / "work"
    stage = next(p for p in sorted((work / "stages").iterdir()) if (p / "scratch").is_dir())
    scratch = stage / "scratch"
    for p in scratch.iterdir():
        if p.name.startswith(("minhash_buckets_", "minhash_cand_")):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    prev = work / "segments" / f"{int(stage.name) - 1:03d}"
    shards = sorted(p for p in prev.iterdir() if p.name.startswith("shard-"))
    state = res / "cluster_state"
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir()
    op = MinHashDedup(bands=BANDS, rows=ROWS, threshold=TAU, verify=verify)
    op.settings()
    from curate.filters import _minhash_kernels as K

    one = np.zeros(1, dtype=np.int64)  # load the numba kernels before the baseline (LLVM, code)
    K.roots(K.union_find(1, one[:0], one[:0]))
    K.verify_buckets(np.zeros(1, dtype=np.int64), np.ones(1, dtype=np.int64), one[:0], one[:0],
                     np.zeros(1, dtype=np.uint64), np.zeros(2, dtype=np.int64), 0.5, 1)
    K.pair_jaccards(one[:0], one[:0], np.zeros((1, 2), dtype=np.uint32), np.zeros(1, dtype=np.uint64), one, True)
    K.sorted_unique_per_doc(np.zeros(1, dtype=np.uint64), one)

    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS (Linux >= 4.0)
    base = _status_kb("self", "VmRSS") / 1024
    t = time.perf_counter()
    op.fit(FitContext(work, state, 0, 1, "cpu", 0, shards=shards, scratch_dir=scratch))
    secs = time.perf_counter() - t
    (res / "cluster_stage.json").write_text(json.dumps({"seconds": secs, "baseline_rss_mb": base,
                                                        "peak_rss_mb": self_rss_mb()}))


def child_datasketch(corpus: Path, res: Path) -> None:
    from datasketch import MinHash, MinHashLSH

    from curate.core.text import simplify_text

    df = pl.read_parquet(corpus / "parquet").sort("order")
    t = time.perf_counter()
    simple = df.select(simplify_text(pl.col("text"))).to_series().to_list()  # same normaliser as curate
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
    rss = self_rss_mb()
    roots = np.array([find(i) for i in range(len(sigs))])
    size = np.bincount(roots, minlength=len(roots))
    np.save(res / "cluster.npy", np.where(size[roots] > 1, roots, -1))
    (res / "result.json").write_text(json.dumps({
        "seconds": secs, "sig_seconds": t_sig, "self_rss_mb": rss,
        "removed": int((size[roots] > 1).sum() - (size > 1).sum())}))


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


def run_datatrove(corpus: Path, res: Path, tok: str) -> dict | None:
    if not DT_PY.exists():
        return None
    d = res / "run"
    shutil.rmtree(d, ignore_errors=True)
    (d / "in").mkdir(parents=True)
    df = pl.read_parquet(corpus / "parquet").sort("order")
    df.select("id", "text").write_ndjson(d / "in" / "corpus.jsonl")
    (d / "run.py").write_text(DT_SCRIPT)
    env = {**os.environ, "PYTHONPATH": "", "HF_HUB_OFFLINE": "1"}
    m = measure([str(DT_PY), str(d / "run.py"), str(d / "in"), str(d / "work"), tok], env=env,
                log=res / "datatrove.log")
    if m["rc"]:
        print((res / "datatrove.log").read_text()[-3000:])
        return None
    cluster, removed = datatrove_clusters(df, d)
    np.save(res / "cluster.npy", cluster)
    (res / "measure.json").write_text(json.dumps(m))
    (res / "result.json").write_text(json.dumps({"seconds": m["wall"], "removed": removed}))
    return {**m, "seconds": m["wall"], "cluster": cluster, "removed": removed}


def datatrove_clusters(df: pl.DataFrame, d: Path) -> tuple[np.ndarray, int]:
    """Per doc (input order) DataTrove's minhash_cluster_id (-1: none), and the number removed."""
    removed_files = [f for f in (d / "work" / "removed").rglob("*") if f.is_file()]
    removed = pl.concat([pl.read_ndjson(f) for f in removed_files]) if removed_files else None
    kept = pl.concat([pl.read_ndjson(f) for f in (d / "work" / "out").rglob("*") if f.is_file()])
    parts = [kept.select("id", pl.col("metadata").struct.field("minhash_cluster_id").alias("c"))]
    if removed is not None and removed.height:
        parts.append(removed.select("id", pl.col("metadata").struct.field("minhash_cluster_id").alias("c")))
    allc = pl.concat(parts, how="vertical_relaxed")
    cl = df.select("id").with_row_index("d").join(allc, on="id", how="left").sort("d")
    return cl["c"].fill_null(-1).cast(pl.Int64).to_numpy(), 0 if removed is None else removed.height


def run_child(kind: str, corpus: Path, res: Path, *extra: str) -> dict:
    shutil.rmtree(res, ignore_errors=True) if kind != "cluster" else None
    res.mkdir(parents=True, exist_ok=True)
    m = measure([sys.executable, __file__, "--child", kind, "--corpus", str(corpus), "--res", str(res), *extra])
    if m["rc"]:
        raise RuntimeError(f"{kind} child failed ({m['rc']})")
    if kind == "cluster":
        return {**m, **json.loads((res / "cluster_stage.json").read_text())}
    (res / "measure.json").write_text(json.dumps(m))
    return load_result(res)


def load_result(res: Path) -> dict:
    """A finished system run: its outside measurements, its own result and per-doc clusters."""
    m = json.loads((res / "measure.json").read_text()) if (res / "measure.json").exists() else {}
    return {**m, **json.loads((res / "result.json").read_text()), "cluster": np.load(res / "cluster.npy")}


def signature_race(texts: pl.Series, rounds: int = 3) -> None:
    """Signatures only, same docs, same moment (alternating rounds, best of each): datasketch
    ``MinHash.update_batch`` on the simplified word 5-grams vs curate's batch kernel (1 core)."""
    from datasketch import MinHash

    from curate.core.text import simplify_text
    from curate.filters.minhash import _Cfg, compute_signatures

    cfg = _Cfg(shingle="word", ngram=5, normalize=True, hash="fast", num_perm=BANDS * ROWS, seed=1,
               bands=BANDS, rows=ROWS, score_column=None, device="cpu")
    compute_signatures(texts[:100], cfg)
    best_ds = best_cu = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for s in texts.to_frame("t").select(simplify_text(pl.col("t"))).to_series().to_list():
            w = s.split(" ")
            MinHash(num_perm=BANDS * ROWS, seed=1).update_batch([" ".join(w[i:i + 5]).encode() for i in range(len(w) - 4)])
        best_ds = min(best_ds, time.perf_counter() - t)
        t = time.perf_counter()
        compute_signatures(texts, cfg)
        best_cu = min(best_cu, time.perf_counter() - t)
    n = len(texts)
    print(f"signatures, same {n} docs, best of {rounds}: datasketch {n / best_ds:.0f} docs/s, curate {n / best_cu:.0f}"
          f" docs/s, ratio {best_ds / best_cu:.1f}x", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=20000)
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--only", default="curate,datasketch,datatrove")
    ap.add_argument("--no-truth", action="store_true")
    ap.add_argument("--no-verify-run", action="store_true", help="skip curate's run with verification")
    ap.add_argument("--cluster-mem", action="store_true", help="also measure curate's clustering stage alone")
    ap.add_argument("--sig-only", action="store_true", help="signature rates only: curate vs datasketch, same docs")
    ap.add_argument("--rescore", action="store_true", help="re-score the saved runs of this size, run nothing")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--corpus", help=argparse.SUPPRESS)
    ap.add_argument("--res", help=argparse.SUPPRESS)
    ap.add_argument("--verify", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        res = Path(args.res)
        if args.child == "curate":
            child_curate(Path(args.corpus), res, args.workers, args.verify)
        elif args.child == "cluster":
            child_cluster_stage(res, args.verify)
        else:
            child_datasketch(Path(args.corpus), res)
        return
    n = 3000 if args.small else args.docs
    only = set(args.only.split(","))
    t = time.perf_counter()
    corpus = corpus_dir(n)
    texts = pl.read_parquet(corpus / "parquet", columns=["order", "text"]).sort("order")["text"]
    print(f"corpus: {n} docs, {texts.str.len_bytes().sum() / 1e6:.1f} MB, ready in {time.perf_counter() - t:.1f}s; "
          f"bands x rows = {BANDS} x {ROWS}, tau = {TAU}", flush=True)
    if args.sig_only:
        signature_race(texts[:10000])
        return
    truth = sets = None
    if not args.no_truth:
        t = time.perf_counter()
        truth = truth_pairs(texts)
        sets = shingle_sets(texts)
        print(f"exact-Jaccard truth: {truth.filter(pl.col('j') >= TAU).height} pairs >= {TAU} "
              f"({time.perf_counter() - t:.0f}s)", flush=True)
    rows = []

    def report(name: str, r: dict) -> None:
        p, rc = pr(r["cluster"], truth, sets) if truth is not None else (float("nan"), float("nan"))
        rows.append((name, n / r["seconds"], r["seconds"], r["max_rss_mb"], r["tree_rss_mb"], p, rc, r["removed"]))
        if "self_rss_mb" in r:  # the child's own VmHWM at the end of the timed part (exact, not polled)
            r["max_rss_mb"] = max(r["max_rss_mb"], r["self_rss_mb"])
        print(f"{name:30s} {n / r['seconds']:8.0f} docs/s {r['seconds']:8.1f}s  max RSS {r['max_rss_mb']:6.0f} MB"
              f"  tree RSS {r['tree_rss_mb']:6.0f} MB  P={p:.3f} R={rc:.3f} removed={r['removed']}", flush=True)

    if args.rescore:
        for res in sorted(WORK.glob(f"res_*_{n}*")):
            if (res / "result.json").exists() and f"_{n}_" in f"{res.name}_":
                r = load_result(res)
                if "max_rss_mb" not in r:  # runs saved before measure.json existed: RSS unknown
                    r.update(max_rss_mb=float("nan"), tree_rss_mb=float("nan"))
                report(res.name, r)
                if "sig_seconds" in r:
                    print(f"  datasketch signatures alone: {n / r['sig_seconds']:.0f} docs/s")
    if "curate" in only and not args.rescore:
        w = ["--workers", str(args.workers)]
        for verify in (False,) if args.no_verify_run else (False, True):
            tag = "verify" if verify else "noverify"
            res = WORK / f"res_curate_{n}_{tag}_w{args.workers}"
            r = run_child("curate", corpus, res, *w, *(["--verify"] if verify else []))
            report(f"curate ({'verify' if verify else 'no verify'}, w={args.workers})", r)
            print(f"  stats: {r['stats']}")
            if args.cluster_mem:
                c = run_child("cluster", corpus, res, *(["--verify"] if verify else []))
                print(f"  clustering stage alone: {c['seconds']:.1f}s, RSS {c['baseline_rss_mb']:.0f} MB after "
                      f"imports -> peak {c['peak_rss_mb']:.0f} MB (growth {c['peak_rss_mb'] - c['baseline_rss_mb']:.0f}"
                      f" MB)", flush=True)
    if "datasketch" in only and not args.rescore:
        r = run_child("datasketch", corpus, WORK / f"res_datasketch_{n}")
        report("datasketch MinHashLSH", r)
        print(f"  datasketch signatures alone: {n / r['sig_seconds']:.0f} docs/s")
    if "datatrove" in only and not args.rescore:
        for tok in ("ws", "spacy") if n <= 20000 else ("ws",):
            r = run_datatrove(corpus, WORK / f"res_dt_{tok}_{n}", tok)
            if r is not None:
                report(f"datatrove 4-stage ({tok})", r)
    if "curate" in only and not args.rescore:
        from curate.filters.minhash import _Cfg, compute_signatures

        cfg = _Cfg(shingle="word", ngram=5, normalize=True, hash="fast", num_perm=BANDS * ROWS, seed=1,
                   bands=BANDS, rows=ROWS, score_column=None, device="cpu")
        compute_signatures(texts[:100], cfg)
        m = min(n, 100_000)
        t = time.perf_counter()
        for i in range(0, m, 10000):
            compute_signatures(texts[i:i + 10000], cfg)
        print(f"  curate signatures alone: {m / (time.perf_counter() - t):.0f} docs/s (1 core, first {m} docs)")
    cur = next((r for r in rows if r[0].startswith("curate (no") or r[0].startswith("res_curate_")
                and "_noverify_" in r[0]), None)
    if cur:
        for r in rows:
            if "curate" not in r[0]:
                print(f"ratio curate(no verify)/{r[0]}: {cur[1] / r[1]:.1f}x docs/s")


if __name__ == "__main__":
    main()
