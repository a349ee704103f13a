"""The four rule filters in one process, old path and new path interleaved (A B A B: a shared machine's
load hits both alike): A = C4's polars definition (``C4Quality._score_polars``) and rule expressions
rebuilt every batch, as before issue 18's second round; B = today's C4 kernel and cached rule expressions.
Same batches (1,250 documents, as the runner's) under the shared token cache; kept rows and rejects of
the two are checked equal. CPU seconds of this process (``time.process_time``), best of ``--rounds``.

    POLARS_MAX_THREADS=1 PYTHONPATH=$PWD python benchmarks/bench_filter_chain_ab.py [--docs 20000] [--rounds 3]
"""
import argparse
import sys
import time
from pathlib import Path

import polars as pl
from polars.testing import assert_frame_equal

from curate.core import step
from curate.core.batch_cache import batch_scope
from curate.core.operator import UID
from curate.core.step import run_step
from curate.filters.c4 import C4Quality, FineWebQuality
from curate.filters.gopher import GopherQuality, GopherRepetition

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _corpus import real_documents  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--docs", type=int, default=20_000)
ap.add_argument("--rounds", type=int, default=3)
a = ap.parse_args()
df = pl.DataFrame(real_documents(a.docs)).select("id", "text")
df = df.with_columns(pl.int_range(pl.len(), dtype=pl.UInt64).alias(UID))


class C4Old(C4Quality):
    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        return self._score_polars(batch)


def chain(old: bool) -> tuple[pl.DataFrame, pl.DataFrame]:
    ops = [GopherRepetition(), GopherQuality(), C4Old() if old else C4Quality(), FineWebQuality()]
    kept, rej = [], []
    for b in df.iter_slices(1250):
        if old:
            step._EXPRS.clear()
        with batch_scope():
            for op in ops:
                b, r, _ = run_step(op, b)
                if r is not None:
                    rej.append(r)
        kept.append(b)
    return pl.concat(kept), pl.concat(rej, how="diagonal_relaxed")


chain(False)
chain(True)  # warm-up: numba's cache loaded, the class table filled
ta, tb = [], []
for i in range(a.rounds):
    for old, acc in ((True, ta), (False, tb)):
        c = time.process_time()
        k, r = chain(old)
        acc.append(time.process_time() - c)
        if old:
            ka, ra = k, r
        else:
            kb, rb = k, r
    print(f"round {i}: before {ta[-1]:.2f} CPU-s, now {tb[-1]:.2f} CPU-s", flush=True)
assert_frame_equal(ka, kb)
assert_frame_equal(ra, rb)
n = df.height
print(f"best: before {min(ta):.2f}, now {min(tb):.2f} CPU-s per {n:,} docs: {n / min(ta):,.0f} -> {n / min(tb):,.0f} "
      f"docs per CPU-s; kept {kb.height:,}, rejected {rb.height:,} (equal on both paths)")
