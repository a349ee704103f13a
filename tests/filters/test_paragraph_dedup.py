"""paragraph_dedup: Dolma's expected spans on its fixture, brute force on 20news, the Bloom filter's rate."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from curate.core.operator import UID, FitContext
from curate.core.step import run_step
from curate.filters.paragraph_dedup import BloomFilter, ParagraphDedup
from curate.io.spill import SpillWriter


def _spill(tmp: Path, frames: list[pl.DataFrame]) -> FitContext:
    shards = []
    for i, df in enumerate(frames):
        w = SpillWriter(tmp / "spill" / f"shard-{i:05d}")
        for s in df.iter_slices(50):
            w.write(s)
        w.close()
        shards.append(tmp / "spill" / f"shard-{i:05d}")
    (tmp / "state").mkdir(exist_ok=True)
    return FitContext(work_dir=tmp, state_dir=tmp / "state", shards=shards, scratch_dir=tmp / "scratch")


def _with_uid(df: pl.DataFrame) -> pl.DataFrame:
    return df.with_columns(pl.int_range(pl.len(), dtype=pl.UInt64).alias(UID))


@pytest.mark.parametrize("method", ["bloom", "exact"])
def test_dolma_expected_spans(shared_data, method):
    root = shared_data / "web/dolma_fixtures"
    docs = [json.loads(line) for line in gzip.open(root / "provided/deduper/documents/000.json.gz", "rt")]
    expected = {}
    for line in gzip.open(root / "expected/dedupe-paragraphs.json.gz", "rt"):
        d = json.loads(line)
        expected[d["id"]] = [tuple(s[:2]) for s in d["attributes"]["bff_duplicate_paragraph_spans"]]
    df = _with_uid(pl.DataFrame({"id": [d["id"] for d in docs], "text": [d["text"] for d in docs]}))
    # Dolma's test config: Bloom filter for 1000 items at 1e-3, empty lines hashed too
    op = ParagraphDedup(method=method, skip_empty=False, expected_paragraphs=1000)
    got = op.duplicate_spans([df.slice(0, 4), df.slice(4)])
    assert sum(len(v) for v in expected.values()) == 43
    assert {d["id"]: got.get(i, []) for i, d in enumerate(docs)} == expected


def _brute_force(texts: list[str], skip_empty: bool) -> list[str]:
    seen: set[str] = set()
    out = []
    for t in texts:
        kept = []
        for p in t.split("\n"):
            if skip_empty and not p.strip():
                kept.append(p)
                continue
            if p in seen:
                continue
            seen.add(p)
            kept.append(p)
        out.append("\n".join(kept))
    return out


@pytest.mark.parametrize("method", ["bloom", "exact"])
def test_equals_brute_force_on_20news(shared_data, tmp_path, method):
    df = _with_uid(pl.read_ndjson(shared_data / "web/20news-bydate.jsonl.gz", n_rows=400).select("id", "text"))
    op = ParagraphDedup(method=method, expected_paragraphs=50_000)
    ctx = _spill(tmp_path, [df.slice(0, 150), df.slice(150)])
    op.fit(ctx)
    op.setup(ctx)
    kept, rej, _ = run_step(op, df)
    ref = _brute_force(df["text"].to_list(), skip_empty=True)
    n_rej = 0 if rej is None else rej.height
    assert kept.height + n_rej == df.height
    got = dict(zip(kept["id"], kept["text"]))
    for i, r in zip(df["id"], ref):
        if i in got:
            assert got[i] == r
        else:
            assert not r.strip()  # dropped only when nothing but blank lines is left
    removed = int(kept["para_dups"].sum()) + (0 if rej is None else int(rej["para_dups"].sum()))
    assert removed > 300  # real repeated header lines, signatures, quoted lines


def test_bloom_filter_false_positive_rate():
    rng = np.random.default_rng(0)
    bf = BloomFilter(20_000, 0.01)
    assert bf.k == 7 and abs(bf.m - 191_702) < 2
    h = rng.integers(0, 2**63, (2, 20_000), dtype=np.uint64)
    bf.insert(h[0], h[1])
    assert bf.contains(h[0], h[1]).all()  # no false negatives
    q = rng.integers(0, 2**63, (2, 100_000), dtype=np.uint64)
    fp = bf.contains(q[0], q[1]).mean()
    assert 0.006 < fp < 0.014 and abs(bf.fp_rate(20_000) - 0.01) < 0.001
