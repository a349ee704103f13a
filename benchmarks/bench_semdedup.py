"""Embedding and SemDeDup throughput.

1. ``embed`` operator (inside a Pipeline, cache off) vs raw ``SentenceTransformer.encode`` on the same
   model, texts and batch size: docs/s and the ratio (goal >= 0.95: no overhead).
2. End-to-end ``semdedup`` (read -> embed in fit -> k-means -> pruning -> write) docs/s, and the same
   run again with the embedding cache warm (the dedup work alone).
3. The SemDeDup vector core (k-means + within-cluster search) on a larger set of vectors.
4. NeMo Curator's semantic dedup: checked for importability; it needs RAPIDS/cuDF + a GPU.

Run: python benchmarks/bench_semdedup.py [--small] [--docs N] [--device auto|cpu|cuda]

``--device``: ``auto`` (default) is what the pipeline itself picks (CUDA when torch sees a GPU); ``cpu``
hides every GPU (``CUDA_VISIBLE_DEVICES=""`` before torch loads) so that the raw encode *and* the pipeline
run on the CPU; ``cuda`` fails when there is none. The device each side ran on is printed and checked
equal. Memory: this process's own peak (``VmHWM``) and PSS (benchmarks/_mem.py); workers=1 runs in process.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from _mem import load, self_hwm_mb, self_pss_mb  # noqa: E402

DATA = Path(os.environ.get("CURATE_SHARED_DATA", REPO.parent / "shared" / "data"))


def load_texts(n: int) -> list[str]:
    """20 Newsgroups bodies (headers dropped), cut to about 100 words: web-like documents."""
    out = []
    with gzip.open(DATA / "web/20news-bydate.jsonl.gz", "rt") as f:
        for line in f:
            t = json.loads(line)["text"]
            body = t.split("\n\n", 1)[-1]
            words = body.split()
            if len(words) >= 20:
                out.append(" ".join(words[:100]))
            if len(out) >= n:
                break
    return out


def bench_embed(texts: list[str], work: Path, device: str, batch_size: int, repeats: int) -> dict:
    from curate import Pipeline, read, write
    from curate.filters.embed import Embed
    from curate.models.sentence import load_sentence_model

    src = work / "docs.jsonl"
    src.write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(texts)))
    model = load_sentence_model(None, device)
    model.encode(texts[:32], batch_size=batch_size)  # warm-up (threads, allocator)
    raw_t, ours_t = [], []
    for r in range(repeats):  # interleaved, best of n: the machine is shared
        t0 = time.perf_counter()
        model.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
        raw_t.append(time.perf_counter() - t0)
        shutil.rmtree(work / f"w{r}", ignore_errors=True)
        t0 = time.perf_counter()
        Pipeline(read(str(src)), Embed(batch_size=batch_size, cache=False),
                 write(str(work / f"o{r}"), format="parquet")).run(work_dir=str(work / f"w{r}"), workers=1,
                                                                 progress=False)
        ours_t.append(time.perf_counter() - t0)
    n = len(texts)
    return {"docs": n, "batch_size": batch_size, "raw_docs_s": n / min(raw_t), "embed_docs_s": n / min(ours_t),
            "ratio": min(raw_t) / min(ours_t), "raw_s": raw_t, "embed_s": ours_t}


def bench_semdedup(texts: list[str], work: Path, device: str, batch_size: int) -> dict:
    from curate import Pipeline, read, write
    from curate.filters.semdedup import SemDeDup

    src = work / "docs.jsonl"
    res = {}
    for label in ("cold", "warm_cache"):
        w = work / f"sd-{label}"
        shutil.rmtree(w, ignore_errors=True)
        t0 = time.perf_counter()
        r = Pipeline(read(str(src)), SemDeDup(eps=0.01, embed_batch_size=batch_size, cache_dir=str(work / "sdcache")),
                     write(str(work / f"sdo-{label}"), format="parquet")).run(work_dir=str(w), workers=1,
                                                                            progress=False)
        secs = time.perf_counter() - t0
        res[label] = {"docs_s": len(texts) / secs, "seconds": secs, "kept": r.docs_out}
    return res


def bench_core(texts_emb: np.ndarray, n: int, device: str) -> dict:
    """The vector core on n vectors: real embeddings and copies of them with noise of scale
    0, 0.01, 0.02, 0.03 per dimension in turn (exact copies are duplicates; noisy ones mostly not)."""
    from curate.filters.semdedup import default_n_clusters, semdedup_vectors

    rng = np.random.default_rng(0)
    reps = int(np.ceil(n / len(texts_emb)))
    x = np.vstack([texts_emb + rng.normal(scale=0.01 * (k % 4), size=texts_emb.shape).astype(np.float32)
                   for k in range(reps)])[:n]
    t0 = time.perf_counter()
    res = semdedup_vectors(x, device=device)
    secs = time.perf_counter() - t0
    return {"vectors": n, "n_clusters": default_n_clusters(n), "seconds": secs, "vectors_s": n / secs,
            "removed_at_0.01": int(res.removed(0.01).sum())}


def nemo_status() -> str:
    if importlib.util.find_spec("nemo_curator") is None:
        return ("not run: NeMo Curator is not installed here; its semantic dedup (SemDedup / "
                "TextSemanticDeduplicationWorkflow) needs RAPIDS cuDF/cuML and a CUDA GPU, and this machine has "
                "neither")
    return "installed but not benchmarked (needs a CUDA GPU for cuML k-means)"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", action="store_true", help="200 docs (a quick check)")
    ap.add_argument("--docs", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--core-vectors", type=int, default=100_000)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                    help="auto: the pipeline's own choice; cpu: GPUs hidden from both sides; cuda: required")
    args = ap.parse_args()
    n = 200 if args.small else args.docs
    core_n = 20_000 if args.small else args.core_vectors
    if args.device == "cpu":  # before torch loads: the pipeline then cannot pick CUDA behind our back
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import torch

    from curate.executors.base import detect_device
    from curate.filters.embed import Embed
    from curate.models.device import resolve_device

    device = resolve_device(args.device)  # "cuda" with no GPU raises instead of a silent CPU run
    pipeline_device = detect_device([Embed()])
    if pipeline_device != device:
        sys.exit(f"device mismatch: raw encode on {device}, pipeline on {pipeline_device}")
    texts = load_texts(n)
    print(f"{len(texts)} docs (20news bodies, <=100 words), device={device} (both sides), "
          f"torch threads={torch.get_num_threads()}, load {load()}")
    with tempfile.TemporaryDirectory(prefix="bench-semdedup-") as tmp:
        work = Path(tmp)
        e = bench_embed(texts, work, device, args.batch_size, args.repeats)
        print(f"embed: raw encode {e['raw_docs_s']:.1f} docs/s, embed operator {e['embed_docs_s']:.1f} docs/s, "
              f"ratio {e['ratio']:.3f} (runs raw {[round(s, 2) for s in e['raw_s']]} s, "
              f"ours {[round(s, 2) for s in e['embed_s']]} s)")
        s = bench_semdedup(texts, work, device, args.batch_size)
        print(f"semdedup end-to-end (embedding in fit): {s['cold']['docs_s']:.1f} docs/s; with warm cache "
              f"{s['warm_cache']['docs_s']:.1f} docs/s; kept {s['cold']['kept']}/{len(texts)} at eps 0.01")
        from curate import read_output
        from curate.models.sentence import embeddings_to_numpy

        emb = embeddings_to_numpy(read_output(str(work / "o0"))["embedding"])  # the embed run's vectors
        c = bench_core(emb, core_n, device)
        print(f"semdedup core: {c['vectors']:,} vectors, {c['n_clusters']} clusters, {c['seconds']:.2f} s, "
              f"{c['vectors_s']:,.0f} vectors/s, removed {c['removed_at_0.01']:,} at eps 0.01")
    print(f"NeMo Curator: {nemo_status()}")
    print(f"peak RSS (VmHWM, this process) {self_hwm_mb():.0f} MB, PSS now {self_pss_mb():.0f} MB; load {load()}")


if __name__ == "__main__":
    main()
