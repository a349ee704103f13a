"""MinHash/LSH near-duplicate benchmark: curate ``minhash_dedup`` vs datasketch MinHashLSH vs DataTrove's
4-stage MinHash pipeline, same corpus, same shingling (word 5-grams of DataTrove's simplify_text), 14 x 8.

Corpus: real text (IMDB reviews, 20 Newsgroups, Gutenberg paragraphs from ../shared/data) + planted
near-duplicates (copies with 0-5% of words replaced), written as parquet parts of 50k docs (one shard
each). Quality: pair-level precision/recall of "same cluster" against exact word-5-gram Jaccard >= 0.75
over all pairs sharing a shingle.

Fair by construction (issue 18): every system reads the same jsonl file; curate and DataTrove write kept
and removed documents in the same format on both sides (``--formats jsonl,jsonl.gz``: DataTrove's writers
with ``compression=None`` / their default gzip); DataTrove runs with its fastest (whitespace) and its
default (spaCy) word tokeniser; datasketch runs through ``MinHash.bulk``; no side gets a warm-up (one
fresh process each), and start-up is reported apart from the work. Each system's time is CPU seconds (and
wall) of its process tree, memory its own peak VmHWM and the tree's summed PSS (benchmarks/_mem.py).

    python benchmarks/bench_minhash.py --docs 20000          # all peers, both formats
    python benchmarks/bench_minhash.py --small               # 3,000 docs
    python benchmarks/bench_minhash.py --docs 20000 --gzip-level 6 --gzip-level 9   # curate's jsonl.gz at both
    python benchmarks/bench_minhash.py --docs 20000 --sig-only   # signatures alone: curate vs datasketch bulk
    python benchmarks/bench_minhash.py --docs 1000000 --only curate --no-truth --cluster-mem   # scale run

``--cluster-mem`` re-runs curate's clustering stage alone (buckets, candidate docs, verification,
union-find; signatures resumed from the run) in a fresh process and prints its RSS growth.
Peers: ``benchmarks/setup_peers.sh DEST`` builds DataTrove 0.10.1 (spaCy, regex, tokenizers, xxhash<4,
orjson) and datasketch 2.0.0 venvs; pass ``--datatrove-python`` / ``--datasketch-python`` or set
``CURATE_PEERS=DEST``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _mem import load, measure, self_hwm_mb, self_pss_mb  # noqa: E402

DATA = Path(os.environ.get("CURATE_SHARED_DATA", ROOT.parent / "shared" / "data"))
WORK = ROOT / "benchmarks" / "_work" / "minhash"
PEERS = Path(os.environ.get("CURATE_PEERS", ROOT / ".peers"))  # benchmarks/setup_peers.sh
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
    # the input both sides read end to end: one jsonl, id + text, in corpus order
    (d / "jsonl").mkdir()
    df.select("id", "text").write_ndjson(d / "jsonl" / "corpus.jsonl")
    (d / "_done").touch()
    return d


def cpu_now() -> float:
    """CPU seconds (user + system) of this process and its reaped children so far."""
    import resource

    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def self_rss_mb() -> float:
    """This process's own peak RSS since exec (``VmHWM``), in MB (benchmarks/_mem.py)."""
    return self_hwm_mb()


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
def _ext(fmt: str) -> str:
    return ".jsonl.gz" if fmt == "jsonl.gz" else ".jsonl"


