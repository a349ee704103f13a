"""The global steps of a fit on Ray Data (:class:`RayGlobalOps`), installed by the Ray executor into every
global stage's :class:`~curate.core.operator.FitContext` in place of the driver-side
:class:`~curate.core.global_ops.GlobalOps`.

Every step is one or more Ray Data shuffles: read the stage's per-shard parquet files
(``ray.data.read_parquet``), give each row a partition number in ``map_batches`` (a hash of its key), and
``groupby(partition).map_groups`` a function that does, for its partition, what the local implementation
does for the whole dataset (the same polars functions of :mod:`curate.core.global_ops`) and writes its
result as parquet on the shared work dir. What comes back to the driver is one summary row per partition
(a count), never the rows:

* ``star_pairs`` (MinHash buckets): rows (band, band key, doc) partitioned by (band, key mod parts); each
  group writes the same (band, partition) pair file the local implementation writes, byte for byte.
* ``group_first`` (exact dedup): rows partitioned by text hash; each group keeps its first row per hash.
* ``connected_components``: the alternating large-star / small-star algorithm of Kiveris et al., "Connected
  Components in MapReduce and Beyond" (SoCC 2014), one shuffle per step (edges partitioned by source node),
  until no node has two smaller neighbours or both a smaller and a larger one: the graph is then a forest
  of stars centred on each component's smallest node, which is every node's label (the local union-find's
  label). O(log^2 n) rounds in the worst case (the paper's bound), a few on real dedup graphs.
* ``map_groups`` (MinHash's verified union and keep step, SemDeDup): the rows, with their group label
  joined on where the group comes from a label file (a Ray Data hash join), partitioned by group; each
  partition runs the stage's group function and writes its result file; the driver gets the counters.
* ``top_k`` (selectors): the k best rows of each block in ``map_batches``, then the best k of those
  k * blocks candidates on the driver.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import polars as pl

from curate.core.global_ops import (
    GROUP,
    LABEL,
    NODE,
    GlobalOps,
    GroupFn,
    add_counts,
    first_of_groups,
    group_part_name,
    pair_file_name,
    run_group_fn,
    star_pairs_of,
    star_parts,
    top_rows,
)

log = logging.getLogger("curate")

#: the partition-number column the keying step adds (dropped before a group's function sees the rows)
_PART = "__part"
#: a bound far above the paper's O(log^2 n) rounds: reaching it means a bug, not a big graph
MAX_ROUNDS = 200
#: graphs up to this many edges (256 MB in one worker) finish in one task (see :class:`RayGlobalOps`)
FINISH_EDGES = 16_000_000


def _write(df: pl.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    df.write_parquet(tmp)
    tmp.replace(path)


# ------------------------------------------------------------------------------ keying (map_batches)
def _key_bands(key_columns: list[str], node: str, active: str | None, parts: int,
               df: pl.DataFrame) -> pl.DataFrame:
    """(node, band keys) rows -> one row per (band, doc) with partition band * parts + key mod parts."""
    if active is not None:
        df = df.filter(pl.col(active) > 0)
    frames = [df.select(pl.col(node), pl.col(c).alias("k"),
                        (pl.lit(i * parts, dtype=pl.Int64) + (pl.col(c) % parts).cast(pl.Int64)).alias(_PART))
              for i, c in enumerate(key_columns)]
    return pl.concat(frames)


def _key_hash(key: str, parts: int, df: pl.DataFrame) -> pl.DataFrame:
    return df.with_columns((pl.col(key).cast(pl.UInt64) % parts).cast(pl.Int64).alias(_PART))


def _key_edges(a: str, b: str, parts: int, df: pl.DataFrame) -> pl.DataFrame:
    """Undirected edges (a, b) -> both directed rows (src, dst), partitioned by src: a node's whole
    neighbourhood meets in one group."""
    df = df.select(pl.col(a).cast(pl.UInt64), pl.col(b).cast(pl.UInt64))
    both = pl.concat([df.select(pl.col(a).alias("src"), pl.col(b).alias("dst")),
                      df.select(pl.col(b).alias("src"), pl.col(a).alias("dst"))])
    return both.with_columns((pl.col("src") % parts).cast(pl.Int64).alias(_PART))


def _read_keyed(columns: list[str] | None, keyer: Callable[[pl.DataFrame], pl.DataFrame], table: Any) -> Any:
    """A block of file paths -> their rows (polars reads them: no fsspec on the way), keyed by ``keyer``."""
    frames = [pl.read_parquet(p, columns=columns) for p in table.column("path").to_pylist()]
    return keyer(pl.concat(frames, how="vertical_relaxed")).to_arrow()


def _read_rows(columns: list[str] | None, file_index: str | None, table: Any) -> Any:
    """A block of (path, index) rows -> the files' rows, with the file's index as ``file_index``."""
    frames = []
    for path, i in zip(table.column("path").to_pylist(), table.column("index").to_pylist()):
        df = pl.read_parquet(path, columns=columns)
        if file_index is not None:
            df = df.with_columns(pl.lit(i, dtype=pl.Int64).alias(file_index))
        frames.append(df)
    return pl.concat(frames, how="vertical_relaxed").to_arrow()


def _read_labels(key: str, table: Any) -> Any:
    frames = [pl.read_parquet(p).rename({NODE: key, LABEL: GROUP}) for p in table.column("path").to_pylist()]
    return pl.concat(frames, how="vertical_relaxed").to_arrow()


def _key_group(parts: int, key: str | None, table: Any) -> Any:
    df = pl.from_arrow(table)
    if key is not None:
        df = df.with_columns(pl.col(key).alias(GROUP))
    return df.with_columns((pl.col(GROUP).cast(pl.UInt64) % parts).cast(pl.Int64).alias(_PART)).to_arrow()


# ------------------------------------------------------------------------- per group (map_groups)
def _apply_group(fn: GroupFn, order: list[str] | None, out_dir: str, df: pl.DataFrame, part: int) -> dict:
    res, summary = run_group_fn(fn, order, df)
    _write(res, Path(out_dir) / group_part_name(part))
    return summary



def _star_group(node: str, parts: int, out_dir: str, df: pl.DataFrame, part: int) -> dict:
    band, p = divmod(part, parts)
    pairs = star_pairs_of(df.select(node, "k"), node)
    _write(pairs, Path(out_dir) / pair_file_name(band, p, parts))
    return {"pairs": pairs.height}


def _first_group(key: str, order: str, value: str, out_dir: str, df: pl.DataFrame, part: int) -> dict:
    dups, groups = first_of_groups(df, key=key, order=order, value=value)
    _write(dups, Path(out_dir) / f"dups-{part:04d}.parquet")
    return {"groups": groups, "dups": dups.height}


def _neighbourhoods(df: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Distinct directed edges, and per source node: m = min of itself and its neighbours, the number of
    smaller (ns) and larger (nl) neighbours."""
    df = df.unique()
    nb = df.group_by("src").agg(pl.col("dst").min().alias("m"),
                                (pl.col("dst") < pl.col("src")).sum().alias("ns"),
                                (pl.col("dst") > pl.col("src")).sum().alias("nl"))
    return df, nb.with_columns(pl.min_horizontal("src", "m").alias("m"))


