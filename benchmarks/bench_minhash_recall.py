"""MinHash LSH recall per Jaccard level on real near-duplicates, for three (bands, rows) choices.

Planted edits of real text: Gutenberg paragraphs (``books/gutenberg_slice.jsonl.gz``) and 20 Newsgroups
bodies (``web/20news-bydate.jsonl.gz``), >= 60 words, each copied with a random fraction of its words
replaced, deleted or duplicated; the pair's exact Jaccard of word-5-gram shingle sets (DataTrove
simplify_text, as the operator) is measured and binned at 0.75-0.95. Recall = fraction of pairs in a bin
that share at least one LSH band (the operator's candidate step: with verification a candidate with
J >= threshold is always kept as a pair, so this is the operator's recall). Same signatures
(hash "fast", num_perm = bands*rows permutations, seed 1) for all.

Run: python benchmarks/bench_minhash_recall.py [--pairs N]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import sys
from pathlib import Path

import numpy as np
import polars as pl

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("CURATE_SHARED_DATA", REPO.parent / "shared" / "data"))


def base_texts(n: int) -> list[str]:
    out: list[str] = []
    with gzip.open(DATA / "books" / "gutenberg_slice.jsonl.gz", "rt") as f:
        for line in f:
            body = json.loads(line)["text"].replace("\r\n", "\n")
            out += [p.replace("\n", " ") for p in body.split("\n\n")[50:300] if len(p.split()) >= 60]
            if len(out) >= n // 2:
                break
    with gzip.open(DATA / "web" / "20news-bydate.jsonl.gz", "rt") as f:
        for line in f:
            body = json.loads(line)["text"].split("\n\n", 1)[-1]
            if len(body.split()) >= 60:
                out.append(" ".join(body.split()[:400]))
            if len(out) >= n:
                break
    return out


def edit(text: str, frac: float, rng: random.Random) -> str:
    w = text.split()
    for _ in range(max(1, int(len(w) * frac))):
        i = rng.randrange(len(w))
        op = rng.random()
        if op < 0.6:
            w[i] = rng.choice(["alpha", "beta", "gamma", "delta", "the", "and", "of"])
        elif op < 0.8 and len(w) > 10:
            del w[i]
        else:
            w.insert(i, w[i])
    return " ".join(w)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=6000)
    args = ap.parse_args()
    from curate.filters import _minhash_kernels as K
    from curate.filters._minhash_params import optimal_param, recall_param, s_curve
    from curate.filters.minhash import _Cfg, compute_signatures

    rng = random.Random(0)
    base = base_texts(args.pairs)
    edited = [edit(t, rng.uniform(0.002, 0.04), rng) for t in base]
    n = len(base)
    configs = {"old default (datasketch 9x13)": optimal_param(0.8, 128),
               "new default (recall 21x6)": recall_param(0.8, 128), "DataTrove preset 14x8": (14, 8)}
    cfg0 = _Cfg(shingle="word", ngram=5, normalize=True, hash="fast", num_perm=128, seed=1, bands=1, rows=1,
                score_column=None, device="cpu")
    sig, _ = compute_signatures(pl.Series(base + edited), cfg0)
    from curate.filters.minhash import shingle_hashes

    hv, counts = shingle_hashes(pl.Series(base + edited), shingle="word", ngram=5, normalize=True, kind=0, seed=1)
    offs = np.concatenate([[0], np.cumsum(counts)])
    jac = np.empty(n)
    for i in range(n):
        a = set(hv[offs[i]:offs[i + 1]].tolist())
        b = set(hv[offs[n + i]:offs[n + i + 1]].tolist())
        jac[i] = len(a & b) / max(len(a | b), 1)
    bins = [(0.75, 0.8), (0.8, 0.85), (0.85, 0.9), (0.9, 0.95), (0.95, 1.0)]
    found = {}
    for name, (b, r) in configs.items():
        keys = K.band_keys(sig[:, : b * r].astype(np.uint64), b, r)
        found[name] = (keys[:n] == keys[n:]).any(axis=1)
    load = os.getloadavg()
    print(f"\n## `python benchmarks/bench_minhash_recall.py --pairs {args.pairs}` ({n} planted pairs, "
          f"load average {load[0]:.1f} on {os.cpu_count()} cores)\n")
    head = " | ".join(f"{a:.2f}-{b:.2f} (n={int(((jac >= a) & (jac < b)).sum())})" for a, b in bins)
    print(f"| bands x rows | {head} |\n|---|" + "---:|" * len(bins))
    for name, hit in found.items():
        b, r = configs[name]
        cells = []
        for lo, hi in bins:
            m = (jac >= lo) & (jac < hi)
            exp = float(s_curve(jac[m], b, r).mean()) if m.any() else float("nan")
            cells.append(f"{hit[m].mean():.3f} (S-curve {exp:.3f})" if m.any() else "-")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
