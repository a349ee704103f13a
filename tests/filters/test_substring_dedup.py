"""substring_dedup (suffix array) against brute force: random token strings and real 20news posts."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from curate.core.operator import UID, FitContext
from curate.core.step import run_step
from curate.filters.substring_dedup import SubstringDedup
from curate.io.spill import SpillWriter

pytest.importorskip("pydivsufsort", reason="the dedup extra (pydivsufsort) is not installed")


def _brute(docs: list[list], k: int, keep_first: bool) -> list[np.ndarray]:
    """Every k-token window of each document, looked up among all windows: a token is removed when a window
    covering it occurs at an earlier position (keep first) or anywhere else (keep none)."""
    where: dict[tuple, list] = {}
    for d, ws in enumerate(docs):
        for a in range(len(ws) - k + 1):
            where.setdefault(tuple(ws[a:a + k]), []).append((d, a))
    out = []
    for d, ws in enumerate(docs):
        m = np.zeros(len(ws), bool)
        for a in range(len(ws) - k + 1):
            occ = where[tuple(ws[a:a + k])]
            if (occ[0] != (d, a)) if keep_first else len(occ) > 1:
                m[a:a + k] = True
        out.append(m)
    return out


def test_random_strings_equal_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(80):
        docs = [list(rng.integers(0, 3, rng.integers(0, 25))) for _ in range(rng.integers(1, 6))]
        k = int(rng.integers(1, 6))
        lens = np.array([len(d) for d in docs])
        h = np.concatenate([np.asarray(d, np.uint64) for d in docs]) if lens.sum() else np.zeros(0, np.uint64)
        for keep in ("first", "none"):
            got = SubstringDedup(min_tokens=k, keep=keep).removed_tokens(h, lens)
            exp = _brute(docs, k, keep == "first")
            assert got.tolist() == (np.concatenate(exp).tolist() if exp else [])


def _spill(tmp: Path, df: pl.DataFrame) -> FitContext:
    w = SpillWriter(tmp / "spill" / "shard-00000")
    for s in df.iter_slices(40):
        w.write(s)
    w.close()
    (tmp / "state").mkdir(parents=True)
    return FitContext(work_dir=tmp, state_dir=tmp / "state", shards=[tmp / "spill" / "shard-00000"],
                      scratch_dir=tmp / "scratch")


@pytest.mark.parametrize("k", [50, 15])
def test_real_posts_equal_brute_force(shared_data, tmp_path, k):
    df = (pl.read_ndjson(shared_data / "web/20news-bydate.jsonl.gz", n_rows=150).select("id", "text")
          .with_columns(pl.int_range(pl.len(), dtype=pl.UInt64).alias(UID)))
    op = SubstringDedup(min_tokens=k)
    ctx = _spill(tmp_path, df)
    op.fit(ctx)
    op.setup(ctx)
    kept, rej, _ = run_step(op, df)
    assert kept.height + (0 if rej is None else rej.height) == df.height
    texts = df["text"].to_list()
    toks = [re.findall(r"\S+\s*", t) for t in texts]
    masks = _brute([[w.rstrip() for w in ts] for ts in toks], k, keep_first=True)
    got = dict(zip(kept["id"], kept["text"]))
    removed = 0
    for i, t, ts, m in zip(df["id"], texts, toks, masks):
        ref = re.match(r"\s*", t).group(0) + "".join(w for w, r in zip(ts, m) if not r)
        removed += int(m.sum())
        assert got.get(i, "") == (ref if ref.strip() else "")
    assert removed > (200 if k == 50 else 1000)  # quoted replies and cross-posted text repeat in 20news
    assert int(kept["substr_removed_tokens"].sum()) + (0 if rej is None else int(rej["substr_removed_tokens"].sum())) \
        == removed


def test_empty_corpus_and_no_repeats(tmp_path):
    for k, texts in enumerate([[], ["only one", "two\nthree"]]):
        df = pl.DataFrame({"id": [str(i) for i in range(len(texts))], "text": texts},
                          schema={"id": pl.String, "text": pl.String}).with_columns(
            pl.int_range(pl.len(), dtype=pl.UInt64).alias(UID))
        ctx = _spill(tmp_path / str(k), df)
        op = SubstringDedup(min_tokens=1)
        op.fit(ctx)
        op.setup(ctx)
        kept, rej, _ = run_step(op, df)
        assert kept["text"].to_list() == texts and rej is None
