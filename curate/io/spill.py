"""Spilled segment output: one folder per shard, one parquet file per batch, under the work dir.

A folder per shard (rather than one file) means metadata columns may change type between batches
without breaking a writer, and a shard is renamed into place only when complete.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import polars as pl


class SpillWriter:
    def __init__(self, final_dir: Path):
        self.final = final_dir
        self.tmp = final_dir.with_name(f".tmp-{os.getpid()}-{final_dir.name}")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self.n = 0

    def write(self, batch: pl.DataFrame) -> None:
        if batch.height:
            batch.write_parquet(self.tmp / f"batch-{self.n:06d}.parquet", compression="lz4")
            self.n += 1

    def close(self) -> None:
        shutil.rmtree(self.final, ignore_errors=True)
        os.replace(self.tmp, self.final)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def read_spill(shard_dir: Path, columns: Sequence[str] | None = None) -> Iterator[pl.DataFrame]:
    """Batches of a spilled shard, in order; ``columns`` reads only those (parquet projection)."""
    for f in sorted(Path(shard_dir).glob("batch-*.parquet")):
        yield pl.read_parquet(f, columns=list(columns) if columns is not None else None)
