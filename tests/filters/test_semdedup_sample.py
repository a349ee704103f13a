"""SemDeDup's k-means from the training rows alone (faiss's own subsample, gathered per shard) and its
per-shard assignment, against the full-matrix path they replace (today's code written out: all vectors
in one matrix, ``faiss.Kmeans.train`` on it, ``km.index.search``), on real text: every MRPC sentence
(paraphrase pairs, repeats across pairs) plus exact copies, embedded with model2vec (MiniLM's static
distillation), with n > 256 x k so faiss really subsamples."""

from __future__ import annotations

import csv
import json
import tracemalloc
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from curate import Pipeline, read, read_output, write
from curate.core.operator import UID, FitContext
from curate.filters.semdedup import (
    DEFAULT_REPORT_EPS,
    MAX_POINTS_PER_CENTROID,
    SemDeDup,
    cluster_max_sim,
    cluster_order,
    faiss_training_rows,
    order_key,
)
from curate.io.spill import SpillWriter
from curate.models.sentence import EMBEDDING_COLUMN, embeddings_to_numpy, l2_normalize

faiss = pytest.importorskip("faiss", reason="the embed extra is not installed (pip install 'curate-llm[embed]')")


def _faiss_perm(n: int, seed: int) -> np.ndarray:
    """faiss's own ``rand_perm`` (the permutation ``subsample_training_set`` takes its rows from)."""
    p = np.empty(n, np.int32)
    faiss.rand_perm(faiss.swig_ptr(p), n, seed)
    return p


@pytest.mark.parametrize(("n", "k", "seed"), [(1025, 4, 1234), (70_001, 7, 0), (600, 2, 2**31 - 1),
                                              (5000, 19, 99)])
def test_training_rows_are_faiss_subsample(n, k, seed):
    assert np.array_equal(faiss_training_rows(n, k, seed), _faiss_perm(n, seed)[:k * MAX_POINTS_PER_CENTROID])


def test_training_rows_none_when_faiss_takes_all_rows():
    assert faiss_training_rows(1024, 4, 1234) is None  # n == 256 k: faiss does not subsample
    assert faiss_training_rows(10_000, 1, 1234) is None  # one cluster: the mean of every row
    assert faiss_training_rows(300, 500, 1234) is None  # k is capped at n


def _full_matrix_kmeans(x: np.ndarray, k: int, seed: int):
    """The stage's k-means before this change, verbatim: faiss on the whole normalised matrix."""
    xn = l2_normalize(np.ascontiguousarray(x, dtype=np.float32))
    if k <= 1:  # one cluster: its mean, no faiss
        c = xn.mean(axis=0, keepdims=True)
        labels = np.zeros(len(xn), np.int64)
        return xn, c, labels, (1.0 - np.einsum("ij,ij->i", xn, l2_normalize(c)[labels])).astype(np.float32)
    km = faiss.Kmeans(xn.shape[1], int(min(k, len(xn))), niter=100, seed=seed, spherical=True, gpu=False,
                      verbose=False)
    km.train(xn)
    _, idx = km.index.search(xn, 1)
    labels = idx[:, 0].astype(np.int64)
    dist = (1.0 - np.einsum("ij,ij->i", xn, l2_normalize(km.centroids)[labels])).astype(np.float32)
    return xn, km.centroids.copy(), labels, dist


def _mrpc(shared_data: Path) -> list[str]:
    texts = []
    with open(shared_data / "paraphrase/msr_paraphrase_train.txt", encoding="utf-8-sig") as f:
        for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if r and r[0] in ("0", "1"):
                texts += [r[3], r[4]]
    return texts + texts[:300:10]  # 30 exact copies of earlier sentences


