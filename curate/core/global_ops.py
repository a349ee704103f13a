"""The global steps of a fit (grouping rows by a key, connected components, a function per group, top-k),
as one interface a global stage calls through its :class:`~curate.core.operator.FitContext` and an
executor may replace.

:class:`GlobalOps` is the local implementation: everything in the driver process with polars (lazy scans of
the per-shard files, one band or hash partition in memory at a time) and a numba union-find. The Ray
executor installs :class:`curate.executors.ray_global.RayGlobalOps`, which runs the same steps as Ray Data
shuffles (``groupby(...).map_groups``) so that pairs, hashes and scores never pass through the driver; both
give the same result (same groups, same components, same ``label`` per node, same top-k), which
``tests/executors/test_ray_global.py`` checks.

Files in, files out: every input and output is a parquet file on storage every worker sees (the run's work
dir), so the Ray implementation writes its partitions where the local one writes its files, and a stage
reads the result the same way whichever ran.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl

#: columns of a label file of :meth:`GlobalOps.connected_components`
NODE, LABEL = "node", "label"
#: the group column :meth:`GlobalOps.map_groups` adds to the rows it hands to a group function
GROUP = "__group"

#: a group function of :meth:`GlobalOps.map_groups`: the rows of one partition (whole groups, sorted) ->
#: (a frame written as that partition's result, integer counters summed over the partitions)
GroupFn = Callable[[pl.DataFrame], "tuple[pl.DataFrame, dict[str, int]]"]


def star_pairs_of(df: pl.DataFrame, node: str) -> pl.DataFrame:
    """The groups of equal ``k`` with more than one row in ``df`` (columns ``node``, ``k``) as star pairs
    (a, b): a = the group's smallest ``node``, b = each other member, sorted by (a, b) (a group is a run of
    equal a with its members in ``node`` order). Shared by the local and the Ray implementations, so a
    partition's pair file is the same bytes whichever ran."""
    df = df.filter(pl.col("k").is_duplicated())
    return (df.with_columns(pl.col(node).min().over("k").alias("a"))
            .filter(pl.col(node) != pl.col("a")).select(pl.col("a"), pl.col(node).alias("b"))
            .sort(["a", "b"]))


def first_of_groups(df: pl.DataFrame, *, key: str, order: str, value: str) -> tuple[pl.DataFrame, int]:
    """For rows of ``df`` grouped by equal ``key``: every row but the group's first (smallest ``order``), with
    the first row's ``value`` as ``dup_of``, sorted by ``order``; and the number of groups. Shared by both
    implementations of :meth:`GlobalOps.group_first`."""
    first = df.group_by(key).agg(pl.col(value).sort_by(order).first().alias("dup_of"),
                                 pl.col(order).min().alias("__first"))
    dups = (df.join(first, on=key).filter(pl.col(order) != pl.col("__first")).select(order, "dup_of")
            .sort(order))
    return dups, first.height


def pair_file_name(band: int, part: int, parts: int) -> str:
    return f"band{band:03d}-part{part:04d}-of{parts}.parquet"


def star_parts(nrows: int, memory_mb: int) -> int:
    """Hash partitions per key column so one partition's working set stays under ``memory_mb``
    (~64 bytes per row: (node, key) read, the is_duplicated hash table, sort buffers)."""
    return max(1, math.ceil(nrows * 64 / (memory_mb << 20)))


def top_rows(frame: pl.DataFrame, k: int, *, score: str, order: str, higher_is_better: bool) -> pl.DataFrame:
    """The ``k`` best rows of ``frame``: by ``score`` (NaN and null last), ties by ascending ``order``
    (unique, so the result is one set whatever the blocks were). Shared by both implementations."""
    s = pl.col(score).cast(pl.Float64).fill_nan(None)
    return frame.sort([s, pl.col(order)], descending=[higher_is_better, False], nulls_last=True).head(k)