def _lone(nb: pl.DataFrame) -> pl.DataFrame:
    """Nodes whose only edge is a self loop keep it (so they keep their place in the graph and a label)."""
    return nb.filter((pl.col("ns") == 0) & (pl.col("nl") == 0)).select(pl.col("src").alias("a"),
                                                                       pl.col("src").alias("b"))


def _large_star(out_dir: str, df: pl.DataFrame, part: int) -> dict:
    """Large-star: every node u links each larger neighbour v to m(u). Also counts the nodes that keep the
    graph from being a star forest (two smaller neighbours, or a smaller and a larger one); where there are
    none, m(u) is u's component's smallest node: written as u's label (used when no partition had any)."""
    df, nb = _neighbourhoods(df)
    viol = nb.filter((pl.col("ns") > 1) | ((pl.col("ns") >= 1) & (pl.col("nl") >= 1))).height
    edges = (df.filter(pl.col("dst") > pl.col("src")).join(nb.select("src", "m"), on="src")
             .select(pl.col("dst").alias("a"), pl.col("m").alias("b")))
    d = Path(out_dir)
    _write(pl.concat([edges, _lone(nb)]), d / f"edges-{part:04d}.parquet")
    if viol == 0:
        _write(nb.select(pl.col("src").alias(NODE), pl.col("m").alias(LABEL)), d / f"labels-{part:04d}.parquet")
    return {"violations": viol, "nodes": nb.height}


