"""Build a large near-duplicate corpus (default 10,000,000 documents) from real text, as parquet shards.

    python benchmarks/make_scale_corpus.py --docs 10000000 --out /work/bench-data/scale10m

Sentences come from ../shared/data (Gutenberg books, IMDB reviews, 20 Newsgroups posts, DCLM snippets, Dolly
responses), split on sentence-ending punctuation and kept when 40-400 characters and at least 6 words. A base
document is 3-6 random sentences joined by a space (real text, sampled: two base documents share a whole
sentence now and then, far below a Jaccard of 0.8). Of every document after the first shard:
``--near`` (default 0.15) are near-duplicates of a random earlier document -- half with the first " the "
replaced by " a " and the text upper-cased at its start (Jaccard of word 5-grams about 0.85-0.95), half with
one more random sentence appended (about 0.75-0.85) -- and ``--exact`` (default 0.05) are exact copies.
Columns: ``id``, ``text``, ``src`` (index of the document it was derived from, -1 for a base document:
ground truth for precision/recall). Vectorised (polars), a few minutes for 10M on one core.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _corpus import SHARED  # noqa: E402

MAX_K = 6


def _texts() -> pl.Series:
    out: list[str] = []
    for name, field in (("web/20news-bydate.jsonl.gz", "text"), ("reviews/aclImdb_v1.jsonl.gz", "text"),
                        ("books/gutenberg_slice.jsonl.gz", "text")):
        with gzip.open(SHARED / name, "rt") as f:
            out += [json.loads(line)[field] for line in f]
    with open(SHARED / "quality/majority_data.jsonl") as f:
        out += [json.loads(line)["text"] for line in f]
    with open(SHARED / "instructions/databricks-dolly-15k.en.jsonl") as f:
        out += [json.loads(line)["response"] for line in f]
    return pl.Series("t", out)


def sentences() -> pl.Series:
    """Unique real sentences, 40-400 chars, >= 6 words, whitespace collapsed."""
    s = (_texts().to_frame()
         .select(pl.col("t").str.replace_all(r"<br\s*/?>", " ").str.replace_all(r"\s+", " ")
                 .str.extract_all(r"[^.!?]{30,400}[.!?]").alias("s"))
         .explode("s").drop_nulls()
         .select(pl.col("s").str.strip_chars())
         .filter((pl.col("s").str.len_chars() >= 40) & (pl.col("s").str.count_matches(" ") >= 5))
         .unique(maintain_order=True))
    return s["s"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=10_000_000)
    ap.add_argument("--shard-docs", type=int, default=250_000)
    ap.add_argument("--near", type=float, default=0.15)
    ap.add_argument("--exact", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="/work/bench-data/scale10m")
    a = ap.parse_args()
    t0 = time.perf_counter()
    sent = sentences()
    print(f"{len(sent):,} real sentences ({sent.str.len_bytes().mean():.0f} bytes mean) "
          f"in {time.perf_counter() - t0:.0f} s", flush=True)
    rng = np.random.default_rng(a.seed)
    n = a.docs
    # every document as (up to MAX_K + 1) sentence indices, -1 = none; derived docs copy their source's row
    idx = rng.integers(0, len(sent), size=(n, MAX_K + 1), dtype=np.int64)
    k = rng.integers(3, MAX_K + 1, size=n)
    idx[np.arange(MAX_K + 1)[None, :] >= k[:, None]] = -1
    src = np.full(n, -1, dtype=np.int64)
    kind = np.zeros(n, dtype=np.int8)  # 0 base, 1 exact copy, 2 word edit, 3 appended sentence
    u = rng.random(n)
    derived = np.arange(n) >= a.shard_docs
    kind[derived & (u < a.exact)] = 1
    kind[derived & (u >= a.exact) & (u < a.exact + a.near / 2)] = 2
    kind[derived & (u >= a.exact + a.near / 2) & (u < a.exact + a.near)] = 3
    der = np.nonzero(kind)[0]
    src[der] = (rng.random(len(der)) * der).astype(np.int64)  # a random earlier document
    extra = rng.integers(0, len(sent), size=len(der))
    for i, j, e in zip(der.tolist(), src[der].tolist(), extra.tolist()):  # in order: chains allowed
        idx[i] = idx[j]
        if kind[i] == 3:
            free = np.nonzero(idx[i] < 0)[0]
            if len(free):
                idx[i, free[0]] = e
            else:
                kind[i] = 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    sent_df = sent.to_frame("s")
    for s0 in range(0, n, a.shard_docs):
        s1 = min(n, s0 + a.shard_docs)
        f = out / f"part-{s0 // a.shard_docs:05d}.parquet"
        if f.exists():
            continue
        cols = [sent_df["s"].gather(pl.Series(idx[s0:s1, c]).replace(-1, None)).alias(f"c{c}")
                for c in range(MAX_K + 1)]
        df = pl.DataFrame(cols).select(
            pl.format("doc-{}", pl.int_range(s0, s1, dtype=pl.Int64)).alias("id"),
            pl.concat_str([pl.col(f"c{c}") for c in range(MAX_K + 1)], separator=" ", ignore_nulls=True)
            .alias("text"),
            pl.Series("src", src[s0:s1]),
            pl.Series("kind", kind[s0:s1]))
        edit = pl.col("kind") == 2
        df = df.with_columns(pl.when(edit).then(
            pl.col("text").str.slice(0, 1).str.to_uppercase() + pl.col("text").str.slice(1).str.replace(" the ", " a ",
                                                                                                    literal=True))
            .otherwise(pl.col("text")).alias("text")).drop("kind")
        tmp = f.with_name(f".tmp-{f.name}")
        df.write_parquet(tmp, compression="zstd", row_group_size=50_000)
        tmp.replace(f)
        print(f"{f.name}: {s1:,} docs, {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"done: {n:,} docs in {time.perf_counter() - t0:.0f} s; exact {int((kind == 1).sum()):,}, "
          f"word-edit {int((kind == 2).sum()):,}, appended {int((kind == 3).sum()):,}")


if __name__ == "__main__":
    main()