def group_part_name(part: int) -> str:
    return f"part-{part:04d}.parquet"


def run_group_fn(fn: GroupFn, order: list[str] | None, df: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, int]]:
    """``fn`` on one partition's rows sorted by ``order`` (then by group, so a group's rows are adjacent
    whatever order the rows came in). Shared by both implementations of :meth:`GlobalOps.map_groups`."""
    return fn(df.sort([GROUP, *(order or [])], maintain_order=True))


def add_counts(total: dict[str, int], summary: dict[str, int]) -> None:
    for name, value in summary.items():
        total[name] = total.get(name, 0) + int(value)


def _write_atomic(df: pl.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    df.write_parquet(tmp)
    tmp.replace(path)


class GlobalOps:
    """The global steps, run in the driver process (the local executor's, and the default)."""

    #: shown in logs and stats: where the global steps ran
    where = "driver"

    def star_pairs(self, files: list[Path], *, key_columns: list[str], node: str, out_dir: Path,
                   active: str | None = None, memory_mb: int = 1024, nrows: int = 0) -> list[Path]:
        """Per key column, the groups of rows (over all ``files``) with equal key and more than one member,
        as star pairs (:func:`star_pairs_of`): one parquet file per (key column, hash partition), named by
        :func:`pair_file_name`, returned in (column, partition) order. Rows whose ``active`` column is 0
        take no part. A file already there (an interrupted run) is reused. Used by MinHash (one key column
        per LSH band: a group is a bucket)."""
        if not files:
            return []
        out_dir.mkdir(parents=True, exist_ok=True)
        parts = star_parts(nrows, memory_mb)
        out = []
        for band, col in enumerate(key_columns):
            for part in range(parts):
                f = out_dir / pair_file_name(band, part, parts)
                out.append(f)
                if f.exists():
                    continue
                lf = pl.scan_parquet(files)
                if active is not None:
                    lf = lf.filter(pl.col(active) > 0)
                lf = lf.select(pl.col(node), pl.col(col).alias("k"))
                if parts > 1:
                    lf = lf.filter(pl.col("k") % parts == part)
                _write_atomic(star_pairs_of(lf.filter(pl.col("k").is_duplicated()).collect(), node), f)
        return out

    def group_first(self, files: list[Path], *, key: str, order: str, value: str,
                    out_dir: Path) -> tuple[list[Path], int]:
        """Rows of ``files`` grouped by equal ``key``: files of (``order``, ``dup_of``) for every row but
        each group's first (smallest ``order``, ``dup_of`` = the first row's ``value``), and the number of
        groups. Used by exact dedup (key: the text hash; order: the input position)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        if not files:
            return [], 0
        dups, groups = first_of_groups(pl.scan_parquet(files).select(order, key, value).collect(),
                                       key=key, order=order, value=value)
        f = out_dir / "dups-0000.parquet"
        _write_atomic(dups, f)
        return [f], groups

    def connected_components(self, edge_files: list[Path], *, out_dir: Path, a: str = "a",
                             b: str = "b") -> list[Path]:
        """Connected components of the undirected graph whose edges are the (``a``, ``b``) rows of
        ``edge_files`` (UInt64 node ids): files of (``node``, ``label``) for every node on an edge, the label
        being the smallest node of its component. Local: one union-find over all edges."""
        out_dir.mkdir(parents=True, exist_ok=True)
        f = out_dir / "labels-0000.parquet"
        schema = {NODE: pl.UInt64, LABEL: pl.UInt64}
        edges = (pl.scan_parquet(edge_files).select(pl.col(a).cast(pl.UInt64), pl.col(b).cast(pl.UInt64))
                 .collect() if edge_files else pl.DataFrame(schema={a: pl.UInt64, b: pl.UInt64}))
        nodes = np.unique(np.concatenate([edges[a].to_numpy(), edges[b].to_numpy()]))
        if not len(nodes):
            _write_atomic(pl.DataFrame(schema=schema), f)
            return [f]
        ia = np.searchsorted(nodes, edges[a].to_numpy()).astype(np.int64)
        ib = np.searchsorted(nodes, edges[b].to_numpy()).astype(np.int64)
        from curate.core._cc_kernel import min_label_union_find  # numba: loaded when components are needed

        root = min_label_union_find(len(nodes), ia, ib)
        _write_atomic(pl.DataFrame({NODE: nodes, LABEL: nodes[root]}, schema=schema), f)
        return [f]

    def map_groups(self, files: list[Path], *, key: str, fn: GroupFn, out_dir: Path,
                   columns: list[str] | None = None, order: list[str] | None = None,
                   labels: list[Path] | None = None, file_index: str | None = None, memory_mb: int = 1024,
                   nrows: int = 0) -> tuple[list[Path], dict[str, int]]:
        """Run ``fn`` over groups of the rows of ``files``, one hash partition of groups at a time: each
        row's group (column ``GROUP``) is its ``key`` column, or, with ``labels`` (files of ``NODE``,
        ``LABEL`` and optional more columns, joined on), the ``LABEL`` of its ``key`` (rows without a
        label are dropped); every column of ``labels`` but ``NODE`` is joined onto the row. A group never
        spans partitions, and ``fn`` sees its partition's rows sorted by (``GROUP``, ``order``), so a
        ``fn`` whose result per group depends only on that group's rows gives the same results however
        the groups were partitioned (locally ``star_parts(nrows, memory_mb)`` partitions, on Ray twice
        the CPUs). ``file_index`` names a column to add holding the row's file's position in ``files``.
        Returns each partition's result file (``group_part_name``; empty partitions have none) and the
        counters of ``fn`` summed. Used by MinHash (the verified union, groups: components of the bucket
        graph; the keep step, groups: clusters) and SemDeDup (groups: k-means clusters)."""
        shutil.rmtree(out_dir, ignore_errors=True)  # another partition count would leave stale parts
        out_dir.mkdir(parents=True)
        totals: dict[str, int] = {}
        if not files:
            return [], totals
        frames = []
        for i, f in enumerate(files):
            lf = pl.scan_parquet(f)
            if columns is not None:
                lf = lf.select(columns)
            if file_index is not None:
                lf = lf.with_columns(pl.lit(i, dtype=pl.Int64).alias(file_index))
            frames.append(lf)
        rows = pl.concat(frames, how="vertical_relaxed")
        if labels is not None:
            lab = pl.scan_parquet(labels).rename({NODE: key, LABEL: GROUP})
            rows = rows.join(lab, on=key, how="inner")
        else:
            rows = rows.with_columns(pl.col(key).alias(GROUP))
        parts = star_parts(nrows, memory_mb)
        out = []
        for part in range(parts):
            sub = rows if parts == 1 else rows.filter(pl.col(GROUP).cast(pl.UInt64) % parts == part)
            df = sub.collect()
            if not df.height:
                continue
            res, summary = run_group_fn(fn, order, df)
            add_counts(totals, summary)
            f = out_dir / group_part_name(part)
            _write_atomic(res, f)
            out.append(f)
        return out, totals

    def top_k(self, scores: pl.DataFrame | list[Path], k: int, *, score: str = "score", order: str,
              higher_is_better: bool) -> pl.DataFrame:
        """The ``k`` best rows of ``scores`` (a frame or parquet files), best first: by ``score`` (NaN and
        null last), ties by ascending ``order``."""
        if isinstance(scores, pl.DataFrame):
            return top_rows(scores, k, score=score, order=order, higher_is_better=higher_is_better)
        # files: a lazy sort + head, which polars runs as a top-k (not a sort of all rows held at once)
        return top_rows(pl.scan_parquet(scores), k, score=score, order=order,  # type: ignore[arg-type]
                        higher_is_better=higher_is_better).collect()