def _small_star(out_dir: str, df: pl.DataFrame, part: int) -> dict:
    """Small-star: every node u with smaller neighbours links itself and each of them to m(u) (the smallest)."""
    df, nb = _neighbourhoods(df)
    small = df.filter(pl.col("dst") < pl.col("src"))
    m = small.group_by("src").agg(pl.col("dst").min().alias("m"))
    e1 = small.join(m, on="src").filter(pl.col("dst") != pl.col("m")).select(pl.col("dst").alias("a"),
                                                                                pl.col("m").alias("b"))
    e2 = m.select(pl.col("src").alias("a"), pl.col("m").alias("b"))
    _write(pl.concat([e1, e2, _lone(nb)]), Path(out_dir) / f"edges-{part:04d}.parquet")
    return {"nodes": nb.height}


def _num_rows(files: list[Path]) -> int:
    import pyarrow.parquet as pq

    return sum(pq.read_metadata(f).num_rows for f in files)


def _union_find_task(files: list[Path], cols: list[str], out_dir: Path) -> list[Path]:
    """(In a Ray worker) the local union-find over the remaining edges; their components are the input
    graph's (every round keeps each node and its component), so the labels are the same."""
    return GlobalOps().connected_components(files, out_dir=out_dir, a=cols[0], b=cols[1])


def _run_group(fn: Callable[[pl.DataFrame, int], dict], table: Any) -> Any:
    import pyarrow as pa

    df = pl.from_arrow(table)
    part = int(df[_PART][0])
    return pa.table({"summary": [json.dumps(fn(df.drop(_PART), part))]})


def _block_top(k: int, score: str, order: str, higher_is_better: bool, table: Any) -> Any:
    return top_rows(pl.from_arrow(table), k, score=score, order=order,
                    higher_is_better=higher_is_better).to_arrow()


