"""Spilled segment output: one folder per shard, one parquet file per batch, under the work dir.

A folder per shard (rather than one file) lets a shard be renamed into place only when complete. Its
batches may differ in type where a metadata field does (``tags: 1`` in one batch, ``[1, 2]`` in the
next); ``close`` rewrites the few batches that differ so every batch of a shard has one schema (the rule
of :mod:`curate.io.schema`), and :func:`read_spills` conforms batches across shards, so a global stage
that concatenates them never meets a ``SchemaError``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import polars as pl

from curate.io.schema import common_schema, conform

#: Spill files are written uncompressed: polars' lz4 tripled the write (0.10 vs 0.03-0.04 CPU-s per 19 MB
#: of text: 1.0 of a 200k-document MinHash run's 12 CPU-s) and made reads no faster, for files 1.47x smaller
#: (13.1 vs 19.2 MB). Scratch disk is the price: a spill is about the size of the input's text.
SPILL_COMPRESSION = "uncompressed"


class SpillWriter:
    def __init__(self, final_dir: Path):
        self.final = final_dir
        self.tmp = final_dir.with_name(f".tmp-{os.getpid()}-{final_dir.name}")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self.n = 0
        self._schemas: list[dict[str, pl.DataType]] = []

    def write(self, batch: pl.DataFrame) -> None:
        if batch.height:
            batch.write_parquet(self.tmp / f"batch-{self.n:06d}.parquet", compression=SPILL_COMPRESSION)
            self._schemas.append(dict(batch.schema))
            self.n += 1

    def close(self) -> None:
        common = common_schema(self._schemas)
        for i, schema in enumerate(self._schemas):
            if list(schema.items()) != list(common.items()):
                f = self.tmp / f"batch-{i:06d}.parquet"
                conform(pl.read_parquet(f), common).write_parquet(f, compression=SPILL_COMPRESSION)
        shutil.rmtree(self.final, ignore_errors=True)
        os.replace(self.tmp, self.final)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _conform_columns(df: pl.DataFrame, schema: dict[str, pl.DataType] | None) -> pl.DataFrame:
    if schema is None:
        return df
    return conform(df, {c: schema[c] for c in df.columns if c in schema})


def read_spill(shard_dir: Path, columns: Sequence[str] | None = None,
               schema: dict[str, pl.DataType] | None = None) -> Iterator[pl.DataFrame]:
    """Batches of a spilled shard, in order; ``columns`` reads only those (parquet projection);
    ``schema`` (from :func:`spill_schema`) conforms them to the types of other shards."""
    for f in sorted(Path(shard_dir).glob("batch-*.parquet")):
        yield _conform_columns(pl.read_parquet(f, columns=list(columns) if columns is not None else None), schema)


def spill_schema(shard_dirs: Sequence[Path]) -> dict[str, pl.DataType]:
    """The common schema of spilled shards (each shard's batches share one, so its first batch says it)."""
    schemas = []
    for d in shard_dirs:
        first = next(iter(sorted(Path(d).glob("batch-*.parquet"))), None)
        if first is not None:
            schemas.append(pl.read_parquet_schema(first))
    return common_schema(schemas)


def read_spills(shard_dirs: Sequence[Path], columns: Sequence[str] | None = None) -> Iterator[pl.DataFrame]:
    """Every batch of several spilled shards, in order, all with one schema (safe to ``pl.concat``)."""
    schema = spill_schema(shard_dirs)
    for d in shard_dirs:
        yield from read_spill(d, columns, schema)
