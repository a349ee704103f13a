"""Fast CPU embeddings: all-MiniLM-L6-v2 (torch) vs its model2vec static distillation, side by side.

On the labelled MRPC pairs (``../shared/data/paraphrase/msr_paraphrase_train.txt``):

1. embedding speed (sentences/s, best of 2, after a warm-up; the static model is loaded from its cache);
2. per pair, SemDeDup's decision "duplicate iff cosine > 1 - eps" at the same eps for both backends:
   agreement rate with MiniLM, and precision/recall against the paraphrase label (as bench_quality.py);
3. SemDeDup itself (``semdedup_vectors``, k-means + within-cluster pruning) on all sentences of those
   pairs: the removed sets' agreement (Jaccard of removed ids, and fraction of identical decisions).

Run: python benchmarks/bench_embed_backends.py [--pairs N]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("CURATE_SHARED_DATA", REPO.parent / "shared" / "data"))


def mrpc(n: int) -> tuple[list[str], list[str], np.ndarray]:
    a, b, y = [], [], []
    with open(DATA / "paraphrase" / "msr_paraphrase_train.txt", encoding="utf-8-sig") as f:
        next(f)
        for line in f:
            q, _, _, s1, s2 = line.rstrip("\n").split("\t")
            a.append(s1)
            b.append(s2)
            y.append(q == "1")
            if len(a) >= n:
                break
    return a, b, np.array(y)


def pr(pred: np.ndarray, gold: np.ndarray) -> tuple[float, float]:
    tp = int((pred & gold).sum())
    return tp / max(int(pred.sum()), 1), tp / max(int(gold.sum()), 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=2000)
    args = ap.parse_args()
    from curate.filters.semdedup import semdedup_vectors
    from curate.models.sentence import EmbedSpec, l2_normalize

    a, b, gold = mrpc(args.pairs)
    texts = a + b
    vecs, speed = {}, {}
    for backend in ("torch", "model2vec"):
        t0 = time.perf_counter()
        enc = EmbedSpec(backend=backend).load("cpu")
        load_s = time.perf_counter() - t0
        enc.encode(texts[:64], batch_size=64)
        ts = []
        for _ in range(2):
            t0 = time.perf_counter()
            x = enc.encode(texts, batch_size=64)
            ts.append(time.perf_counter() - t0)
        vecs[backend] = l2_normalize(np.asarray(x, np.float32))
        speed[backend] = (len(texts) / min(ts), load_s, x.shape[1])
    load = os.getloadavg()
    n = len(a)
    print(f"\n## `python benchmarks/bench_embed_backends.py --pairs {args.pairs}` ({n} MRPC pairs, "
          f"{len(texts)} sentences; load average {load[0]:.1f} on {os.cpu_count()} cores)\n")
    print("| backend | dim | sentences/s | load s | speed-up |\n|---|---:|---:|---:|---:|")
    for k, (s, ld, d) in speed.items():
        print(f"| {k} | {d} | {s:,.0f} | {ld:.2f} | x{s / speed['torch'][0]:.1f} |")
    cos = {k: np.einsum("ij,ij->i", v[:n], v[n:]) for k, v in vecs.items()}
    print("\nPair decision 'duplicate iff cosine > 1 - eps' (SemDeDup's rule for two docs of one cluster):\n")
    print("| eps | MiniLM P / R | model2vec P / R | agreement with MiniLM | MiniLM dup pairs | model2vec dup pairs |")
    print("|---:|---|---|---:|---:|---:|")
    for eps in (0.05, 0.1, 0.15, 0.2, 0.3):
        pt, pm = cos["torch"] > 1 - eps, cos["model2vec"] > 1 - eps
        (p1, r1), (p2, r2) = pr(pt, gold), pr(pm, gold)
        print(f"| {eps} | {p1:.2f} / {r1:.2f} | {p2:.2f} / {r2:.2f} | {(pt == pm).mean():.3f} | {int(pt.sum())} | "
              f"{int(pm.sum())} |")
    print("\nSemDeDup (semdedup_vectors, default clusters) on all sentences: removed-set agreement\n")
    print("| eps | removed MiniLM | removed model2vec | same decision | Jaccard of removed sets |")
    print("|---:|---:|---:|---:|---:|")
    res = {k: semdedup_vectors(v) for k, v in vecs.items()}
    for eps in (0.05, 0.1, 0.2):
        rt, rm = res["torch"].removed(eps), res["model2vec"].removed(eps)
        jac = (rt & rm).sum() / max((rt | rm).sum(), 1)
        print(f"| {eps} | {int(rt.sum())} | {int(rm.sum())} | {(rt == rm).mean():.3f} | {jac:.2f} |")


if __name__ == "__main__":
    main()
