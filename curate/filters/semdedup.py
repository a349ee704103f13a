"""SemDeDup (Abbas et al. 2023): semantic deduplication by k-means + within-cluster cosine pruning.

The vector core (:func:`semdedup_vectors`, :func:`earlier_max_sim`, :func:`kept_fraction`) works on numpy
arrays so it can be tested and reused without a pipeline; :class:`SemDeDup` wraps it as a global stage.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import Field, field_validator

from curate.core.global_ops import GROUP, LABEL, NODE
from curate.core.operator import PATH_MODEL, UID, Column, FitContext, GlobalStage, OpParams, Rule, RunContext
from curate.core.registry import register
from curate.filters.embed import cache_root
from curate.models.sentence import (
    DEFAULT_MODEL,
    DEFAULT_PCA_DIMS,
    EMBEDDING_COLUMN,
    Backend,
    Embedder,
    EmbedSpec,
    embeddings_to_numpy,
    l2_normalize,
)

log = logging.getLogger(__name__)

Keep = Literal["hard", "easy", "random"]
DEFAULT_REPORT_EPS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)
#: rows per parquet row group of the per-shard vector files (curate: 16,384, 24 MiB of 384-d float32), the
#: unit the training-row gather and the per-shard assignment read
VECTOR_ROW_GROUP = 16_384


def default_n_clusters(n: int) -> int:
    """round(sqrt(n)), at most n // 39 (faiss wants >= 39 points per centroid) and 50 000, at least 1.

    sqrt scaling gives NeMo Curator's default of 1000 clusters at 1M documents and ~21k at LAION-440M
    (SemDeDup used 50k there); small corpora get few, large clusters, so paraphrases share a cluster.
    """
    return int(max(1, min(round(math.sqrt(n)), n // 39, 50_000)))


def _faiss_gpu(device: str) -> bool:
    if not device.startswith("cuda"):
        return False
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


#: faiss ``ClusteringParameters.max_points_per_centroid`` (faiss's default, set explicitly): k-means trains on
#: at most this many points per centroid, a seeded subsample of the input (:func:`faiss_training_rows`).
MAX_POINTS_PER_CENTROID = 256


def _kmeans(d: int, k: int, *, niter: int, seed: int, spherical: bool, device: str) -> Any:
    """A ``faiss.Kmeans`` with the subsampling pinned to what :func:`faiss_training_rows` reproduces
    (``max_points_per_centroid`` 256, the ``rand_perm`` sampler, plain Lloyd iterations): faiss's defaults,
    stated so a faiss whose defaults move cannot make the sampled path differ from the full-matrix one."""
    import faiss

    extra = {}
    cp = faiss.ClusteringParameters()
    for name, value in (("use_faster_subsampling", False), ("use_super_kmeans", False)):
        if hasattr(cp, name):
            extra[name] = value
    return faiss.Kmeans(d, k, niter=niter, seed=seed, spherical=spherical, gpu=_faiss_gpu(device),
                        verbose=False, max_points_per_centroid=MAX_POINTS_PER_CENTROID, **extra)


def kmeans_centroids(x: np.ndarray, n_clusters: int, *, niter: int = 100, seed: int = 1234,
                     spherical: bool = True, device: str = "cpu") -> np.ndarray:
    """faiss k-means centroids of the (L2-normalised) rows of ``x`` (``min(n_clusters, n)`` of them); the
    mean row when ``n_clusters <= 1`` or ``n < 2``. Given only the rows :func:`faiss_training_rows`
    names (in that order) it returns the same centroids, bit for bit, as given all rows."""
    n, d = x.shape
    if n_clusters <= 1 or n < 2:
        return x.mean(axis=0, keepdims=True)
    km = _kmeans(d, int(min(n_clusters, n)), niter=niter, seed=seed, spherical=spherical, device=device)
    km.train(np.ascontiguousarray(x, dtype=np.float32))
    return km.centroids.copy()


def centroid_index(centroids: np.ndarray, *, spherical: bool = True, device: str = "cpu") -> Any:
    """The faiss flat index k-means assigns with (inner product for spherical k-means, L2 otherwise; on
    GPU when available), holding ``centroids``."""
    import faiss

    c = np.ascontiguousarray(centroids, dtype=np.float32)
    index = faiss.IndexFlatIP(c.shape[1]) if spherical else faiss.IndexFlatL2(c.shape[1])
    if _faiss_gpu(device):
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(c)
    return index


def assign_nearest(x: np.ndarray, centroids: np.ndarray, index: Any = None, *, spherical: bool = True,
                   device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(label int64, ``1 - cos(x, c)`` float32) of each (normalised) row of ``x``: its nearest centroid
    (``index``: :func:`centroid_index` of ``centroids``, built when None), and the cosine distance to it
    as in SemDeDup's ``sort_clusters.py``. Row by row, so per-shard calls give today's whole-matrix
    values (up to float rounding of the search)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if len(centroids) == 1 or len(x) == 0:
        labels = np.zeros(len(x), dtype=np.int64)
    else:
        if index is None:
            index = centroid_index(centroids, spherical=spherical, device=device)
        _, idx = index.search(x, 1)
        labels = idx[:, 0].astype(np.int64)
    cn = l2_normalize(np.asarray(centroids, dtype=np.float32))
    dist = 1.0 - np.einsum("ij,ij->i", x, cn[labels])
    return labels, dist.astype(np.float32)


def kmeans_assign(x: np.ndarray, n_clusters: int, *, niter: int = 100, seed: int = 1234,
                  spherical: bool = True,
                  device: str = "cpu") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """faiss k-means on the (L2-normalised) rows of ``x``, all in memory (the vector core's path).

    Returns (labels int64, cosine distance to the assigned centroid float32, centroids). Assignment is
    the nearest centroid (by inner product for spherical k-means, L2 otherwise); the distance is
    ``1 - cos(x, c)`` as in SemDeDup's ``sort_clusters.py``. :class:`SemDeDup` computes the same
    without holding ``x``: :func:`faiss_training_rows`, :func:`kmeans_centroids`, then
    :func:`assign_nearest` per shard.
    """
    c = kmeans_centroids(x, n_clusters, niter=niter, seed=seed, spherical=spherical, device=device)
    labels, dist = assign_nearest(x, c, spherical=spherical, device=device)
    return labels, dist, c


def faiss_training_rows(n: int, n_clusters: int, seed: int = 1234) -> np.ndarray | None:
    """The rows (positions, in order) faiss's k-means trains on when clustering ``n`` rows into
    ``n_clusters``, or None when it trains on all of them.

    faiss (``Clustering::train_encoded``) subsamples when ``n > k * max_points_per_centroid`` (k =
    ``min(n_clusters, n)``): ``subsample_training_set`` takes the first ``k * 256`` entries of
    ``rand_perm(n, seed)``, a forward Fisher-Yates shuffle whose step i swaps position i with
    ``i + mt() % (n - i)``, ``mt`` a ``std::mt19937`` seeded with ``(unsigned) seed``. Step i fixes
    position i, so the first m entries need only m steps: numpy's legacy ``RandomState(seed)`` is the same
    MT19937 (``init_genrand``), and the swaps are kept in a dict of the positions they touched, O(m)
    memory. Training on exactly these rows gives the centroids training on all rows gives (faiss sees
    ``m = k * 256`` rows and does not subsample again; its initialisation draws from those m). A negative
    ``seed`` makes faiss seed from the clock: then any uniform sample is as faithful, and a fresh one is
    drawn."""
    k = min(max(int(n_clusters), 1), n)
    m = k * MAX_POINTS_PER_CENTROID
    if n <= m or n_clusters <= 1:
        return None
    if n > np.iinfo(np.int32).max:
        raise ValueError(f"{n:,} rows: faiss's standard subsampling takes at most 2**31 - 1")
    if seed < 0:
        return np.random.default_rng().choice(n, size=m, replace=False).astype(np.int64)
    raw = np.random.RandomState(seed & 0xFFFFFFFF)._bit_generator.random_raw(m).astype(np.uint64)
    steps = np.arange(m, dtype=np.uint64)
    targets = (steps + raw % (np.uint64(n) - steps)).tolist()
    moved: dict[int, int] = {}
    out = []
    for i, j in zip(range(m), targets):
        at_i = moved.get(i, i)
        out.append(moved.get(j, j))
        moved[j] = at_i
    return np.asarray(out, dtype=np.int64)


def cluster_order(labels: np.ndarray, dist: np.ndarray, *, which: Keep = "hard",
                  seed: int = 1234) -> np.ndarray:
    """Row indices grouped by cluster and, within a cluster, in SemDeDup's keep order.

    ``hard``: descending distance to the centroid (least prototypical first, so kept); ``easy``: ascending;
    ``random``: a seeded permutation. Ties keep input order (Python's stable ``sorted`` in the reference).
    """
    return np.lexsort((np.arange(len(labels)), order_key(dist, which=which, seed=seed), labels))


def _block_max(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each column j of q qᵀ, the max over rows i < j and its argmax (-inf / -1 for j = 0)."""
    s = q @ q.T
    s[np.tri(len(q), dtype=bool)] = -np.inf  # i >= j
    arg = s.argmax(axis=0)
    best = s[arg, np.arange(len(q))]
    arg[0] = -1
    return best, arg


def earlier_max_sim(x: np.ndarray, *, batch_size: int = 1024, faiss_min: int = 4096,
                    device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """M_j = max_{i<j} x_i·x_j and its argmax i, for rows of ``x`` in keep order (one cluster).

    Clusters of fewer than ``faiss_min`` rows: one exact ``x xᵀ`` (SemDeDup's ``triu`` + column max).
    Larger: blocks of ``batch_size`` rows; each block is searched (k=1) in a faiss flat inner-product
    index holding all earlier blocks (exact, on GPU when available), plus the within-block triangle.
    Row 0 gets M = -inf and argmax -1. Ties go to the earliest i.
    """
    n = len(x)
    if n == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    if n < faiss_min:
        best, arg = _block_max(x)
        return best.astype(np.float32), arg.astype(np.int64)
    import faiss

    index = faiss.IndexFlatIP(x.shape[1])
    if _faiss_gpu(device):
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    best = np.empty(n, np.float32)
    arg = np.empty(n, np.int64)
    for s in range(0, n, batch_size):
        q = np.ascontiguousarray(x[s:s + batch_size])
        b, a = _block_max(q)
        a = np.where(a >= 0, a + s, -1)
        if s > 0:
            dprev, iprev = index.search(q, 1)
            earlier = dprev[:, 0] >= b  # ties go to the earlier block
            b = np.where(earlier, dprev[:, 0], b)
            a = np.where(earlier, iprev[:, 0], a)
        best[s:s + len(q)] = b
        arg[s:s + len(q)] = a
        index.add(q)
    return best, arg


@dataclass
class SemDedupResult:
    """Per input row: cluster, max cosine to an earlier item in keep order (NaN for the first), that item."""

    cluster: np.ndarray  # int64
    max_sim: np.ndarray  # float32, NaN where no earlier item
    nearest: np.ndarray  # int64 row index of the earlier item with max_sim, -1 where none
    dist: np.ndarray  # cosine distance to centroid
    centroids: np.ndarray

    def removed(self, eps: float) -> np.ndarray:
        """SemDeDup's rule: drop j iff M_j > 1 - eps."""
        with np.errstate(invalid="ignore"):
            return np.nan_to_num(self.max_sim.astype(np.float64), nan=-np.inf) > 1.0 - eps


def semdedup_vectors(x: np.ndarray, *, n_clusters: int | None = None, which: Keep = "hard", niter: int = 100,
                     seed: int = 1234, spherical: bool = True, batch_size: int = 1024, faiss_min: int = 4096,
                     device: str = "cpu", normalize: bool = True) -> SemDedupResult:
    """SemDeDup on raw vectors: normalise, cluster, order each cluster, within-cluster max similarity."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if normalize:
        x = l2_normalize(x)
    n = len(x)
    k = default_n_clusters(n) if n_clusters is None else n_clusters
    labels, dist, cents = kmeans_assign(x, k, niter=niter, seed=seed, spherical=spherical, device=device)
    order = cluster_order(labels, dist, which=which, seed=seed)
    max_sim = np.full(n, np.nan, np.float32)
    nearest = np.full(n, -1, np.int64)
    sorted_labels = labels[order]
    bounds = np.flatnonzero(np.diff(sorted_labels)) + 1
    for members in np.split(order, bounds):
        best, arg = cluster_max_sim(x[members], batch_size=batch_size, faiss_min=faiss_min, device=device)
        ok = arg >= 0
        max_sim[members[ok]] = best[ok]
        nearest[members[ok]] = members[arg[ok]]
    return SemDedupResult(labels, max_sim, nearest, dist, cents)


def cluster_max_sim(x: np.ndarray, *, batch_size: int = 1024, faiss_min: int = 4096,
                    device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """One cluster's rows (normalised, in keep order) -> (max cosine to an earlier row, NaN for the first;
    its row, -1 where none): :func:`earlier_max_sim`, nothing to compare in a cluster of one."""
    best = np.full(len(x), np.nan, np.float32)
    arg = np.full(len(x), -1, np.int64)
    if len(x) >= 2:
        b, a = earlier_max_sim(x, batch_size=batch_size, faiss_min=faiss_min, device=device)
        ok = a >= 0
        best[ok], arg[ok] = b[ok], a[ok]
    return best, arg


def order_key(dist: np.ndarray, *, which: Keep, seed: int) -> np.ndarray:
    """The within-cluster sort key of :func:`cluster_order` (ties: input position)."""
    if which == "hard":
        return -dist.astype(np.float64)
    if which == "easy":
        return dist.astype(np.float64)
    return np.random.default_rng(seed).permutation(len(dist)).astype(np.float64)


def kept_fraction(max_sim: np.ndarray, eps_list) -> list[tuple[float, float]]:
    """(eps, fraction kept) for each eps: kept iff M_j <= 1 - eps (or no earlier item)."""
    m = np.nan_to_num(np.asarray(max_sim, np.float64), nan=-np.inf)
    n = max(len(m), 1)
    return [(float(e), float((m <= 1.0 - e).sum() / n)) for e in eps_list]


def _embed_shard(shard: Path, out: Path, spec: EmbedSpec, device: str, cache: Path | None) -> None:
    """map_shards worker: (uid, id, raw embedding) of one spilled shard, using the shared cache.

    Reports documents embedded so far as the fit's progress (shown when it runs in the main process,
    i.e. one worker; with several, map_shards reports finished shards)."""
    from curate.core.progress import report
    from curate.io.spill import read_spill

    emb = Embedder(spec, device, cache)
    frames = []
    done = 0
    for b in read_spill(shard, [UID, "id", "text"]):
        if b.height:
            frames.append(b.select(UID, "id").with_columns(pl.Series(EMBEDDING_COLUMN, emb.embed(b))))
            done += b.height
            report(done, None, f"docs embedded ({shard.name})")
    if frames:
        pl.concat(frames).write_parquet(out, row_group_size=VECTOR_ROW_GROUP)
    else:
        pl.DataFrame(schema={UID: pl.UInt64, "id": pl.String}).write_parquet(out)


def _column_shard(shard: Path, out: Path, column: str) -> None:
    """map_shards worker: (uid, id, raw embedding) of one spilled shard from its ``column`` (as float32
    lists, the values the stage computes with), the same file shape as :func:`_embed_shard`'s."""
    from curate.io.spill import read_spill

    frames = [b.select(UID, "id", pl.col(column).cast(pl.List(pl.Float32)).alias(EMBEDDING_COLUMN))
              for b in read_spill(shard, [UID, "id", column]) if b.height]
    if frames:
        pl.concat(frames, how="vertical_relaxed").write_parquet(out, row_group_size=VECTOR_ROW_GROUP)
    else:
        pl.DataFrame(schema={UID: pl.UInt64, "id": pl.String}).write_parquet(out)


def _file_rows(f: Path) -> int:
    """Rows of a parquet file, from its footer (polars: the driver need not load pyarrow for it)."""
    return int(pl.scan_parquet(f).select(pl.len()).collect().item())


def read_vector_rows(f: Path, positions: np.ndarray) -> np.ndarray:
    """The L2-normalised float32 embeddings at the (sorted) row ``positions`` of one per-shard vector
    file, reading only the row groups that hold them, one at a time (``VECTOR_ROW_GROUP`` rows each)."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(f)
    parts = []
    start = 0
    for g in range(pf.num_row_groups):
        rows = pf.metadata.row_group(g).num_rows
        lo, hi = np.searchsorted(positions, [start, start + rows])
        if hi > lo:
            col = pl.from_arrow(pf.read_row_group(g, columns=[EMBEDDING_COLUMN])).get_column(EMBEDDING_COLUMN)
            x = embeddings_to_numpy(col.gather(pl.Series(positions[lo:hi] - start)))
            parts.append(l2_normalize(np.ascontiguousarray(x, dtype=np.float32)))
        start += rows
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def _sample_shard(shard: Path, out: Path, vector_dir: Path, position_dir: Path) -> None:
    """map_shards worker: the k-means training rows that lie in this shard (``position_dir/<shard>.npy``:
    sorted row positions in its vector file), normalised, as one ``.npy`` matrix in that order."""
    pos_file = position_dir / f"{shard.name}.npy"
    rows = np.zeros((0, 0), np.float32)
    if pos_file.exists():
        rows = read_vector_rows(vector_dir / f"{shard.name}.parquet", np.load(pos_file))
    with open(out, "wb") as fh:
        np.save(fh, rows)


def _assign_shard(shard: Path, out: Path, vector_dir: Path, centroids: Path, offsets: dict[str, int],
                  which: Keep, seed: int, spherical: bool, device: str, permutation: Path | None) -> None:
    """map_shards worker: each document's cluster and keep-order key, the ``semdedup_clusters`` label
    file of one shard (``node`` uid, ``label``, ``okey`` as :func:`order_key`, ``pos`` the input
    position: ``offsets[shard]`` + row), reading its vector file ``VECTOR_ROW_GROUP`` rows at a time.
    ``random`` order reads its keys from ``permutation`` (the corpus-wide one, memory-mapped)."""
    import pyarrow.parquet as pq

    f = vector_dir / f"{shard.name}.parquet"
    frames = []
    if f.exists() and _file_rows(f):
        cents = np.load(centroids)
        index = centroid_index(cents, spherical=spherical, device=device) if len(cents) > 1 else None
        perm = np.load(permutation, mmap_mode="r") if permutation is not None else None
        start = offsets[shard.name]
        for rb in pq.ParquetFile(f).iter_batches(batch_size=VECTOR_ROW_GROUP, columns=[UID, EMBEDDING_COLUMN]):
            b = pl.from_arrow(rb)
            assert isinstance(b, pl.DataFrame)
            x = l2_normalize(np.ascontiguousarray(embeddings_to_numpy(b.get_column(EMBEDDING_COLUMN)),
                                                  dtype=np.float32))
            labels, dist = assign_nearest(x, cents, index, spherical=spherical, device=device)
            pos = np.arange(start, start + len(x), dtype=np.int64)
            okey = (np.asarray(perm[pos], dtype=np.float64) if perm is not None
                    else order_key(dist, which=which, seed=seed))
            frames.append(b.select(pl.col(UID).alias(NODE)).with_columns(
                pl.Series(LABEL, labels, dtype=pl.Int64), pl.Series("okey", okey, dtype=pl.Float64),
                pl.Series("pos", pos, dtype=pl.Int64)))
            start += len(x)
    if frames:
        pl.concat(frames).write_parquet(out)
    else:
        pl.DataFrame(schema={NODE: pl.UInt64, LABEL: pl.Int64, "okey": pl.Float64,
                             "pos": pl.Int64}).write_parquet(out)


def _semdedup_group(eps: float, eps_list: list[float], batch_size: int, faiss_min: int, device: str,
                    rows: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, int]]:
    """``GlobalOps.map_groups`` function: the within-cluster pruning of whole k-means clusters (``rows``:
    uid, id, raw embedding, cluster as the group, sorted by cluster then keep order). Returns the
    stage's state rows (cluster, max cosine to an earlier item, that item's id where removed at ``eps``)
    and the counts removed and kept per eps of the report (``kept_<i>``, i indexing ``eps_list``)."""
    x = l2_normalize(np.ascontiguousarray(embeddings_to_numpy(rows.get_column(EMBEDDING_COLUMN)),
                                          dtype=np.float32))
    cluster = rows.get_column(GROUP).to_numpy()
    max_sim = np.full(rows.height, np.nan, np.float32)
    nearest = np.full(rows.height, -1, np.int64)
    bounds = np.flatnonzero(np.diff(cluster)) + 1
    for members in np.split(np.arange(rows.height), bounds):  # rows of a cluster are adjacent, in order
        best, arg = cluster_max_sim(x[members], batch_size=batch_size, faiss_min=faiss_min, device=device)
        ok = arg >= 0
        max_sim[members[ok]] = best[ok]
        nearest[members[ok]] = members[arg[ok]]
    m = np.nan_to_num(max_sim.astype(np.float64), nan=-np.inf)
    removed = m > 1.0 - eps
    ids = rows.get_column("id")
    of = pl.Series("semdup_of", ids.to_numpy()[np.maximum(nearest, 0)], dtype=pl.String)
    table = rows.select(UID).with_columns(
        pl.Series("semdup_cluster", cluster, dtype=pl.Int64),
        pl.Series("semdup_max_sim", max_sim.astype(np.float64), nan_to_null=True),
        pl.when(pl.Series(removed)).then(of).otherwise(None).alias("semdup_of"))
    counts = {"removed": int(removed.sum())}
    counts.update({f"kept_{i}": int((m <= 1.0 - e).sum()) for i, e in enumerate(eps_list)})
    return table, counts


@register("semdedup")
class SemDeDup(GlobalStage):
    """Removes semantic near-duplicates: SemDeDup (Abbas et al. 2023, facebookresearch/SemDeDup).

    Embeddings come from an existing ``embedding`` column (e.g. an ``embed`` step before) or are
    computed in ``fit`` with the same model/cache as ``embed`` (default all-MiniLM-L6-v2, NeMo's
    default; ``backend: model2vec`` uses a static model distilled from it, ~200x faster on CPU, see
    ``benchmarks/RESULTS.md`` for its agreement with MiniLM). Vectors are L2-normalised and clustered with faiss k-means (``niter`` 100, ``seed`` 1234,
    spherical: SemDeDup's ``clustering_configs.yaml``; GPU when available); ``n_clusters`` defaults to
    round(sqrt(N)) capped at N/39 (1000 at 1M docs, NeMo's default). The vectors stay in per-shard files:
    the driver loads only the rows faiss trains on (its own subsample of ``256 * n_clusters`` rows,
    reproduced, so the centroids are those of a whole-matrix run) and each shard's documents are assigned
    to their nearest centroid where the executor runs shard work (Ray tasks on Ray). Each cluster is sorted by cosine
    distance to its centroid, ``hard`` (default, SemDeDup's ``which_to_keep``) = farthest first, ``easy``
    = nearest first, ``random``; ties keep input order. Document j is removed iff its max cosine to any
    earlier item in that order (removed ones included, as in ``semdedup.py``) exceeds ``1 - eps``
    (SemDeDup's strict ``>``; NeMo uses ``>=``). ``eps`` defaults to 0.01 (NeMo's ``eps_to_extract``;
    SemDeDup leaves it to the user: see ``report_eps``). Clusters smaller than ``faiss_min_cluster`` use
    one exact matrix product; larger ones an exact blocked faiss search.

    ``report_eps: [..]`` is report mode: nothing is removed; the kept fraction for each eps is written to
    ``<stage state>/eps_report.json`` (the table users pick eps from) and logged.

    Counters (in ``stats.json`` and the run table): ``documents``, ``clusters``, ``removed`` (at ``eps``;
    0 in report mode) and ``kept_eps_<eps>`` for every eps of the report; timers ``vectors`` (reading or
    computing the embeddings) and ``semdedup`` (k-means and the within-cluster search).

    ``embedding_column`` is used when the data has it (else vectors are computed in ``fit``), so the
    step needs no column.
    """

    requires = ("faiss", "torch", "sentence_transformers")
    extra = "embed"

    class Params(OpParams):
        eps: float = Field(0.01, ge=0.0, lt=1.0, description="remove j if max cosine to an earlier item > 1 - eps "
                           "(NeMo Curator eps_to_extract: 0.01)")
        n_clusters: int | None = Field(None, ge=1, description="k-means clusters (default sqrt(N), <= N/39: NeMo's "
                                       "1000 at 1M docs)")
        which_to_keep: Keep = Field("hard", description="hard: keep least central; easy: most; random "
                                    "(SemDeDup default: hard)")
        niter: int = Field(100, ge=1, description="k-means iterations (SemDeDup clustering_configs.yaml: 100)")
        seed: int = Field(1234, description="k-means / random-order seed (SemDeDup: 1234)")
        spherical: bool = Field(True, description="spherical (cosine) k-means (SemDeDup: true)")
        batch_size: int = Field(1024, ge=1, description="rows per block in large-cluster search (curate: 1024)")
        faiss_min_cluster: int = Field(4096, ge=0, description="clusters this large use blocked faiss search "
                                       "(curate: 4096, where one matrix product stops fitting comfortably)")
        report_eps: list[float] | None = Field(None, description="report mode: print kept fraction per eps, "
                                                                 "remove nothing (default off)")
        embedding_column: str = Field(EMBEDDING_COLUMN, description="use this column if present (default "
                                      "'embedding', the embed step's)")
        model: str = Field(DEFAULT_MODEL, json_schema_extra=PATH_MODEL, description="sentence-transformers model "
                           "when embedding in fit (default all-MiniLM-L6-v2, NeMo's)")
        embed_batch_size: int = Field(64, ge=1, description="encode batch size when embedding in fit "
                                      "(sentence-transformers: 32; curate 64)")
        fp16: bool = Field(True, description="half precision on CUDA when embedding in fit (default true)")
        max_seq_length: int | None = Field(None, ge=1, description="override the model's truncation length "
                                           "(default: the model's)")
        cache: bool = Field(True, description="use the shared embedding cache when embedding in fit (default true)")
        cache_dir: str | None = Field(None, description="embedding cache folder (default <work_dir>/cache/embeddings)")
        backend: Backend = Field("torch", description="embedding in fit: torch (the model) or model2vec (a "
                                 "static model distilled from it, cached; fast on CPU)")
        pca_dims: int = Field(DEFAULT_PCA_DIMS, ge=2, description="model2vec: PCA size (model2vec's default)")

        @field_validator("report_eps")
        @classmethod
        def _eps_range(cls, v: list[float] | None) -> list[float] | None:
            if v is not None and (not v or any(not 0.0 <= e < 1.0 for e in v)):
                raise ValueError("report_eps must be a non-empty list of values in [0, 1)")
            return v

    def adds(self) -> dict[str, Column]:
        return {
            "semdup_cluster": Column(pl.Int64, "k-means cluster of the document"),
            "semdup_max_sim": Column(pl.Float64, "max cosine to an earlier item of its cluster in keep order",
                                     "null for the first item of a cluster; never drops"),
            "semdup_of": Column(pl.String, "id of that earlier item when the document is removed at eps",
                                "null when not removed", rejects_only=self.params.report_eps is None),
        }

    def _vector_files(self, ctx: FitContext) -> tuple[Path, list[Path]]:
        """The per-shard files of (uid, id, raw ``embedding``), in shard order, and their folder: from the
        column (one ``map_shards`` pass copying it) or computed there (cached). No vector reaches the
        driver here."""
        col = self.params.embedding_column
        has_col = False
        for shard in ctx.shards:
            for b in ctx.read_shard(shard, None):
                has_col = col in b.columns
                break
            else:
                continue
            break
        if has_col:
            return ctx.scratch_dir / "semdedup_vectors", ctx.map_shards(partial(_column_shard, column=col),
                                                                        "semdedup_vectors")
        p = self.params
        spec = EmbedSpec(p.model, p.embed_batch_size, p.fp16, p.max_seq_length, p.backend, p.pca_dims)
        fn = partial(_embed_shard, spec=spec, device=ctx.device, cache=cache_root(p.cache, p.cache_dir, ctx))
        return ctx.scratch_dir / "embeddings", ctx.map_shards(fn, "embeddings")

    def _training_rows(self, ctx: FitContext, vector_dir: Path, counts: list[int],
                       rows: np.ndarray) -> np.ndarray:
        """The normalised embeddings at corpus positions ``rows`` (the vector files concatenated in shard
        order), in that order: each shard's task reads its own rows (``map_shards``), the driver holds
        only the result (len(rows) x dim)."""
        starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        fidx = np.searchsorted(starts, rows, side="right") - 1
        local = rows - starts[fidx]
        order = np.lexsort((local, fidx))  # training-row indices by shard, then row in shard
        bounds = np.searchsorted(fidx[order], np.arange(len(counts) + 1))
        pos_dir = ctx.scratch_dir / "semdedup_sample_rows"
        for d in (pos_dir, ctx.scratch_dir / "semdedup_sample"):
            shutil.rmtree(d, ignore_errors=True)  # a former run's rows, for another seed or corpus
        pos_dir.mkdir(parents=True)
        for i, shard in enumerate(ctx.shards):
            if bounds[i + 1] > bounds[i]:
                np.save(pos_dir / f"{shard.name}.npy", local[order[bounds[i]:bounds[i + 1]]])
        outs = ctx.map_shards(partial(_sample_shard, vector_dir=vector_dir, position_dir=pos_dir),
                              "semdedup_sample", suffix=".npy")
        sample: np.ndarray | None = None
        for i, o in enumerate(outs):
            if bounds[i + 1] > bounds[i]:
                part = np.load(o)
                if sample is None:
                    sample = np.empty((len(rows), part.shape[1]), np.float32)
                sample[order[bounds[i]:bounds[i + 1]]] = part
                del part
        shutil.rmtree(pos_dir, ignore_errors=True)
        shutil.rmtree(ctx.scratch_dir / "semdedup_sample", ignore_errors=True)
        assert sample is not None
        return sample

    def _centroids(self, ctx: FitContext, vector_dir: Path, files: list[Path], counts: list[int],
                   k: int) -> np.ndarray:
        """k-means centroids from the training rows only (:func:`faiss_training_rows`: the rows faiss
        itself would subsample, so the same centroids as on the whole matrix). ``n_clusters`` 1 (or one
        document) is the mean vector: exactly today's from all rows up to ``MAX_POINTS_PER_CENTROID``
        documents, else a float64 running mean over the files, read batch by batch."""
        p = self.params
        n = sum(counts)
        if (k <= 1 or n < 2) and n > MAX_POINTS_PER_CENTROID:
            import pyarrow.parquet as pq

            total: np.ndarray | None = None
            for f, c in zip(files, counts):
                if not c:
                    continue
                for rb in pq.ParquetFile(f).iter_batches(batch_size=VECTOR_ROW_GROUP, columns=[EMBEDDING_COLUMN]):
                    x = l2_normalize(np.ascontiguousarray(embeddings_to_numpy(
                        pl.Series(EMBEDDING_COLUMN, rb.column(0))), dtype=np.float32))
                    s = x.sum(axis=0, dtype=np.float64)
                    total = s if total is None else total + s
            assert total is not None
            return (total / n).astype(np.float32)[None, :]
        rows = faiss_training_rows(n, k, p.seed) if k > 1 else None
        x = self._training_rows(ctx, vector_dir, counts, np.arange(n, dtype=np.int64) if rows is None else rows)
        return kmeans_centroids(x, k, niter=p.niter, seed=p.seed, spherical=p.spherical, device=ctx.device)

    def fit(self, ctx: FitContext) -> None:
        """Vectors per shard (:meth:`_vector_files`), k-means on the driver from the training rows only,
        each document's cluster and keep-order key per shard (:func:`_assign_shard`), then the
        within-cluster pruning per group of clusters (``global_ops.map_groups``). The driver holds the
        training rows (at most ``256 * n_clusters`` x dim) and the centroids, never every embedding
        (``random`` keep order adds one int32 per document: the corpus-wide permutation it is defined by)."""
        p = self.params
        with ctx.timer("vectors"):
            vector_dir, files = self._vector_files(ctx)
            counts = [_file_rows(f) for f in files]
        n = sum(counts)
        state = Path(ctx.state_dir)
        eps_list = sorted(set(p.report_eps or DEFAULT_REPORT_EPS) | {p.eps})
        counts_out: dict[str, int] = {}
        n_clusters = 0
        out_dir = state / "semdup"
        if n:
            with ctx.timer("semdedup"):
                k = default_n_clusters(n) if p.n_clusters is None else p.n_clusters
                cents = self._centroids(ctx, vector_dir, files, counts, k)
                np.save(state / "centroids.npy", cents)
                n_clusters = int(cents.shape[0])
                dim = int(cents.shape[1])
                offsets = dict(zip([s.name for s in ctx.shards],
                                   np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int).tolist()))
                perm_file = None
                if p.which_to_keep == "random":  # order_key's permutation, corpus-wide (int32 per doc)
                    perm_file = ctx.scratch_dir / "semdedup_random_order.npy"
                    np.save(perm_file, np.random.default_rng(p.seed).permutation(
                        np.arange(n, dtype=np.int32 if n < 2**31 else np.int64)))
                # each doc's cluster and place in its cluster's keep order (cluster_order's sort key, then
                # input position), per shard where the executor runs shard work; the per-cluster work runs
                # where it runs groups, on the per-shard embedding files, and returns counts only
                shutil.rmtree(ctx.scratch_dir / "semdedup_clusters", ignore_errors=True)
                labels = ctx.map_shards(partial(
                    _assign_shard, vector_dir=vector_dir, centroids=state / "centroids.npy", offsets=offsets,
                    which=p.which_to_keep, seed=p.seed, spherical=p.spherical, device=ctx.device,
                    permutation=perm_file), "semdedup_clusters")
                full = [(f, lab) for f, lab, c in zip(files, labels, counts) if c]
                _, counts_out = ctx.global_ops.map_groups(
                    [f for f, _ in full], key=UID, columns=[UID, "id", EMBEDDING_COLUMN],
                    labels=[lab for _, lab in full], order=["okey", "pos"], out_dir=out_dir,
                    fn=partial(_semdedup_group, p.eps, eps_list, p.batch_size, p.faiss_min_cluster, ctx.device),
                    # map_groups sizes partitions at 64 bytes a row: an embedding row is 4 * dim more
                    nrows=n * (1 + dim // 16))
                if perm_file is not None:
                    perm_file.unlink(missing_ok=True)
        else:
            out_dir.mkdir(parents=True, exist_ok=True)
            pl.DataFrame(schema={UID: pl.UInt64, "semdup_cluster": pl.Int64, "semdup_max_sim": pl.Float64,
                                 "semdup_of": pl.String}).write_parquet(out_dir / "part-empty.parquet")
        removed_n = 0 if p.report_eps is not None else counts_out.get("removed", 0)
        kept = [counts_out.get(f"kept_{i}", 0) for i in range(len(eps_list))]
        report = {"documents": n, "n_clusters": n_clusters, "which_to_keep": p.which_to_keep,
                  "eps": p.eps, "report_mode": p.report_eps is not None,
                  "kept": [{"eps": float(e), "kept_fraction": c / max(n, 1), "kept": round(c / max(n, 1) * n)}
                           for e, c in zip(eps_list, kept)]}
        (state / "eps_report.json").write_text(json.dumps(report, indent=1))
        ctx.stat("documents", n)
        ctx.stat("clusters", n_clusters)
        ctx.stat("removed", removed_n)
        for r in report["kept"]:
            ctx.stat(f"kept_eps_{r['eps']:g}", r["kept"])
        if p.report_eps is not None:
            log.info("%s", format_report(report))

    def setup(self, ctx: RunContext) -> None:
        self._state = pl.read_parquet(sorted((Path(ctx.state_dir) / "semdup").glob("*.parquet")))

    def apply(self, batch: pl.DataFrame) -> pl.DataFrame:
        cols = [c for c in ("semdup_cluster", "semdup_max_sim", "semdup_of") if c in batch.columns]
        return batch.drop(cols).join(self._state, on=UID, how="left", maintain_order="left")

    def rules(self) -> list[Rule]:
        if self.params.report_eps is not None:
            return []
        return [Rule("semantic_duplicate", "semdup_max_sim", ">", 1.0 - self.params.eps)]

    def finish(self, kept: pl.DataFrame) -> pl.DataFrame:
        return kept if self.params.report_eps is not None else kept.drop("semdup_of")


def format_report(report: dict) -> str:
    lines = [f"SemDeDup eps report: {report['documents']:,} documents, {report['n_clusters']} clusters, "
             f"which_to_keep={report['which_to_keep']}", f"{'eps':>8}  {'kept %':>7}  {'kept':>10}"]
    lines += [f"{r['eps']:>8g}  {100 * r['kept_fraction']:>7.2f}  {r['kept']:>10,}" for r in report["kept"]]
    return "\n".join(lines)