def child_curate(corpus: Path, res: Path, workers: int, verify: bool, fmt: str, level: int | None = None) -> None:
    """curate end to end: the same jsonl input as DataTrove, kept docs and rejects both in ``fmt``
    (``jsonl`` or ``jsonl.gz``: DataTrove's JsonlWriter without / with its default gzip); ``level``: gzip
    level of jsonl.gz (None: curate's default 6; 9 is what DataTrove's fsspec ``GzipFile`` writes)."""
    from curate import Pipeline, RejectsSpec, read, write
    from curate.core.jit import freeze_gc_at_exit
    from curate.filters.minhash import MinHashDedup

    # this process stands for the `curate run` command's (a process curate owns), which freezes the GC at
    # exit (curate.cli.main); a user's own script calling Pipeline.run pays ~0.45 CPU s more at exit
    # (Python's shutdown collections over numba's registry objects; RESULTS.md, minhash section)
    freeze_gc_at_exit()
    d = res / "run"
    shutil.rmtree(d, ignore_errors=True)
    t, c = time.perf_counter(), cpu_now()
    Pipeline(read(str(corpus / "jsonl" / "corpus.jsonl")),
             MinHashDedup(bands=BANDS, rows=ROWS, threshold=TAU, verify=verify),
             write(str(d / "out"), format=fmt, compression_level=level),
             RejectsSpec(path=str(d / "rejects"), format=fmt, compression_level=level),
             ).run(work_dir=str(d / "work"), workers=workers, progress=False)
    secs, cpu = time.perf_counter() - t, cpu_now() - c
    run_stats = json.loads((d / "work" / "stats.json").read_text())
    stats = next(s for s in run_stats["steps"] if s["step"] == "minhash_dedup")["counters"]
    # the clusters are read back by the driver (curate_clusters), as DataTrove's are: this process's CPU
    # and memory are the run's alone
    (res / "result.json").write_text(json.dumps({"seconds": secs, "cpu_work": cpu, "self_rss_mb": self_rss_mb(),
                                                 "stats": stats}))


def curate_clusters(corpus: Path, res: Path, fmt: str) -> None:
    """Per doc (input order) curate's dup_cluster_id (-1: none) from a finished run's outputs, into
    ``cluster.npy``, and the number removed into ``result.json`` (run in the driver, not timed)."""
    d = res / "run"
    ext = _ext(fmt)
    kept = [pl.read_ndjson(f).select("id", "dup_cluster_id") for f in (d / "out").rglob(f"*{ext}")]
    rej = [pl.read_ndjson(f, schema_overrides={"dup_cluster_id": pl.Int64}).select("id", "dup_cluster_id")
           for f in (d / "rejects").rglob(f"*{ext}")]
    both = pl.concat([x.select("id", pl.col("dup_cluster_id").cast(pl.Int64)) for x in kept + rej])
    ids = pl.read_parquet(corpus / "parquet", columns=["id", "order"])
    cl = ids.join(both, on="id", how="left").sort("order")
    np.save(res / "cluster.npy", cl["dup_cluster_id"].fill_null(-1).to_numpy())
    out = json.loads((res / "result.json").read_text())
    (res / "result.json").write_text(json.dumps({**out, "removed": sum(x.height for x in rej)}))


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
    base = self_pss_mb()  # after imports; PSS of this one process (no shared pages to split here)
    t = time.perf_counter()
    op.fit(FitContext(work, state, 0, 1, "cpu", 0, shards=shards, scratch_dir=scratch))
    secs = time.perf_counter() - t
    (res / "cluster_stage.json").write_text(json.dumps({"seconds": secs, "baseline_rss_mb": base,
                                                        "peak_rss_mb": self_rss_mb()}))


