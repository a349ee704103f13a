"""GlobalOps.map_groups and the verified MinHash union split by component (no Ray needed): the split
gives the one-process union's clusters and counters on real data, whatever the partitioning; and a
planted case shows why the groups are components of the bucket graph, not single buckets."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import polars as pl

from curate import Pipeline, read, write
from curate.core.global_ops import GROUP, GlobalOps
from curate.executors.local import LocalExecutor
from curate.filters import _minhash_kernels as K
from curate.filters.minhash import MinHashDedup, _verify_group


def _labels(files: list[Path]) -> dict[int, int]:
    df = pl.concat([pl.read_parquet(f) for f in files])
    assert df["node"].n_unique() == df.height
    return dict(zip(df["node"].to_list(), df["label"].to_list()))


def _sequential(mmap: Path, pair_files: list[Path], threshold: float, heads: int) -> tuple[dict, int, int]:
    """The verified union as it ran before it was split: every pair file in order through one union-find
    over all candidates (the reference the split must equal)."""
    uids, off = np.load(mmap / "uids.npy"), np.load(mmap / "off.npy")
    vals = np.load(mmap / "vals.npy")
    parent, size = np.arange(len(uids), dtype=np.int64), np.ones(len(uids), dtype=np.int64)
    n_pass = n_fail = 0
    nodes: set[int] = set()
    for f in pair_files:
        pairs = pl.read_parquet(f)
        ia = np.searchsorted(uids, pairs["a"].to_numpy()).astype(np.int64)
        ib = np.searchsorted(uids, pairs["b"].to_numpy()).astype(np.int64)
        nodes |= set(ia.tolist()) | set(ib.tolist())
        ok, bad = K.verify_buckets(parent, size, ia, ib, vals, off, threshold, heads)
        n_pass, n_fail = n_pass + ok, n_fail + bad
    root = K.roots(parent)
    smallest: dict[int, int] = {}
    for x in sorted(nodes):
        smallest.setdefault(int(root[x]), int(uids[x]))
    return {int(uids[x]): smallest[int(root[x])] for x in nodes}, n_pass, n_fail


def test_verified_union_split_by_component_equals_one_process(near_dups, tmp_path):
    """Real posts and paragraphs with planted chains, verified at 0.7: the stage's result (groups = the
    bucket graph's components) and a rerun of its groups over 4 hash partitions both give the labels and
    the passed / failed counts of the sequential union over all pair files."""
    root = tmp_path / "l"
    op = MinHashDedup(threshold=0.7, verify=True)
    spec = Pipeline(read(str(near_dups / "*.jsonl"), batch_size=100), op,
                    write(str(root / "out"), format="parquet")).spec(work_dir=str(root / "work"), workers=2)
    LocalExecutor(spec).run(progress=False)
    work = root / "work"
    counters = {s["step"]: s["counters"] for s in json.loads((work / "stats.json").read_text())["steps"]}
    c = counters["minhash_dedup"]
    (mmap,) = work.rglob("minhash_mmap_*")
    (buckets,) = work.rglob("minhash_buckets_*")
    (components,) = work.rglob("minhash_components_*")
    pair_files = sorted(buckets.glob("band*.parquet"))
    want, n_pass, n_fail = _sequential(mmap, pair_files, 0.7, 16)
    assert (c["verified_pairs"], c["false_positive_pairs"]) == (n_pass, n_fail)
    assert n_pass >= 100 and n_fail > 0  # real joins and real rejections by verification
    assert c["removed"] >= 100
    (verified,) = work.rglob("minhash_verified_*")
    assert _labels(sorted(verified.glob("part-*.parquet"))) == want
    # the same groups over 4 partitions (several components per partition, a partition per call)
    fn = partial(_verify_group, str(mmap), 0.7, 16)
    files, counts = GlobalOps().map_groups(
        pair_files, key="a", labels=sorted(components.rglob("labels-*.parquet")), file_index="file",
        order=["file", "a", "b"], fn=fn, out_dir=tmp_path / "split", memory_mb=16, nrows=1 << 20)
    assert len(files) == 4
    assert _labels(files) == want
    assert counts == {"passed": n_pass, "failed": n_fail}
    assert len(set(want.values())) > 20  # many clusters: the split had something to split


def _planted_sets() -> tuple[np.ndarray, np.ndarray]:
    """Shingle sets of six docs (h=0, x1=1, x2=2, x4=3, x3=4, z=5) with, at threshold 0.5: J(h, z) =
    J(x1, z) = 0.5, J(x1, x2) = 0.67, J(x2, x3) = 0.55, every other pair below 0.5."""
    r = range
    sets = [set(r(1, 11)), set(r(100, 110)), set(r(100, 108)) | {200, 201}, set(r(500, 510)),
            {104, 105, 106, 107, 200, 201, 202}, set(r(1, 11)) | set(r(100, 110))]
    vals = np.array([v for s in sets for v in sorted(s)], dtype=np.uint64)
    off = np.concatenate([[0], np.cumsum([len(s) for s in sets])]).astype(np.int64)
    return vals, off


def test_why_groups_are_components_not_buckets():
    """Band 1 and 2 join h, z and x1; band 3's bucket is (h; x1, x2, x4, x3). With the union of the
    earlier bands x1 is already h's (no head of its own), so x2 becomes a head after its check against
    x1 passes, and x3 is checked against x2 and joins. Verified bucket by bucket from a fresh union-find
    (the naive parallel version) x1 is a head, x2 matches it and is not, and x3 is never compared with
    x2: x3 stays out. The checks a bucket makes depend on earlier unions within its component, so the
    split runs whole components in order; across components nothing is shared."""
    vals, off = _planted_sets()
    files = [([0], [5]), ([1], [5]), ([0, 0, 0, 0], [1, 2, 3, 4])]

    def arrays(a: list[int], b: list[int]) -> tuple[np.ndarray, np.ndarray]:
        return np.array(a, dtype=np.int64), np.array(b, dtype=np.int64)

    parent, size = np.arange(6, dtype=np.int64), np.ones(6, dtype=np.int64)
    for a, b in files:
        K.verify_buckets(parent, size, *arrays(a, b), vals, off, 0.5, 16)
    shared = K.roots(parent)
    assert len({shared[i] for i in (0, 1, 2, 4, 5)}) == 1 and shared[3] != shared[0]
    ea, eb = [], []
    for a, b in files:
        p, s = np.arange(6, dtype=np.int64), np.ones(6, dtype=np.int64)
        K.verify_buckets(p, s, *arrays(a, b), vals, off, 0.5, 16)
        r = K.roots(p)
        ea += [i for i in range(6) if r[i] != i]
        eb += [int(r[i]) for i in range(6) if r[i] != i]
    naive = K.union_find(6, *arrays(ea, eb))
    assert naive[4] != naive[0]  # x3 lost: bucket-by-bucket verification changes the clusters


def test_map_groups_partitions_whole_groups(tmp_path):
    """Every group reaches one call whole, sorted by the order columns, whatever the partition count."""
    rng = np.random.default_rng(0)
    f = tmp_path / "rows.parquet"
    pl.DataFrame({"g": rng.integers(0, 50, 3000).astype(np.uint64), "v": rng.permutation(3000)}).write_parquet(f)

    def fn(rows: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, int]]:
        out = rows.group_by(GROUP, maintain_order=True).agg(pl.col("v"))
        return out, {"groups": out.height, "rows": rows.height}

    for memory_mb, nparts in ((1024, 1), (16, 8)):
        files, counts = GlobalOps().map_groups([f], key="g", fn=fn, out_dir=tmp_path / f"o{memory_mb}",
                                               memory_mb=memory_mb, nrows=2 << 20, order=["v"])
        assert len(files) == nparts
        got = pl.concat([pl.read_parquet(x) for x in files]).sort(GROUP)
        assert counts == {"groups": 50, "rows": 3000}
        assert got.height == 50
        for g, v in zip(got[GROUP].to_list(), got["v"].to_list()):
            assert v == sorted(v) and len(v) == int((pl.read_parquet(f)["g"] == g).sum())
