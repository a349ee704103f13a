"""Sharded, atomic writers for kept documents and rejects (jsonl, jsonl.gz, jsonl.zst, parquet).

Each input shard writes its own part file(s) under a temporary name; ``close()`` renames them once the
shard is complete, so a crash never leaves a file that looks finished.

Outputs read back with plain tools: every jsonl part has one schema (batches whose metadata types
differ are conformed by the rule of :mod:`curate.io.schema`), rejects parts are typed in their first
100 lines (``pl.read_ndjson`` infers from those), and :func:`unify_parts` gives all parquet parts of a
folder one schema at the end of a run, so ``pl.scan_parquet("out/*.parquet")`` works.
"""

from __future__ import annotations

import io
import logging
import os
import re
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator

from curate.io.schema import common_schema, conform

log = logging.getLogger("curate.io")
#: rows ``pl.read_ndjson`` infers a schema from (its ``infer_schema_length`` default)
_INFER_ROWS = 100

Format = Literal["jsonl", "jsonl.gz", "jsonl.zst", "parquet"]
#: gzip level when none is given: zlib's and the gzip tool's own default. Level 9 (Python's ``GzipFile``
#: default, which curate used before) is 1.4x the CPU of level 6 in stdlib zlib (2x in polars' zlib-rs)
#: for parts 0.3-0.9% smaller (20k web/review documents, issue 18).
GZIP_LEVEL = 6
_LEVELS = {"jsonl.gz": (0, 9), "jsonl.zst": (1, 22)}
_LEVEL_HELP = ("compression level of jsonl.gz (0-9, default 6: zlib's and gzip's default) and jsonl.zst "
               "(1-22, default 3: zstandard's) parts; not used for jsonl or parquet")


def _check_level(fmt: str, level: int | None) -> None:
    if level is None:
        return
    if fmt not in _LEVELS:
        raise ValueError(f"compression_level is for jsonl.gz and jsonl.zst, not {fmt}")
    lo, hi = _LEVELS[fmt]
    if not lo <= level <= hi:
        raise ValueError(f"compression_level for {fmt} must be {lo}-{hi}, got {level}")


