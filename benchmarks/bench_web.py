"""Web-input benchmark: pages/s of each HTML extractor on the Dolma fixtures' WARC pages, and how often
Resiliparse agrees with trafilatura (DataTrove's default) on the text.

    PYTHONPATH=$PWD python benchmarks/bench_web.py [--repeat 3]

Agreement of two extractions: F1 of their word multisets (lowercased ``\\w+`` tokens); a page "agrees" at
F1 >= 0.8. Also times the other issue-12 operators on 20news (docs/s): pii_redact, decontaminate
(GSM8K index), paragraph_dedup and substring_dedup (fit + apply).
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"


def word_f1(a: str | None, b: str | None) -> float:
    wa = collections.Counter(re.findall(r"\w+", (a or "").lower()))
    wb = collections.Counter(re.findall(r"\w+", (b or "").lower()))
    if not wa and not wb:
        return 1.0
    inter = sum((wa & wb).values())
    return 2 * inter / (sum(wa.values()) + sum(wb.values()))


def bench_extract(repeat: int) -> None:
    from curate.core.operator import UID
    from curate.core.step import run_step
    from curate.filters.html_extract import HtmlExtract
    from curate.io.readers import read

    pages = pl.concat(list(read(str(DATA / "web/dolma_fixtures/warc")).iter_batches()))
    mb = pages["text"].str.len_bytes().sum() / 1e6
    texts = {}
    for ex in ("trafilatura", "resiliparse"):
        op = HtmlExtract(extractor=ex)
        best = float("inf")
        for _ in range(repeat):
            t = time.perf_counter()
            out = op.score(pages)
            best = min(best, time.perf_counter() - t)
        texts[ex] = out["__extracted"].to_list()
        kept, _, _ = run_step(op, pages)
        print(f"{ex:12s} {pages.height / best:8.1f} pages/s  {mb / best:6.2f} MB/s  "
              f"({pages.height} pages, {mb:.2f} MB HTML, kept {kept.height}, best of {repeat})")
    f1 = np.array([word_f1(a, b) for a, b in zip(texts["trafilatura"], texts["resiliparse"])])
    print(f"resiliparse vs trafilatura word-F1: median {np.median(f1):.3f}, pages >= 0.8: "
          f"{(f1 >= 0.8).sum()}/{f1.size}, >= 0.5: {(f1 >= 0.5).sum()}/{f1.size}")
    del UID


def bench_text_ops() -> None:
    from curate.core.operator import UID, FitContext
    from curate.core.step import run_step
    from curate.filters.decontaminate import Decontaminate
    from curate.filters.paragraph_dedup import ParagraphDedup
    from curate.filters.pii import PIIRedact
    from curate.filters.substring_dedup import SubstringDedup
    from curate.io.spill import SpillWriter

    df = (pl.read_ndjson(DATA / "web/20news-bydate.jsonl.gz").head(5000).select("id", "text")
          .with_columns(pl.int_range(pl.len(), dtype=pl.UInt64).alias(UID)))
    mb = df["text"].str.len_bytes().sum() / 1e6
    print(f"20news: {df.height} docs, {mb:.1f} MB")

    def timed(name: str, fn) -> None:
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        print(f"{name:34s} {df.height / dt:9.0f} docs/s  {mb / dt:6.2f} MB/s")

    timed("pii_redact", lambda: run_step(PIIRedact(), df))
    dec = Decontaminate(benchmarks=[{"name": "gsm8k", "path": str(DATA / "instructions/gsm8k/test.jsonl"),
                                     "fields": ["question", "answer"]}])
    t = time.perf_counter()
    dec._build_index()
    print(f"decontaminate index: {dec._index.size} 13-grams in {time.perf_counter() - t:.2f} s")
    timed("decontaminate (13-gram lookup)", lambda: run_step(dec, df))
    with tempfile.TemporaryDirectory() as tmp:
        w = SpillWriter(Path(tmp) / "spill" / "shard-00000")
        for s in df.iter_slices(1000):
            w.write(s)
        w.close()
        for name, op in (("paragraph_dedup bloom (fit+apply)", ParagraphDedup()),
                         ("paragraph_dedup exact (fit+apply)", ParagraphDedup(method="exact")),
                         ("substring_dedup k=50 (fit+apply)", SubstringDedup())):
            state = Path(tmp) / name.split()[0] / name.split()[1]
            state.mkdir(parents=True)
            ctx = FitContext(work_dir=Path(tmp), state_dir=state, shards=[Path(tmp) / "spill" / "shard-00000"],
                             scratch_dir=state)

            def go(op=op, ctx=ctx):
                op.fit(ctx)
                op.setup(ctx)
                run_step(op, df)
            timed(name, go)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    bench_extract(a.repeat)
    bench_text_ops()