def _curate_text_module():  # noqa: ANN202
    """curate/core/text.py loaded by path (it imports only polars): the datasketch venv shingles with
    the very expression curate uses, without installing curate there."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_curate_text", ROOT / "curate" / "core" / "text.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _ds_shingles(simple: list[str]):  # noqa: ANN202
    """Word 5-grams of each simplified text, as bytes, lazily (what ``MinHash.bulk`` consumes)."""
    for s in simple:
        w = s.split(" ")
        yield [" ".join(w[i:i + 5]).encode() for i in range(len(w) - 4)]


def child_datasketch(corpus: Path, res: Path) -> None:
    """datasketch at its best: ``MinHash.bulk`` (one permutation set for all docs, LeanMinHash out) and
    MinHashLSH query-then-insert, union-find over the candidates. Runs in the datasketch venv."""
    from datasketch import MinHash, MinHashLSH

    simplify_text = _curate_text_module().simplify_text
    df = pl.read_ndjson(corpus / "jsonl" / "corpus.jsonl")
    t, c = time.perf_counter(), cpu_now()
    simple = df.select(simplify_text(pl.col("text"))).to_series().to_list()  # same normaliser as curate
    sigs = MinHash.bulk(_ds_shingles(simple), num_perm=BANDS * ROWS, seed=1)
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
    secs, cpu = time.perf_counter() - t, cpu_now() - c
    rss = self_rss_mb()
    roots = np.array([find(i) for i in range(len(sigs))])
    size = np.bincount(roots, minlength=len(roots))
    np.save(res / "cluster.npy", np.where(size[roots] > 1, roots, -1))
    (res / "result.json").write_text(json.dumps({
        "seconds": secs, "cpu_work": cpu, "sig_seconds": t_sig, "self_rss_mb": rss,
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
    inp, work, tok, comp = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    comp = None if comp == "none" else comp  # JsonlWriter's default is "gzip"
    cfg = MinhashConfig(hash_config=HashConfig(precision=64), num_buckets=14, hashes_per_bucket=8, n_grams=5)
    Sig = WSSig if tok == "ws" else MinhashDedupSignature
    import resource

    def cpu_now():
        a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime

    t, c = time.perf_counter(), cpu_now()  # after the imports: start-up = the driver's figure minus this
    stages = [
        [JsonlReader(inp), Sig(output_folder=f"{work}/sigs", config=cfg)],
        [MinhashDedupBuckets(input_folder=f"{work}/sigs", output_folder=f"{work}/buckets", config=cfg)],
        [MinhashDedupCluster(input_folder=f"{work}/buckets", output_folder=f"{work}/remove_ids", config=cfg,
                             save_cluster_id=True)],
        [JsonlReader(inp), MinhashDedupFilter(input_folder=f"{work}/remove_ids",
                                              exclusion_writer=JsonlWriter(f"{work}/removed", compression=comp),
                                              load_cluster_ids=True),
         JsonlWriter(f"{work}/out", compression=comp)],
    ]
    for i, st in enumerate(stages):
        LocalPipelineExecutor(pipeline=st, tasks=cfg.num_buckets if i == 1 else 1, workers=1,
                              logging_dir=f"{work}/logs{i}").run()
    secs, cpu = time.perf_counter() - t, cpu_now() - c
    hwm = next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmHWM:"))
    print("RESULT " + json.dumps({"seconds": secs, "cpu_work": cpu, "self_rss_mb": hwm / 1024}))
'''


def run_datatrove(corpus: Path, res: Path, tok: str, comp: str, py: Path) -> dict | None:
    """DataTrove's 4 stages on the same jsonl; ``comp`` "gzip" (its writers' default) or "none"."""
    if not py.exists():
        print(f"datatrove: no venv at {py} (benchmarks/setup_peers.sh)")
        return None
    d = res / "run"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    df = pl.read_parquet(corpus / "parquet").sort("order")
    (d / "run.py").write_text(DT_SCRIPT)
    env = {**os.environ, "PYTHONPATH": "", "HF_HUB_OFFLINE": "1"}
    m = measure([str(py), str(d / "run.py"), str(corpus / "jsonl"), str(d / "work"), tok, comp], env=env,
                log=res / "datatrove.log")
    if m["rc"]:
        print((res / "datatrove.log").read_text()[-3000:])
        return None
    own = json.loads(next(ln[7:] for ln in (res / "datatrove.log").read_text().splitlines()
                          if ln.startswith("RESULT ")))
    cluster, removed = datatrove_clusters(df, d)
    np.save(res / "cluster.npy", cluster)
    (res / "measure.json").write_text(json.dumps(m))
    out = {"seconds": own["seconds"], "cpu_work": own["cpu_work"], "removed": removed,
           "self_rss_mb": own["self_rss_mb"]}
    (res / "result.json").write_text(json.dumps(out))
    return {**m, **out, "cluster": cluster}


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


def run_child(kind: str, corpus: Path, res: Path, *extra: str, py: str = sys.executable) -> dict:
    shutil.rmtree(res, ignore_errors=True) if kind != "cluster" else None
    res.mkdir(parents=True, exist_ok=True)
    m = measure([py, __file__, "--child", kind, "--corpus", str(corpus), "--res", str(res), *extra])
    if m["rc"]:
        raise RuntimeError(f"{kind} child failed ({m['rc']})")
    if kind == "cluster":
        return {**m, **json.loads((res / "cluster_stage.json").read_text())}
    (res / "measure.json").write_text(json.dumps(m))
    if kind == "curate":
        curate_clusters(corpus, res, extra[extra.index("--fmt") + 1] if "--fmt" in extra else "jsonl")
    return load_result(res)


def load_result(res: Path) -> dict:
    """A finished system run: its outside measurements, its own result and per-doc clusters."""
    m = json.loads((res / "measure.json").read_text()) if (res / "measure.json").exists() else {}
    return {**m, **json.loads((res / "result.json").read_text()), "cluster": np.load(res / "cluster.npy")}


def signature_race(texts: pl.Series, rounds: int = 3) -> None:
    """Signatures only, same docs, same moment (alternating rounds, best of each, both sides warmed up on
    100 docs first): datasketch's ``MinHash.bulk`` (one permutation set for every doc) on the simplified
    word 5-grams vs curate's batch kernel, both from the simplified text, 1 core; CPU seconds of this
    process (``time.process_time``; run with POLARS_MAX_THREADS=1 for one thread on both sides). datasketch here is the
    one in curate's venv (the ``dev`` extra), the same 2.0.0 as the peer venv."""
    from datasketch import MinHash

    from curate.core.text import simplify_text
    from curate.filters.minhash import _Cfg, compute_signatures

    cfg = _Cfg(shingle="word", ngram=5, normalize=True, hash="fast", num_perm=BANDS * ROWS, seed=1,
               bands=BANDS, rows=ROWS, score_column=None, device="cpu")

    def ds(tx: pl.Series) -> None:
        simple = tx.to_frame("t").select(simplify_text(pl.col("t"))).to_series().to_list()
        MinHash.bulk(_ds_shingles(simple), num_perm=BANDS * ROWS, seed=1)

    compute_signatures(texts[:100], cfg)
    ds(texts[:100])
    best_ds = best_cu = float("inf")
    for _ in range(rounds):
        t = time.process_time()
        ds(texts)
        best_ds = min(best_ds, time.process_time() - t)
        t = time.process_time()
        compute_signatures(texts, cfg)
        best_cu = min(best_cu, time.process_time() - t)
    n = len(texts)
    print(f"signatures, same {n} docs, best of {rounds}: datasketch bulk {n / best_ds:.0f} docs/s, curate "
          f"{n / best_cu:.0f} docs/s, ratio {best_ds / best_cu:.1f}x (load {load()})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=20000)
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--only", default="curate,datasketch,datatrove")
    ap.add_argument("--formats", default="jsonl,jsonl.gz",
                    help="output formats, each run on both sides: jsonl (DataTrove compression=None) and "
                         "jsonl.gz (DataTrove's default gzip)")
    ap.add_argument("--tokenizers", default="ws,spacy", help="DataTrove word tokenisers: ws (fastest), spacy (default)")
    ap.add_argument("--datatrove-python", default=str(PEERS / "datatrove" / "bin" / "python"),
                    help="DataTrove's venv python (benchmarks/setup_peers.sh; env CURATE_PEERS sets the folder)")
    ap.add_argument("--datasketch-python", default=str(PEERS / "datasketch" / "bin" / "python"),
                    help="datasketch's venv python (benchmarks/setup_peers.sh)")
    ap.add_argument("--no-truth", action="store_true")
    ap.add_argument("--no-verify-run", action="store_true", help="skip curate's run with verification")
    ap.add_argument("--cluster-mem", action="store_true", help="also measure curate's clustering stage alone")
    ap.add_argument("--sig-only", action="store_true", help="signature rates only: curate vs datasketch, same docs")
    ap.add_argument("--sig-docs", type=int, default=10000, help="documents in the --sig-only race")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--corpus", help=argparse.SUPPRESS)
    ap.add_argument("--res", help=argparse.SUPPRESS)
    ap.add_argument("--fmt", default="jsonl", help=argparse.SUPPRESS)
    ap.add_argument("--verify", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--gzip-level", type=int, action="append", default=None,
                    help="curate's jsonl.gz level(s), repeatable (default: curate's default, 6; 9 = DataTrove's "
                         "GzipFile level, equal compression)")
    args = ap.parse_args()
    if args.child:
        res = Path(args.res)
        if args.child == "curate":
            child_curate(Path(args.corpus), res, args.workers, args.verify, args.fmt,
                         args.gzip_level[0] if args.gzip_level else None)
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
          f"bands x rows = {BANDS} x {ROWS}, tau = {TAU}; load {load()}", flush=True)
    if args.sig_only:
        signature_race(texts[:args.sig_docs])
        return
    truth = sets = None
    if not args.no_truth:
        t = time.perf_counter()
        truth = truth_pairs(texts)
        sets = shingle_sets(texts)
        print(f"exact-Jaccard truth: {truth.filter(pl.col('j') >= TAU).height} pairs >= {TAU} "
              f"({time.perf_counter() - t:.0f}s)", flush=True)
    rows: dict[str, dict] = {}

    def report(name: str, r: dict) -> None:
        p, rc = pr(r["cluster"], truth, sets) if truth is not None else (float("nan"), float("nan"))
        hwm = max(r["max_hwm_mb"], r.get("self_rss_mb", 0))  # sampled, or the child's own exact VmHWM
        rows[name] = {"wall": r["wall"], "steady": r["seconds"], "cpu": r["cpu_s"], "cpu_work": r["cpu_work"]}
        print(f"{name:34s} CPU {r['cpu_s']:6.1f}s = start-up {r['cpu_s'] - r['cpu_work']:4.1f}s + work "
              f"{r['cpu_work']:6.1f}s ({n / r['cpu_s']:6.0f} docs per CPU-s end to end); wall {r['wall']:6.1f}s "
              f"(work {r['seconds']:6.1f}s)  VmHWM {hwm:5.0f} MB  PSS {r['peak_pss_mb']:5.0f} MB  P={p:.3f} "
              f"R={rc:.3f} removed={r['removed']}  load {load()}", flush=True)

    fmts = args.formats.split(",")
    for fmt in fmts:  # sides interleaved per format: curate, DataTrove (each tokeniser)
        levels = (args.gzip_level or [None]) if fmt == "jsonl.gz" else [None]
        for level in levels if "curate" in only else []:
            w = ["--workers", str(args.workers), "--fmt", fmt, *(["--gzip-level", str(level)] if level else [])]
            lv = f", level {level}" if level else ""
            for verify in (False,) if args.no_verify_run else (False, True):
                tag = "verify" if verify else "noverify"
                res = WORK / f"res_curate_{n}_{tag}_w{args.workers}_{fmt}{level or ''}"
                r = run_child("curate", corpus, res, *w, *(["--verify"] if verify else []))
                report(f"curate {fmt} ({'verify' if verify else 'no verify'}, w={args.workers}{lv})", r)
                if args.cluster_mem:
                    c = run_child("cluster", corpus, res, *(["--verify"] if verify else []))
                    print(f"  clustering stage alone: {c['seconds']:.1f}s, RSS {c['baseline_rss_mb']:.0f} MB after "
                          f"imports -> peak {c['peak_rss_mb']:.0f} MB (growth "
                          f"{c['peak_rss_mb'] - c['baseline_rss_mb']:.0f} MB)", flush=True)
        if "datatrove" in only:
            for tok in args.tokenizers.split(","):
                r = run_datatrove(corpus, WORK / f"res_dt_{tok}_{n}_{fmt}", tok,
                                  "gzip" if fmt == "jsonl.gz" else "none", Path(args.datatrove_python))
                if r is not None:
                    report(f"datatrove {fmt} ({tok})", r)
    if "datasketch" in only:
        if Path(args.datasketch_python).exists():
            r = run_child("datasketch", corpus, WORK / f"res_datasketch_{n}", py=args.datasketch_python)
            report("datasketch bulk + MinHashLSH", r)
            print(f"  datasketch signatures alone (bulk): {n / r['sig_seconds']:.0f} docs/s")
        else:
            print(f"datasketch: no venv at {args.datasketch_python} (benchmarks/setup_peers.sh)")
    for fmt in fmts:
        for cname, cur in [(k, v) for k, v in rows.items() if k.startswith(f"curate {fmt} (no verify")]:
            for name, r in rows.items():
                if "curate" not in name and (fmt in name.split(" ")[1:2] or "datasketch" in name):
                    print(f"ratio {cname} / {name}: end to end CPU {r['cpu'] / cur['cpu']:.1f}x "
                          f"(wall {r['wall'] / cur['wall']:.1f}x), work alone CPU "
                          f"{r['cpu_work'] / cur['cpu_work']:.1f}x (wall {r['steady'] / cur['steady']:.1f}x)")


if __name__ == "__main__":
    main()
