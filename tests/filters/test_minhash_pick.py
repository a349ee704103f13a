"""MinHash's keep step as a group step (issue 14 item 2): the state parts that the fit's groups write
(``ctx.global_ops.map_groups`` of the candidates by cluster label, ``_pick_group``) equal, every column and
every row, what the one-process keep step on the driver gave (``_old_cluster`` below: that code as it was,
on the same candidates and labels), for every ``keep`` rule, with and without verification, locally with
the clusters split over several hash partitions and on a local Ray instance (2 CPUs, 3 partitions). Real
text: book paragraphs with near copies, chains of copies and exact copies, so there are many clusters."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from curate.core.global_ops import GlobalOps
from curate.core.operator import UID, FitContext
from curate.core.stats import StepNumbers
from curate.filters import _minhash_kernels as K
from curate.filters.minhash import _STATE, MinHashDedup, _Cands, _spill_candidates
from curate.io.spill import SpillWriter

KEEPS = ("earliest", "longest", "score")


def _old_cluster(c: _Cands, s: dict, stats: dict, *, labels: pl.DataFrame) -> pl.DataFrame:
    """The keep step as it ran on the driver before it became a group step (minhash.py's ``_cluster`` at
    a78ffec, unchanged): every candidate's label read at once, one lexsort over all of them."""
    cands = c.meta
    uids = cands[UID].to_numpy()
    sig, off, vals = c.sig, c.off, c.vals
    verify = bool(s["verify"])
    lab = cands.select(UID).join(labels.rename({"node": UID}), on=UID, how="left", maintain_order="left")
    if lab["label"].null_count():
        raise ValueError("connected components left a candidate document without a label")
    root = np.searchsorted(uids, lab["label"].to_numpy()).astype(np.int64)
    n = len(uids)
    if s["keep"] == "earliest":
        primary = np.zeros(n)
    elif s["keep"] == "longest":
        primary = -cands["length"].to_numpy().astype(np.float64)
    else:
        sc = cands["score"].to_numpy().astype(np.float64)
        primary = np.where(np.isnan(sc), np.inf, -sc)
    order = np.lexsort((uids, primary, root))
    first = np.ones(n, dtype=bool)
    first[1:] = root[order][1:] != root[order][:-1]
    kept_of_root = np.empty(n, dtype=np.int64)
    kept_of_root[root[order][first]] = order[first]
    size = np.bincount(root, minlength=n)
    in_cluster = size[root] > 1
    kept = kept_of_root[root]
    removed = in_cluster & (kept != np.arange(n))
    node = np.nonzero(in_cluster)[0]
    rem = np.nonzero(removed)[0]
    e2, x2 = K.pair_jaccards(rem, kept[rem], sig, vals, off, verify)
    kept_id = cands["id"].gather(kept[node])
    j_est = np.full(n, np.nan)
    j_est[rem] = e2
    j_ex = np.full(n, np.nan)
    j_ex[rem] = x2
    stats["clusters"] = int(in_cluster.sum() - removed.sum())
    stats["removed"] = int(removed.sum())
    return pl.DataFrame({
        UID: pl.Series(uids[node], dtype=pl.UInt64),
        "dup_cluster_id": pl.Series(uids[kept[node]], dtype=pl.UInt64),
        "dup_of": pl.select(pl.when(pl.Series(removed[node])).then(kept_id)).to_series(),
        "dup_jaccard_est": pl.Series(j_est[node], dtype=pl.Float64).fill_nan(None),
        "dup_jaccard": pl.Series(j_ex[node], dtype=pl.Float64).fill_nan(None),
    })


@pytest.fixture(scope="module")
def corpus(shared_data) -> pl.DataFrame:
    """~1,700 documents: Gutenberg paragraphs (>= 30 words), near copies (0-3% of words replaced) of
    them and of earlier copies (chains), exact copies (equal lengths: ties for ``longest``), a few short
    texts; a score ``q`` with ties, nulls and NaN (the ``score`` rule's tie-breaks)."""
    rng = random.Random(7)
    paras: list[str] = []
    with gzip.open(shared_data / "books" / "gutenberg_slice.jsonl.gz", "rt") as fh:
        for line in fh:
            body = json.loads(line)["text"].replace("\r\n", "\n")
            paras += [p.replace("\n", " ") for p in body.split("\n\n")[40:300] if len(p.split()) >= 30]
            if len(paras) > 3000:
                break
    texts = rng.sample(paras, 900)
    for _ in range(700):
        w = rng.choice(texts).split()
        if rng.random() < 0.2:  # an exact copy
            texts.append(" ".join(w))
            continue
        for _ in range(int(len(w) * rng.uniform(0.0, 0.03))):
            w[rng.randrange(len(w))] = rng.choice(["alpha", "beta", "gamma", "the", "and"])
        texts.append(" ".join(w))
    texts += ["a short one", "a short one", "tiny"]
    rng.shuffle(texts)
    q = [rng.choice([0.1, 0.2, 0.3, 0.5, None, float("nan")]) for _ in texts]
    return pl.DataFrame({"id": [f"doc-{i}" for i in range(len(texts))], "text": texts,
                         "q": pl.Series(q, dtype=pl.Float64)})


def _context(tmp: Path, df: pl.DataFrame, ops: GlobalOps) -> FitContext:
    """Three spilled shards (row keys 7i + 2 interleaved across them: not all in one residue of the 3 or
    5 hash partitions below) and ``ops``."""
    shards = []
    for i in range(3):
        part = df.with_columns(pl.Series(UID, np.arange(df.height) * 7 + 2, dtype=pl.UInt64))[i::3]
        w = SpillWriter(tmp / "spill" / f"shard-{i:05d}")
        w.write(part)
        w.close()
        shards.append(tmp / "spill" / f"shard-{i:05d}")
    (tmp / "state").mkdir(parents=True, exist_ok=True)
    return FitContext(work_dir=tmp, state_dir=tmp / "state", shards=shards, scratch_dir=tmp / "scratch",
                      _global_ops=ops)


