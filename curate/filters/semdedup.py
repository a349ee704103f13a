"""SemDeDup (Abbas et al. 2023): semantic deduplication by k-means + within-cluster cosine pruning.

The vector core (:func:`semdedup_vectors`, :func:`earlier_max_sim`, :func:`kept_fraction`) works on numpy
arrays so it can be tested and reused without a pipeline; :class:`SemDeDup` wraps it as a global stage.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

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


def kmeans_assign(x: np.ndarray, n_clusters: int, *, niter: int = 100, seed: int = 1234,
                  spherical: bool = True,
                  device: str = "cpu") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """faiss k-means on the (L2-normalised) rows of ``x``.

    Returns (labels int64, cosine distance to the assigned centroid float32, centroids). Assignment is
    the nearest centroid (by inner product for spherical k-means, L2 otherwise); the distance is
    ``1 - cos(x, c)`` as in SemDeDup's ``sort_clusters.py``.
    """
    n, d = x.shape
    if n_clusters <= 1 or n < 2:
        c = x.mean(axis=0, keepdims=True)
        labels = np.zeros(n, dtype=np.int64)
    else:
        import faiss

        km = faiss.Kmeans(d, int(min(n_clusters, n)), niter=niter, seed=seed, spherical=spherical,
                          gpu=_faiss_gpu(device), verbose=False)
        km.train(x)
        c = km.centroids.copy()
        _, idx = km.index.search(x, 1)
        labels = idx[:, 0].astype(np.int64)
    cn = l2_normalize(c)
    dist = 1.0 - np.einsum("ij,ij->i", x, cn[labels])
    return labels, dist.astype(np.float32), c


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
        pl.concat(frames).write_parquet(out)
    else:
        pl.DataFrame(schema={UID: pl.UInt64, "id": pl.String}).write_parquet(out)


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
    round(sqrt(N)) capped at N/39 (1000 at 1M docs, NeMo's default). Each cluster is sorted by cosine
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

    def _load_vectors(self, ctx: FitContext) -> tuple[pl.DataFrame, np.ndarray, list[Path]]:
        """(uid, id) frame and the matching raw embeddings, from the column or computed (cached); and the
        files holding them (uid, id, ``embedding``) for the per-cluster step: the per-shard files of the
        embedding, or one scratch file of the column."""
        col = self.params.embedding_column
        has_col = False
        for shard in ctx.shards:
            for b in ctx.read_shard(shard, None):
                has_col = col in b.columns
                break
            else:
                continue
            break
        empty = pl.DataFrame(schema={UID: pl.UInt64, "id": pl.String})
        if has_col:
            frames = [b.select(UID, "id", col) for b in ctx.iter_batches([UID, "id", col])]
            df = pl.concat(frames) if frames else empty
            x = embeddings_to_numpy(df.get_column(col)) if df.height else np.zeros((0, 1), np.float32)
            f = ctx.scratch_dir / "semdedup_vectors.parquet"
            if df.height:
                df.rename({col: EMBEDDING_COLUMN}).write_parquet(f)
            return df.select(UID, "id"), x, [f] if df.height else []
        p = self.params
        spec = EmbedSpec(p.model, p.embed_batch_size, p.fp16, p.max_seq_length, p.backend, p.pca_dims)
        fn = partial(_embed_shard, spec=spec, device=ctx.device, cache=cache_root(p.cache, p.cache_dir, ctx))
        outs = ctx.map_shards(fn, "embeddings")
        frames = [pl.read_parquet(o) for o in outs]
        full = [(o, f) for o, f in zip(outs, frames) if f.height]
        if not full:
            return empty, np.zeros((0, 1), np.float32), []
        df = pl.concat([f for _, f in full])
        return df.select(UID, "id"), embeddings_to_numpy(df.get_column(EMBEDDING_COLUMN)), [o for o, _ in full]

    def fit(self, ctx: FitContext) -> None:
        p = self.params
        with ctx.timer("vectors"):
            keys, x, vector_files = self._load_vectors(ctx)
        n = keys.height
        state = Path(ctx.state_dir)
        eps_list = sorted(set(p.report_eps or DEFAULT_REPORT_EPS) | {p.eps})
        counts: dict[str, int] = {}
        n_clusters = 0
        out_dir = state / "semdup"
        if n:
            with ctx.timer("semdedup"):
                dim = x.shape[1]
                xn = l2_normalize(np.ascontiguousarray(x, dtype=np.float32))
                del x
                k = default_n_clusters(n) if p.n_clusters is None else p.n_clusters
                labels, dist, cents = kmeans_assign(xn, k, niter=p.niter, seed=p.seed, spherical=p.spherical,
                                                    device=ctx.device)
                del xn
                np.save(state / "centroids.npy", cents)
                n_clusters = int(cents.shape[0])
                # each doc's cluster and place in its cluster's keep order (cluster_order's sort key, then
                # input position): the per-cluster work runs where the executor runs groups, on the
                # per-shard embedding files, and returns counts only (semdedup_vectors' result, by cluster)
                assign = ctx.scratch_dir / "semdedup_clusters.parquet"
                keys.select(pl.col(UID).alias(NODE)).with_columns(
                    pl.Series(LABEL, labels, dtype=pl.Int64),
                    pl.Series("okey", order_key(dist, which=p.which_to_keep, seed=p.seed)),
                    pl.Series("pos", np.arange(n, dtype=np.int64))).write_parquet(assign)
                _, counts = ctx.global_ops.map_groups(
                    vector_files, key=UID, columns=[UID, "id", EMBEDDING_COLUMN], labels=[assign],
                    order=["okey", "pos"], out_dir=out_dir,
                    fn=partial(_semdedup_group, p.eps, eps_list, p.batch_size, p.faiss_min_cluster, ctx.device),
                    # map_groups sizes partitions at 64 bytes a row: an embedding row is 4 * dim more
                    nrows=n * (1 + dim // 16))
        else:
            out_dir.mkdir(parents=True, exist_ok=True)
            pl.DataFrame(schema={UID: pl.UInt64, "semdup_cluster": pl.Int64, "semdup_max_sim": pl.Float64,
                                 "semdup_of": pl.String}).write_parquet(out_dir / "part-empty.parquet")
        removed_n = 0 if p.report_eps is not None else counts.get("removed", 0)
        kept = [counts.get(f"kept_{i}", 0) for i in range(len(eps_list))]
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
