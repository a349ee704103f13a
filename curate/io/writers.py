"""Sharded, atomic writers for kept documents and rejects (jsonl, jsonl.gz, jsonl.zst, parquet).

Each input shard writes its own part file(s) under a temporary name; ``commit()`` renames them once the
shard is complete, so a crash never leaves a file that looks finished.
"""

from __future__ import annotations

import gzip
import io
import os
from pathlib import Path
from typing import IO, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

Format = Literal["jsonl", "jsonl.gz", "jsonl.zst", "parquet"]


class OutputSpec(BaseModel):
    """Where kept documents go (the ``output:`` block)."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="output folder; one part file per input shard")
    format: Format = "jsonl"
    columns: list[str] | None = Field(None, description="write only these columns (id and text always); "
                                      "default: every column, score columns included")
    overwrite: bool = Field(False, description="allow writing into a non-empty output, rejects or work folder "
                            "that curate did not create; curate still never deletes or replaces a file it did "
                            "not write (a name clash with such a file is an error). Default off: a folder "
                            "that holds other files is refused before any work")


class RejectsSpec(BaseModel):
    """Where dropped documents go, one folder per step, with reason, score and threshold."""

    model_config = ConfigDict(extra="forbid")

    path: str
    format: Format = "jsonl"
    keep_text: bool = True


def _public(df: pl.DataFrame) -> pl.DataFrame:
    return df.select([c for c in df.columns if not c.startswith("__")])


class ShardWriter:
    """Writes the batches of one shard to ``<folder>/<stem>.<ext>``; parquet opens a new part when the
    schema of a batch cannot be cast to the first one (metadata fields that change type)."""

    def __init__(self, folder: str | Path, stem: str, fmt: Format):
        self.folder, self.stem, self.fmt = Path(folder), stem, fmt
        self.folder.mkdir(parents=True, exist_ok=True)
        self._tmp: list[tuple[Path, Path]] = []
        self._fh: IO[bytes] | None = None
        self._pq = None
        self._schema: pl.Schema | None = None
        self.rows = 0

    def _new_path(self) -> Path:
        n = len(self._tmp)
        ext = self.fmt if self.fmt != "parquet" else "parquet"
        final = self.folder / (f"{self.stem}.{ext}" if n == 0 else f"{self.stem}-{n}.{ext}")
        tmp = self.folder / f".tmp-{os.getpid()}-{final.name}"
        self._tmp.append((tmp, final))
        return tmp

    def write(self, batch: pl.DataFrame) -> None:
        batch = _public(batch)
        if batch.height == 0:
            return
        self.rows += batch.height
        if self.fmt == "parquet":
            self._write_parquet(batch)
            return
        if self._fh is None:
            tmp = self._new_path()
            raw = open(tmp, "wb")
            if self.fmt == "jsonl.gz":
                self._fh = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0)  # mtime=0: byte-identical reruns
                self._raw = raw
            elif self.fmt == "jsonl.zst":
                import zstandard

                self._fh = zstandard.ZstdCompressor().stream_writer(raw)
            else:
                self._fh = raw
        buf = io.BytesIO()
        batch.write_ndjson(buf)
        self._fh.write(buf.getvalue())

    def _write_parquet(self, batch: pl.DataFrame) -> None:
        import pyarrow.parquet as pq

        if self._schema is not None and batch.schema != self._schema:
            cast = None
            if set(batch.columns) == set(self._schema):  # same columns: a lossless cast keeps one part file
                try:
                    cast = batch.select(list(self._schema)).cast(dict(self._schema), strict=True)  # type: ignore[arg-type]
                    if not cast.equals(batch.select(list(self._schema))):
                        cast = None
                except Exception:  # noqa: BLE001 - incompatible types
                    cast = None
            if cast is None:  # new columns or types: start a new part file rather than lose data
                self._pq.close()
                self._pq = None
            else:
                batch = cast
        if self._pq is None:
            self._schema = batch.schema
            self._pq = pq.ParquetWriter(self._new_path(), batch.to_arrow().schema, compression="zstd")
        self._pq.write_table(batch.to_arrow())

    def close(self) -> list[Path]:
        """Finish and rename the part files; returns their final paths."""
        if self._fh is not None:
            self._fh.close()
            if getattr(self, "_raw", None) is not None:
                self._raw.close()
        if self._pq is not None:
            self._pq.close()
        finals = []
        for tmp, final in self._tmp:
            os.replace(tmp, final)
            finals.append(final)
        return finals

    def abort(self) -> None:
        for h in (self._fh, getattr(self, "_raw", None), self._pq):
            if h is not None:
                try:
                    h.close()
                except Exception:  # noqa: BLE001 - best effort: the files are deleted next
                    pass
        for tmp, _ in self._tmp:
            tmp.unlink(missing_ok=True)


def write(path: str, format: Format = "jsonl", **kwargs) -> OutputSpec:  # noqa: A002
    """Python API: ``write("out/", format="parquet")`` - the output of a :class:`Pipeline`."""
    return OutputSpec(path=path, format=format, **kwargs)


def write_jsonl(path: str, **kwargs) -> OutputSpec:
    return OutputSpec(path=path, format="jsonl", **kwargs)


def write_parquet(path: str, **kwargs) -> OutputSpec:
    return OutputSpec(path=path, format="parquet", **kwargs)


def read_output(path: str | Path) -> pl.DataFrame:
    """Read back every part file of an output folder in shard order (for tests and notebooks)."""
    parts = sorted(p for p in Path(path).iterdir() if p.name.startswith("part-") or p.name.startswith("shard-"))
    frames = []
    for p in parts:
        if p.suffix == ".parquet":
            frames.append(pl.read_parquet(p))
        elif p.name.endswith(".jsonl"):
            frames.append(pl.read_ndjson(p, infer_schema_length=None))
        elif p.name.endswith((".gz", ".zst")):
            from curate.io.readers import _open_binary

            with _open_binary(str(p)) as fh:
                frames.append(pl.read_ndjson(io.BytesIO(fh.read()), infer_schema_length=None))
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()