def _check_against_old(ctx: FitContext, op: MinHashDedup, tmp: Path, df: pl.DataFrame) -> int:
    """The fit's state parts and counters against ``_old_cluster`` on the fit's own candidates and labels;
    also the joined batch ``apply`` gives. Returns the number of state part files."""
    s = op.settings()
    key = op._cfg(s).key()
    cand_files = sorted((ctx.scratch_dir / f"minhash_cand_{key}_{int(s['verify'])}").glob("*.parquet"))
    label_dir = ctx.scratch_dir / (f"minhash_verified_{key}" if s["verify"] else f"minhash_components_{key}")
    label_files = sorted(label_dir.rglob("part-*.parquet" if s["verify"] else "labels-*.parquet"))
    assert cand_files and label_files
    cands = _spill_candidates(cand_files, int(s["num_perm"]), bool(s["verify"]), tmp / f"ref_mm_{s['keep']}")
    stats: dict[str, int] = {}
    want = _old_cluster(cands, s, stats, labels=pl.read_parquet(label_files))
    parts = sorted((ctx.state_dir / _STATE).glob("*.parquet"))
    got = pl.read_parquet(parts).sort(UID)
    assert_frame_equal(got, want, check_exact=True)
    counters = ctx.numbers.counters
    assert (counters["clusters"], counters["removed"]) == (stats["clusters"], stats["removed"])
    assert stats["clusters"] >= 150 and stats["removed"] >= 300  # many real clusters were compared
    if s["keep"] != "earliest":  # the rule decided: some cluster keeps a document other than its first
        firsts = want.group_by("dup_cluster_id").agg(pl.col(UID).min().alias("first"))
        assert (firsts["dup_cluster_id"] != firsts["first"]).sum() >= 20
    op.setup(ctx)
    batch = df.with_columns(pl.Series(UID, np.arange(df.height) * 7 + 2, dtype=pl.UInt64))
    assert_frame_equal(op.apply(batch), batch.join(want, on=UID, how="left", maintain_order="left"))
    return len(parts)


class _Split(GlobalOps):
    """The local global steps with ``map_groups`` over 5 hash partitions (as for candidates 5x
    ``bucket_memory_mb``): the clusters are spread over several partitions, one at a time in memory."""

    def map_groups(self, files, **kw):  # noqa: ANN001, ANN003, ANN201 - GlobalOps.map_groups's signature
        kw["memory_mb"], kw["nrows"] = 16, 5 * (16 << 20) // 64
        return super().map_groups(files, **kw)


def _fit_all_keeps(tmp: Path, df: pl.DataFrame, ops: GlobalOps, verify: bool) -> list[int]:
    ctx = _context(tmp, df, ops)
    nparts = []
    for keep in KEEPS:  # one context: signatures reused, the state folder replaced by each fit
        ctx.numbers = StepNumbers()
        op = MinHashDedup(threshold=0.7, verify=verify, keep=keep, score_column="q" if keep == "score" else None)
        op.fit(ctx)
        nparts.append(_check_against_old(ctx, op, tmp, df))
    return nparts


@pytest.mark.parametrize("verify", [True, False])
def test_keep_step_in_partitions_equals_driver_keep_step(corpus, tmp_path, verify):
    nparts = _fit_all_keeps(tmp_path, corpus, _Split(), verify)
    assert min(nparts) >= 3  # the clusters really were split over partitions


def test_keep_step_with_no_candidates_leaves_an_empty_state(tmp_path, shared_data):
    """No bucket pairs (distinct texts): one empty state part, which replaces an earlier fit's parts."""
    with gzip.open(shared_data / "books" / "gutenberg_slice.jsonl.gz", "rt") as fh:
        body = json.loads(next(fh))["text"].replace("\r\n", "\n")
    paras = [p.replace("\n", " ") for p in body.split("\n\n") if len(p.split()) >= 30][:40]
    df = pl.DataFrame({"id": [f"p{i}" for i in range(len(paras))], "text": paras})
    ctx = _context(tmp_path, df, GlobalOps())
    stale = ctx.state_dir / _STATE / "part-0003.parquet"
    stale.parent.mkdir(parents=True)
    pl.DataFrame({UID: [1]}, schema={UID: pl.UInt64}).write_parquet(stale)
    op = MinHashDedup(threshold=0.8)
    op.fit(ctx)
    assert ctx.numbers.counters["bucket_pairs"] == 0
    assert [p.name for p in (ctx.state_dir / _STATE).iterdir()] == ["part-empty.parquet"]
    op.setup(ctx)
    batch = df.with_columns(pl.Series(UID, np.arange(df.height) * 7 + 2, dtype=pl.UInt64))
    out = op.apply(batch)
    assert out.height == df.height and out["dup_of"].null_count() == df.height


def test_keep_step_on_ray_equals_driver_keep_step(corpus, tmp_path, local_ray):
    """The keep step's groups in Ray tasks (a hash join of the candidates with their labels, a shuffle
    by cluster), reading the memory maps from the scratch dir in the workers: the same state. With
    verification only (the default at this threshold): without it the keep step is the same code, run
    locally in partitions by the test above, and each Ray case costs a minute of the suite."""
    from curate.executors.ray_global import RayGlobalOps

    nparts = _fit_all_keeps(tmp_path, corpus, RayGlobalOps(lambda: local_ray, partitions=3), True)
    assert min(nparts) >= 2