class RayGlobalOps(GlobalOps):
    """:class:`~curate.core.global_ops.GlobalOps` as Ray Data shuffles (see the module docstring).

    ``ray_init`` returns the initialised ``ray`` module (the executor's, which connects to its cluster);
    ``partitions`` is the number of hash partitions of a shuffle (default: twice the cluster's CPUs).
    ``connected_components`` hands a graph of at most ``finish_edges`` edges (at the start or after a
    round) to one Ray task running the local union-find: a Ray Data shuffle costs seconds whatever its
    size, and a few million edges (16 bytes each) are nothing for one worker; above that, rounds."""

    where = "ray"

    def __init__(self, ray_init: Callable[[], Any], partitions: int | None = None, *,
                 finish_edges: int | None = None):
        self._init = ray_init
        self.partitions = partitions
        self.finish_edges = FINISH_EDGES if finish_edges is None else finish_edges
        #: rounds (large-star + small-star) the last ``connected_components`` took
        self.rounds = 0

    def _ray(self) -> Any:
        ray = self._init()
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False
        return ray

    def _parts(self, ray: Any) -> int:
        return self.partitions or max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))

    def _shuffle(self, ray: Any, files: list[Path], columns: list[str], keyer: Callable[[Any], Any],
                 fn: Callable[[pl.DataFrame, int], dict], groups: int) -> list[dict]:
        """read ``files`` -> ``keyer`` per block (adds the partition column, one of ``groups`` values) ->
        ``fn`` per partition; the partitions' summaries (one small dict each; none for a partition without
        rows). The hash shuffle gets as many reducers as groups, capped by the partition count (Ray's
        default, 200 reducers, costs more than a small shuffle's work)."""
        if not files:
            return []
        ds = self._files(ray, files).map_batches(partial(_read_keyed, columns, keyer), batch_format="pyarrow",
                                                 batch_size=1)
        out = ds.groupby(_PART, num_partitions=max(1, min(groups, self._parts(ray)))).map_groups(partial(_run_group, fn), batch_format="pyarrow")
        return [json.loads(r["summary"]) for r in out.take_all()]

    @staticmethod
    def _files(ray: Any, files: list[Path]) -> Any:
        """A dataset of the file paths (and their positions), one block each, read by the next step
        (``ray.data.read_parquet`` would do, but it probes fsspec's HTTP filesystem and fails where fsspec
        and aiohttp disagree)."""
        return ray.data.from_items([{"path": str(f), "index": i} for i, f in enumerate(files)],
                                   override_num_blocks=len(files))

    # ------------------------------------------------------------------------------------- steps
    def star_pairs(self, files: list[Path], *, key_columns: list[str], node: str, out_dir: Path,
                   active: str | None = None, memory_mb: int = 1024, nrows: int = 0) -> list[Path]:
        if not files:
            return []
        parts = star_parts(nrows, memory_mb)
        out = [out_dir / pair_file_name(band, part, parts) for band in range(len(key_columns))
               for part in range(parts)]
        if all(f.exists() for f in out):  # an interrupted run's buckets, all there
            return out
        out_dir.mkdir(parents=True, exist_ok=True)
        ray = self._ray()
        cols = [node] + ([active] if active else []) + list(key_columns)
        sums = self._shuffle(ray, files, cols, partial(_key_bands, list(key_columns), node, active, parts),
                             partial(_star_group, node, parts, str(out_dir)), len(key_columns) * parts)
        for f in out:  # a (band, partition) without rows had no group: its file is empty, as locally
            if not f.exists():
                _write(pl.DataFrame(schema={"a": pl.UInt64, "b": pl.UInt64}), f)
        log.info("star_pairs on ray: %d partitions, %d pairs", len(sums), sum(s["pairs"] for s in sums))
        return out

    def group_first(self, files: list[Path], *, key: str, order: str, value: str,
                    out_dir: Path) -> tuple[list[Path], int]:
        shutil.rmtree(out_dir, ignore_errors=True)  # a partition count from another run would leave stale parts
        out_dir.mkdir(parents=True)
        if not files:
            return [], 0
        ray = self._ray()
        sums = self._shuffle(ray, files, [order, key, value], partial(_key_hash, key, self._parts(ray)),
                             partial(_first_group, key, order, value, str(out_dir)), self._parts(ray))
        return sorted(out_dir.glob("dups-*.parquet")), sum(s["groups"] for s in sums)

    def connected_components(self, edge_files: list[Path], *, out_dir: Path, a: str = "a",
                             b: str = "b") -> list[Path]:
        shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.mkdir(parents=True)
        ray = self._ray()
        parts = self._parts(ray)
        files, cols = list(edge_files), [a, b]
        for r in range(MAX_ROUNDS):
            if _num_rows(files) <= self.finish_edges:  # small enough for one worker: no more shuffles
                self.rounds = r
                done = out_dir / f"round{r:03d}-final"
                return ray.get(ray.remote(num_cpus=1)(_union_find_task).remote(files, cols, done))
            large = out_dir / f"round{r:03d}-large"
            large.mkdir()
            sums = self._shuffle(ray, files, cols, partial(_key_edges, cols[0], cols[1], parts),
                                 partial(_large_star, str(large)), parts)
            if sum(s["violations"] for s in sums) == 0:
                self.rounds = r
                log.info("connected components on ray: %d rounds, %d nodes", r,
                         sum(s["nodes"] for s in sums))
                labels = sorted(large.glob("labels-*.parquet"))
                if not labels:
                    labels = [large / "labels-empty.parquet"]
                    _write(pl.DataFrame(schema={NODE: pl.UInt64, LABEL: pl.UInt64}), labels[0])
                return labels
            small = out_dir / f"round{r:03d}-small"
            small.mkdir()
            self._shuffle(ray, sorted(large.glob("edges-*.parquet")), ["a", "b"],
                          partial(_key_edges, "a", "b", parts), partial(_small_star, str(small)), parts)
            if r:  # the previous round's files are no longer read
                shutil.rmtree(out_dir / f"round{r - 1:03d}-small", ignore_errors=True)
            shutil.rmtree(large, ignore_errors=True)
            files, cols = sorted(small.glob("edges-*.parquet")), ["a", "b"]
        raise RuntimeError(f"connected components did not converge in {MAX_ROUNDS} rounds")

    def map_groups(self, files: list[Path], *, key: str, fn: GroupFn, out_dir: Path,
                   columns: list[str] | None = None, order: list[str] | None = None,
                   labels: list[Path] | None = None, file_index: str | None = None, memory_mb: int = 1024,
                   nrows: int = 0) -> tuple[list[Path], dict[str, int]]:
        shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.mkdir(parents=True)
        totals: dict[str, int] = {}
        if not files:
            return [], totals
        ray = self._ray()
        parts = self._parts(ray)
        ds = self._files(ray, files).map_batches(partial(_read_rows, columns, file_index),
                                                 batch_format="pyarrow", batch_size=1)
        if labels is not None:  # a hash join on the key: the rows meet their labels in one partition
            lab = self._files(ray, labels).map_batches(partial(_read_labels, key), batch_format="pyarrow",
                                                       batch_size=1)
            ds = ds.join(lab, join_type="inner", num_partitions=parts, on=(key,))
        ds = ds.map_batches(partial(_key_group, parts, None if labels is not None else key),
                            batch_format="pyarrow", batch_size=None)
        out = ds.groupby(_PART, num_partitions=parts).map_groups(
            partial(_run_group, partial(_apply_group, fn, order, str(out_dir))), batch_format="pyarrow")
        for r in out.take_all():
            add_counts(totals, json.loads(r["summary"]))
        log.info("map_groups on ray: %d partitions", parts)
        return sorted(out_dir.glob("part-*.parquet")), totals

    def top_k(self, scores: pl.DataFrame | list[Path], k: int, *, score: str = "score", order: str,
              higher_is_better: bool) -> pl.DataFrame:
        if isinstance(scores, pl.DataFrame) and scores.height == 0:
            return scores
        ray = self._ray()
        if isinstance(scores, pl.DataFrame):  # a frame the selector scored: split into blocks for the workers
            step = -(-scores.height // min(self._parts(ray), scores.height))
            ds = ray.data.from_arrow([scores.slice(i, step).to_arrow() for i in range(0, scores.height, step)])
            schema = scores.schema
        else:
            if not scores:
                return pl.DataFrame()
            ds = self._files(ray, scores).map_batches(partial(_read_keyed, None, lambda df: df),
                                                      batch_format="pyarrow", batch_size=1)
            schema = pl.read_parquet_schema(scores[0])
        best = ds.map_batches(partial(_block_top, k, score, order, higher_is_better), batch_format="pyarrow",
                              batch_size=None)
        blocks = [pl.from_arrow(t) for t in ray.get(best.to_arrow_refs())]
        frames = [f for f in blocks if f.height]
        cands = pl.concat(frames) if frames else pl.DataFrame(schema=schema)
        return top_rows(cands, k, score=score, order=order, higher_is_better=higher_is_better)