@pytest.fixture(scope="module")
def corpus(shared_data, tmp_path_factory):
    """~8,200 sentences in three input files (three shards, contiguous: input position = id order)."""
    pytest.importorskip("model2vec")
    root = tmp_path_factory.mktemp("semdedup_sample")
    texts = _mrpc(shared_data)
    src = root / "in"
    src.mkdir()
    third = -(-len(texts) // 3)
    for part in range(3):
        rows = range(part * third, min(len(texts), (part + 1) * third))
        (src / f"part{part}.jsonl").write_text("".join(json.dumps({"id": f"d{i:05d}", "text": texts[i]}) + "\n"
                                                       for i in rows))
    return root, src, texts


def _vectors(stage_dir: Path) -> pl.DataFrame:
    """The fit's per-shard embedding files in shard order (uid, id, embedding)."""
    return pl.concat([pl.read_parquet(f) for f in sorted((stage_dir / "scratch/embeddings").glob("*.parquet"))])


@pytest.mark.parametrize(("k", "which"), [(4, "hard"), (9, "random"), (1, "easy")])
def test_pipeline_equals_full_matrix_path(corpus, tmp_path, k, which):
    """Labels, centroid distances, keep-order keys and positions, kept set, rejects and eps report of the
    sampled, per-shard path equal the full-matrix path's; the centroids are bit-identical (k > 1: the same
    training rows in the same order; k = 1: the mean, a float64 running sum instead of numpy's float32)."""
    _, src, texts = corpus
    n = len(texts)
    assert n > MAX_POINTS_PER_CENTROID * max(k, 1) * 3  # faiss really subsamples (k > 1)
    Pipeline(read(str(src / "*.jsonl")),
             SemDeDup(eps=0.1, n_clusters=k, which_to_keep=which, backend="model2vec", seed=1234),
             write(str(tmp_path / "out"), format="parquet")).run(work_dir=str(tmp_path / "w"), workers=1,
                                                                 progress=False)
    (stage,) = (tmp_path / "w/stages").glob("*")
    vec = _vectors(stage)
    assert vec.height == n and vec[UID].is_sorted() and vec[UID].n_unique() == n  # shard order = input order
    x, cents, labels, dist = _full_matrix_kmeans(embeddings_to_numpy(vec[EMBEDDING_COLUMN]), k, 1234)
    got = np.load(stage / "state/centroids.npy")
    if k > 1:
        assert np.array_equal(got, cents)  # bit-identical centroids from the 256 k training rows
    else:
        np.testing.assert_allclose(got, cents, rtol=0, atol=1e-6)
    lab = pl.concat([pl.read_parquet(f) for f in sorted((stage / "scratch/semdedup_clusters").glob("*.parquet"))])
    assert lab.columns == ["node", "label", "okey", "pos"]
    lab = lab.sort("pos")
    assert lab["pos"].to_list() == list(range(n))
    assert lab["node"].to_list() == vec[UID].to_list()
    assert np.array_equal(lab["label"].to_numpy(), labels)
    ref_key = order_key(dist, which=which, seed=1234)
    if which == "random":
        assert np.array_equal(lab["okey"].to_numpy(), ref_key)
    else:
        np.testing.assert_allclose(lab["okey"].to_numpy(), ref_key, rtol=0, atol=1e-6)
    # the decisions of the full-matrix path (the vector core's per-cluster search, in its keep order)
    order = cluster_order(labels, dist, which=which, seed=1234)
    max_sim = np.full(n, np.nan, np.float32)
    for members in np.split(order, np.flatnonzero(np.diff(labels[order])) + 1):
        best, _ = cluster_max_sim(x[members])
        max_sim[members] = best
    m = np.nan_to_num(max_sim.astype(np.float64), nan=-np.inf)
    ids = vec["id"].to_numpy()
    kept = read_output(str(tmp_path / "out"))
    rej = pl.concat([pl.read_ndjson(p) for p in sorted((tmp_path / "w/rejects/semdedup").glob("*.jsonl"))])
    assert kept.height + rej.height == n
    assert set(rej["id"].to_list()) == set(ids[m > 1.0 - 0.1].tolist())
    assert rej.height >= 30  # the exact copies at least
    report = json.loads((stage / "state/eps_report.json").read_text())
    eps_list = sorted(set(DEFAULT_REPORT_EPS) | {0.1})
    assert report["documents"] == n and report["n_clusters"] == k
    assert [r["eps"] for r in report["kept"]] == eps_list
    assert [r["kept"] for r in report["kept"]] == [int((m <= 1.0 - e).sum()) for e in eps_list]


def test_driver_holds_only_training_rows(corpus, tmp_path):
    """The k-means part of the fit on the driver (column path, per-shard work in two worker processes):
    its numpy peak stays near the 512 training rows, far below the 8,200-row matrix the old path built,
    and its centroids are the full-matrix ones, bit for bit."""
    root, src, texts = corpus
    Pipeline(read(str(src / "*.jsonl")), SemDeDup(eps=0.1, n_clusters=2, backend="model2vec"),
             write(str(tmp_path / "o0"), format="parquet")).run(work_dir=str(tmp_path / "w0"), workers=1,
                                                                progress=False)
    (stage,) = (tmp_path / "w0/stages").glob("*")
    vec = _vectors(stage)  # real model2vec vectors, spilled as an embedding column of five shards
    shards = []
    for i, part in enumerate(vec.with_columns(pl.col("id").alias("text")).iter_slices(-(-vec.height // 5))):
        w = SpillWriter(tmp_path / "spill" / f"shard-{i:05d}")
        for s in part.iter_slices(700):
            w.write(s)
        w.close()
        shards.append(tmp_path / "spill" / f"shard-{i:05d}")
    (tmp_path / "state").mkdir()
    ctx = FitContext(work_dir=tmp_path, state_dir=tmp_path / "state", workers=2, shards=shards,
                     scratch_dir=tmp_path / "scratch")
    stage_op = SemDeDup(eps=0.1, n_clusters=2)
    n, d = vec.height, 256
    import pyarrow.parquet  # noqa: F401 - imported before measuring

    tracemalloc.start()
    try:
        vector_dir, files = stage_op._vector_files(ctx)
        counts = [pl.scan_parquet(f).select(pl.len()).collect().item() for f in files]
        tracemalloc.reset_peak()
        cents = stage_op._centroids(ctx, vector_dir, files, counts, 2)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert vector_dir.name == "semdedup_vectors" and len(files) == 5 and sum(counts) == n
    sample_bytes = 2 * MAX_POINTS_PER_CENTROID * d * 4
    full_bytes = n * d * 4
    assert full_bytes > 15 * sample_bytes
    assert peak < 3 * sample_bytes, (peak, sample_bytes, full_bytes)
    _, ref, _, _ = _full_matrix_kmeans(embeddings_to_numpy(vec[EMBEDDING_COLUMN]), 2, 1234)
    assert np.array_equal(cents, ref)