class OutputSpec(BaseModel):
    """Where kept documents go (the ``output:`` block)."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="output folder; one part file per input shard; a URI "
                      "(s3://bucket/prefix) is written to a local stage in the work dir and uploaded when "
                      "the run completes, one complete object per part (curate.io.storage)")
    format: Format = "jsonl"
    columns: list[str] | None = Field(None, description="write only these columns (id and text always); "
                                      "default: every column, score columns included")
    overwrite: bool = Field(False, description="allow writing into a non-empty output, rejects or work folder "
                            "that curate did not create; curate still never deletes or replaces a file it did "
                            "not write (a name clash with such a file is an error). Default off: a folder "
                            "that holds other files is refused before any work")
    compression_level: int | None = Field(None, description=_LEVEL_HELP)
    storage_options: dict[Literal["endpoint_override", "region", "scheme"], str] = Field(
        default_factory=dict, description="non-secret pyarrow S3FileSystem options for an s3:// path; "
        "credentials only from the environment")

    @model_validator(mode="after")
    def _level(self) -> OutputSpec:
        _check_level(self.format, self.compression_level)
        return self


class RejectsSpec(BaseModel):
    """Where dropped documents go, one folder per step, with reason, score and threshold."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="rejects folder (or s3:// URI, staged and uploaded as the output is)")
    format: Format = "jsonl"
    keep_text: bool = True
    compression_level: int | None = Field(None, description=_LEVEL_HELP)
    storage_options: dict[Literal["endpoint_override", "region", "scheme"], str] = Field(
        default_factory=dict, description="non-secret pyarrow S3FileSystem options for an s3:// path")

    @model_validator(mode="after")
    def _level(self) -> RejectsSpec:
        _check_level(self.format, self.compression_level)
        return self


def _public(df: pl.DataFrame) -> pl.DataFrame:
    hidden = [c for c in df.columns if c.startswith("__")]
    return df.drop(hidden) if hidden else df


class ShardWriter:
    """Writes the batches of one shard to ``<folder>/<stem>.<ext>``; parquet opens a new part when the
    schema of a batch cannot be cast to the first one (metadata fields that change type).

    ``typed_head``: reorder a jsonl part, if needed, so that every column with a value has one in the
    first 100 lines (rejects: a field null in the first rejected rows made ``pl.read_ndjson`` fail with
    "got non-null value for NULL-typed column"). ``id_hashes``: write the 64-bit hash of every ``id``
    there (a ``.npy``) for the run's duplicate-id count. ``level``: the gzip/zstd level
    (:attr:`OutputSpec.compression_level`; default :data:`GZIP_LEVEL` / zstandard's 3).

    jsonl.gz parts are written by polars' own gzip encoder (zlib-rs), one gzip member per batch: a
    stream of concatenated members is one valid gzip file (RFC 1952), read whole by ``gzip``, ``zcat``,
    ``pl.read_ndjson`` and curate's readers. Python's ``gzip.GzipFile`` at its default level 9 spent
    ~10 MB/s of ndjson, more CPU than the whole MinHash run it wrote out (issue 18).
    """

    def __init__(self, folder: str | Path, stem: str, fmt: Format, *, typed_head: bool = False,
                 id_hashes: Path | None = None, level: int | None = None):
        _check_level(fmt, level)
        self.folder, self.stem, self.fmt, self.level = Path(folder), stem, fmt, level
        self.folder.mkdir(parents=True, exist_ok=True)
        self._tmp: list[tuple[Path, Path]] = []
        self._fh: IO[bytes] | None = None
        self._pq = None
        self._schema: pl.Schema | None = None
        self.rows = 0
        self.typed_head = typed_head
        self.id_hashes = id_hashes
        self._hashes: list = []
        # jsonl: (schema, bytes) of each batch - in the file for jsonl.gz (the batch's gzip member), of the
        # decompressed stream otherwise - and the first row holding each column's value
        self._batches: list[tuple[dict, int]] = []
        self._first_value: dict[str, int] = {}

    @property
    def current(self) -> Path | None:
        """The final name of the part file being written now (None before the first write)."""
        return self._tmp[-1][1] if self._tmp else None

    def _new_path(self) -> Path:
        n = len(self._tmp)
        ext = self.fmt if self.fmt != "parquet" else "parquet"
        final = self.folder / (f"{self.stem}.{ext}" if n == 0 else f"{self.stem}-{n}.{ext}")
        tmp = self.folder / f".tmp-{os.getpid()}-{final.name}"
        self._tmp.append((tmp, final))
        return tmp

    def _open_jsonl(self, tmp: Path) -> IO[bytes]:
        """The part's file: raw for jsonl and jsonl.gz (batches arrive as gzip members), a zstd stream."""
        raw = open(tmp, "wb")
        if self.fmt == "jsonl.zst":
            import zstandard

            lvl = 3 if self.level is None else self.level  # zstandard's own default
            return zstandard.ZstdCompressor(level=lvl).stream_writer(raw)  # closes raw with itself
        return raw

    def _encode(self, df: pl.DataFrame) -> bytes:
        """``df`` as ndjson bytes for the part file: one gzip member (header mtime 0, so reruns are
        byte-identical) for jsonl.gz, plain ndjson for the others (zstd compresses in its stream)."""
        buf = io.BytesIO()
        if self.fmt == "jsonl.gz":
            lvl = GZIP_LEVEL if self.level is None else self.level
            df.write_ndjson(buf, compression="gzip", compression_level=lvl)
        else:
            df.write_ndjson(buf)
        return buf.getvalue()

    def write(self, batch: pl.DataFrame) -> None:
        batch = _public(batch)
        if batch.height == 0:
            return
        if self.id_hashes is not None and "id" in batch.columns:
            self._hashes.append(batch.get_column("id").hash(seed=0).to_numpy())
        if self.fmt == "parquet":
            self.rows += batch.height
            self._write_parquet(batch)
            return
        if self._fh is None:
            self._fh = self._open_jsonl(self._new_path())
        if self.typed_head:
            for c in batch.columns:
                if c not in self._first_value:
                    col = batch.get_column(c)
                    nulls = col.null_count()  # O(1): Arrow keeps the count, no scan for the common cases
                    if nulls == 0:
                        self._first_value[c] = self.rows
                    elif nulls < col.len():
                        self._first_value[c] = self.rows + int(col.is_not_null().arg_true()[0])
        self.rows += batch.height
        data = self._encode(batch)
        self._batches.append((dict(batch.schema), len(data)))
        self._fh.write(data)

    def _fix_jsonl(self, tmp: Path) -> None:
        """Rewrite the jsonl part if its batches differ in schema or a column's first value lies past the
        rows polars infers from: conform every batch to the common schema, move the first row holding
        each late column's value to the front (rejects only). Most parts need neither."""
        common = common_schema(s for s, _ in self._batches)
        mixed = any(list(s.items()) != list(common.items()) for s, _ in self._batches)
        front = sorted({r for r in self._first_value.values() if r >= _INFER_ROWS}) if self.typed_head else []
        if not mixed and not front:
            return
        from curate.io.readers import open_binary

        fixed = tmp.with_name(tmp.name + ".fix")
        parts: list[pl.DataFrame] = []
        gz = self.fmt == "jsonl.gz"
        with open(tmp, "rb") if gz else open_binary(str(tmp)) as src:
            for schema, n in self._batches:
                data = zlib.decompress(src.read(n), wbits=31) if gz else src.read(n)  # 31: one gzip member
                parts.append(conform(pl.read_ndjson(io.BytesIO(data), schema=schema), common))
        # the part is one shard's rows of one step: held once here, only in this rare case
        df = pl.concat(parts, how="vertical")
        if front:
            pick = pl.Series(range(df.height)).is_in(front)
            df = pl.concat([df.filter(pick), df.filter(~pick)])
        with self._open_jsonl(fixed) as fh:
            fh.write(self._encode(df))
        os.replace(fixed, tmp)

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
            self._fix_jsonl(self._tmp[0][0])
        if self._pq is not None:
            self._pq.close()
        if self.id_hashes is not None:
            import numpy as np

            self.id_hashes.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.id_hashes.with_name(f".tmp-{os.getpid()}-{self.id_hashes.name}")
            with open(tmp, "wb") as f:
                np.save(f, np.concatenate(self._hashes) if self._hashes else np.zeros(0, dtype=np.uint64))
            os.replace(tmp, self.id_hashes)
        finals = []
        for tmp, final in self._tmp:
            os.replace(tmp, final)
            finals.append(final)
        return finals

    def abort(self) -> None:
        for h in (self._fh, self._pq):
            if h is not None:
                try:
                    h.close()
                except Exception:  # noqa: BLE001 - best effort: the files are deleted next
                    pass
        for tmp, _ in self._tmp:
            tmp.unlink(missing_ok=True)


_PART = re.compile(r"^part-\d{5}(-\d+)?\.parquet$")


def curate_parts(folder: str | Path) -> list[Path]:
    """The parquet part files curate writes in ``folder`` (``part-00000.parquet``, ``part-00000-1.parquet``),
    never a user's or another tool's files beside them (``part-00000-3f2a-c000.snappy.parquet``)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _PART.match(p.name))


def unify_parts(parts: Sequence[Path]) -> list[Path]:
    """Give parquet ``parts`` one schema (each column's supertype by :mod:`curate.io.schema`, columns in
    one order): parts that differ are rewritten atomically, the others are not touched. Returns the
    parts rewritten."""
    schemas = [pl.read_parquet_schema(p) for p in parts]
    common = common_schema(schemas)
    done: list[Path] = []
    for p, schema in zip(parts, schemas):
        if list(schema.items()) == list(common.items()):
            continue
        tmp = p.with_name(f".tmp-{os.getpid()}-{p.name}")
        conform(pl.read_parquet(p), common).write_parquet(tmp, compression="zstd")
        os.replace(tmp, p)
        done.append(p)
    return done


def unify_output(output: OutputSpec, rejects: RejectsSpec | None = None) -> list[Path]:
    """End of a run: one schema across the parquet parts of the output, and of each rejects step.
    Returns the parts rewritten (their completion markers must record the new sizes)."""
    done = unify_parts(curate_parts(output.path)) if output.format == "parquet" else []
    if rejects is not None and rejects.format == "parquet" and Path(rejects.path).is_dir():
        for step in sorted(p for p in Path(rejects.path).iterdir() if p.is_dir()):
            done += unify_parts(curate_parts(step))
    return done


def count_duplicate_ids(hash_files: Iterable[Path]) -> int:
    """Documents whose ``id`` equals an earlier one's, from the per-shard 64-bit id hashes (8 bytes a
    document in memory; a false match needs a 64-bit collision, ~N^2/2^65)."""
    import numpy as np

    arrays = [np.load(f) for f in hash_files if Path(f).exists()]
    if not arrays:
        return 0
    h = np.concatenate(arrays)
    del arrays
    h.sort()
    return int(np.count_nonzero(h[1:] == h[:-1])) if h.size > 1 else 0


def write(path: str, format: Format = "jsonl", **kwargs) -> OutputSpec:  # noqa: A002
    """Python API: ``write("out/", format="parquet")`` - the output of a :class:`Pipeline`."""
    return OutputSpec(path=path, format=format, **kwargs)


def write_jsonl(path: str, **kwargs) -> OutputSpec:
    return OutputSpec(path=path, format="jsonl", **kwargs)


def write_parquet(path: str, **kwargs) -> OutputSpec:
    return OutputSpec(path=path, format="parquet", **kwargs)


_PART_SUFFIXES = (".parquet", ".jsonl", ".jsonl.gz", ".jsonl.zst")


def read_part(path: str | Path, *, columns: list[str] | None = None, n_rows: int | None = None) -> pl.DataFrame:
    """One part file (parquet, jsonl, jsonl.gz, jsonl.zst): only ``columns`` (those it has) and the first
    ``n_rows`` rows when given."""
    p = Path(path)
    if p.suffix == ".parquet":
        lf = pl.scan_parquet(p)
        if columns is not None:
            have = lf.collect_schema().names()
            lf = lf.select([c for c in columns if c in have])
        return (lf.head(n_rows) if n_rows is not None else lf).collect()
    if p.name.endswith((".gz", ".zst")):
        from curate.io.readers import open_binary

        with open_binary(str(p)) as fh:
            df = pl.read_ndjson(io.BytesIO(fh.read()), infer_schema_length=None, n_rows=n_rows)
    else:
        df = pl.read_ndjson(p, infer_schema_length=None, n_rows=n_rows)
    return df.select([c for c in columns if c in df.columns]) if columns is not None else df


def read_output(path: str | Path) -> pl.DataFrame:
    """Read back every part file of an output folder in shard order (for tests and notebooks)."""
    parts = sorted(p for p in Path(path).iterdir() if p.name.startswith("part-") or p.name.startswith("shard-"))
    frames = [read_part(p) for p in parts if p.name.endswith(_PART_SUFFIXES)]
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()
