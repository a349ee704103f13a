"""Streaming readers: jsonl (plain, .gz, .zst), .json arrays, parquet and folders of .txt files, in
bounded memory.

Every reader yields ``polars.DataFrame`` batches with ``id`` (string) and ``text`` columns, the other
fields as metadata, and the internal row key ``__uid``. Nothing a file holds aborts a run or is lost
silently: each row or file that cannot be a document is skipped, counted per reason, logged with its
file and line (or byte offset) and kept in the rejects sink under step ``read``. The reasons:

``invalid_json`` (a line that is not a JSON object), ``non_utf8``, ``missing_text``, ``empty_text``,
``non_string_text`` (a number, bool, list or object where the text should be), ``invalid_unicode``
(a lone surrogate escape such as ``"\\ud800"``, which has no UTF-8 form; valid pairs are kept exact),
``too_deeply_nested`` (JSON nested past Python's recursion limit), ``truncated_file`` / ``corrupt_file``
(a damaged .gz/.zst stream or parquet file: every complete row before the damage is kept),
``unreadable_file`` (the file cannot be opened or is not a parquet file at all).

Fields whose type varies follow the one rule of :mod:`curate.io.schema`. ``on_error: raise`` turns
every skip into an :class:`~curate.core.errors.InputError` naming the place.
"""

from __future__ import annotations

import io
import json
import logging
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from curate.core.errors import InputError
from curate.core.operator import UID
from curate.io.schema import carry, json_text
from curate.io.shards import Shard, expand_paths, plan_shards
from curate.io.storage import is_uri, open_input, read_bytes

log = logging.getLogger("curate.io")
_MAX_LOGGED = 20  # per shard, so a broken file does not flood the log
_READ_BYTES = 1 << 20  # compressed bytes read at a time


class InputSpec(BaseModel):
    """Where and how to read documents (the ``input:`` block of a pipeline)."""

    model_config = ConfigDict(extra="forbid")

    path: str | list[str] = Field(description="file, folder or glob pattern, or a list of them; a file "
                                  "reached through several names (symlinks, ./a and a) is read once; "
                                  "a URI (s3://bucket/prefix/*.jsonl.gz, any pyarrow.fs URI) is listed and "
                                  "read through pyarrow.fs (curate.io.storage)")
    format: Literal["jsonl", "parquet", "text", "warc"] | None = Field(
        None, description="inferred from extension (.warc/.warc.gz: warc, response records via curate.io.warc)")
    text_field: str = Field("text", description="field holding the document text (after `rename`)")
    id_field: str | None = Field("id", description="field holding a document id (after `rename`); "
                                 "'file:line' when absent")
    rename: dict[str, str] = Field(default_factory=dict, description="rename input fields on read, "
                                   "{old: new}, e.g. to move a user field out of a name curate uses "
                                   "({score: user_score}); applied before text_field/id_field are looked up")
    batch_size: int = Field(2_000, gt=0, description="rows per batch: bounds memory (a 1 GB jsonl ran in "
                                                      "under 1 GB of RAM with 2 workers at 2,000)")
    shard_mb: int = Field(128, gt=0, description="plain jsonl files larger than this are split into shards")
    on_error: Literal["skip", "raise"] = Field("skip", description="skip: bad rows and files are counted, "
                                               "logged and kept in rejects; raise: the first one is an error")
    storage_options: dict[Literal["endpoint_override", "region", "scheme"], str] = Field(
        default_factory=dict, description="non-secret pyarrow S3FileSystem options for s3:// inputs "
        "(e.g. {endpoint_override: 127.0.0.1:9000, scheme: http} for MinIO); credentials come only from the "
        "environment (AWS_ACCESS_KEY_ID, ...), never from YAML; default: pyarrow's own lookup")
    fingerprint: Literal["content", "stat"] = Field(
        "content", description="how a rerun tells whether an input file changed: 'content' hashes every byte "
        "(xxh3_128, about 0.3 s per GB read from the page cache on a 2-core machine; a cold read is bound by "
        "the disk) and catches edits that keep size and mtime; 'stat' compares size and mtime_ns only (free, "
        "but misses an edit followed by `touch -r`); a URI input is always stamped by size and mtime from "
        "the filesystem (pyarrow exposes no ETag; hashing would download the corpus)")

    def files(self) -> list[str]:
        return expand_paths(self.path, dict(self.storage_options))

    def shards(self) -> list[Shard]:
        return plan_shards(self.files(), self.format, self.shard_mb << 20,
                           storage_options=dict(self.storage_options))

    def iter_batches(self) -> Iterator[pl.DataFrame]:
        """Every batch of every shard, in shard order (for side inputs: target sets, training corpora)."""
        for shard in self.shards():
            yield from read_shard(self, shard)

    def raw_key(self, name: str) -> str:
        """The field name in the file that becomes ``name`` after :attr:`rename`."""
        for old, new in self.rename.items():
            if new == name:
                return old
        return name


@dataclass
class ReadReport:
    """What a shard read produced besides rows: skip counts and the skipped rows themselves."""

    lines: int = 0
    skipped: Counter = field(default_factory=Counter)
    rejects: list[dict] = field(default_factory=list)
    logged: int = 0
    #: some row named the text field (even a row skipped for a bad value): a file without it is a config
    #: error (``input.text_field``), a file with it only has bad rows
    saw_text: bool = False

    def skip(self, reason: str, where: str, raw: str | bytes, on_error: str, detail: str = "") -> None:
        msg = reason.replace("_", " ") + (f" ({detail})" if detail else "")
        if on_error == "raise":
            raise InputError(f"{where}: {msg}")
        self.skipped[reason] += 1
        if self.logged < _MAX_LOGGED:
            log.warning("skipping %s: %s", where, msg)
            self.logged += 1
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", "replace")
        # detail is "" rather than null, so every rejects column has a type in its first rows
        self.rejects.append({"id": where, "step": "read", "reason": reason, "raw": raw[:1000], "detail": detail})


# -- bytes ------------------------------------------------------------------------------------------

class _Damaged(Exception):
    """A compressed stream that ends early or cannot be decoded, at compressed byte ``offset``."""

    def __init__(self, reason: str, offset: int, detail: str):
        super().__init__(detail)
        self.reason, self.offset, self.detail = reason, offset, detail


def _decoder(kind: str):
    if kind == "gz":
        return zlib.decompressobj(zlib.MAX_WBITS | 16)
    import zstandard

    return zstandard.ZstdDecompressor().decompressobj()


def _chunks(shard: Shard) -> Iterator[bytes]:
    """The shard's (decompressed) bytes. Damage in a .gz/.zst stream raises :class:`_Damaged` after
    every byte before it was yielded (``gzip.open`` raised a bare EOFError and lost the last block)."""
    p = shard.path.lower()
    kind = "gz" if p.endswith(".gz") else "zst" if p.endswith((".zst", ".zstd")) else None
    with open_input(shard.path, shard.storage) as f:
        if kind is None:
            if shard.start:
                f.seek(shard.start)
            remaining = None if shard.end < 0 else shard.end - shard.start
            while remaining is None or remaining > 0:
                block = f.read(16 << 20 if remaining is None else min(16 << 20, remaining))
                if not block:
                    return
                if remaining is not None:
                    remaining -= len(block)
                yield block
            return
        d, pos, fed = _decoder(kind), 0, False
        import zstandard

        errors = (zlib.error, zstandard.ZstdError)
        while True:
            raw = f.read(_READ_BYTES)
            if not raw:
                if fed and not d.eof:
                    raise _Damaged("truncated_file", pos, f"compressed stream ends early at byte {pos:,}")
                return
            pos += len(raw)
            while raw:
                fed = True
                try:
                    out = d.decompress(raw)
                except errors as e:
                    raise _Damaged("corrupt_file", pos, f"cannot decompress near byte {pos:,}: {e}") from None
                if out:
                    yield out
                raw = d.unused_data if d.eof else b""
                if d.eof and raw:  # another member/frame follows (concatenated .gz / .zst)
                    d, fed = _decoder(kind), False


def open_binary(path: str, storage: dict[str, str] | None = None) -> IO[bytes]:
    """A file's (or object's) decompressed bytes as a file object (for whole-file reads; damage raises
    OSError)."""
    p = path.lower()
    if p.endswith(".gz"):
        import gzip

        if is_uri(path):  # the object stream: gzip reads it forward, no seek needed
            return gzip.GzipFile(fileobj=open_input(path, storage), mode="rb")  # type: ignore[return-value]
        return gzip.open(path, "rb")
    if p.endswith((".zst", ".zstd")):
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open_input(path, storage),
                                                                            closefd=True))
    return open_input(path, storage)


def _line_blocks(shard: Shard, block_bytes: int, rep: ReadReport, name: str,
                 on_error: str) -> Iterator[tuple[list[bytes], int]]:
    """Yield (lines, first_line_number) for the shard's byte range, ~block_bytes at a time."""
    line_no, carry_, buf = shard.first_line, b"", []
    size = 0
    try:
        for chunk in _chunks(shard):
            buf.append(chunk)
            size += len(chunk)
            if size < block_bytes:
                continue
            block, buf, size = carry_ + b"".join(buf), [], 0
            cut = block.rfind(b"\n")
            if cut < 0:
                carry_ = block
                continue
            lines = block[:cut].split(b"\n")
            carry_ = block[cut + 1:]
            yield lines, line_no
            line_no += len(lines)
    except _Damaged as e:
        block = carry_ + b"".join(buf)
        cut = block.rfind(b"\n")
        if cut >= 0:
            lines = block[:cut].split(b"\n")
            yield lines, line_no
            line_no += len(lines)
        tail = block[cut + 1:]
        # the damaged tail (a partial line, maybe empty) is one counted unit: rows in = kept + rejected
        rep.lines += 1
        rep.skip(e.reason, f"{name}:{line_no}", tail, on_error,
                 f"{e.detail}; the {line_no - shard.first_line:,} lines before it were read")
        return
    block = carry_ + b"".join(buf)
    if block:
        lines = block.split(b"\n")
        if lines[-1] == b"":
            lines.pop()
        yield lines, line_no


# -- rows -------------------------------------------------------------------------------------------

_NOT_TEXT = r"^(?:-?[0-9][0-9.eE+\-]*|true|false|\[[\s\S]*\]|\{[\s\S]*\})$"


def _check_obj(obj, raw: bytes | str, loc: str, spec: InputSpec, rep: ReadReport, *, unicode: bool) -> bool:
    """True when a parsed JSON value can be a document; otherwise count the skip. ``unicode``: check
    for lone surrogates (only lines holding a ``\\u`` escape can have one)."""
    if not isinstance(obj, dict):
        rep.skip("invalid_json", loc, raw, spec.on_error, "not a JSON object")
        return False
    t = obj.get(spec.raw_key(spec.text_field))
    if t is not None and not isinstance(t, str):
        rep.skip("non_string_text", loc, raw, spec.on_error, f"text is a JSON {type(t).__name__}")
        return False
    if unicode:
        try:  # a lone surrogate survives json.loads but has no UTF-8 form (polars turned it into \0)
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            rep.skip("invalid_unicode", loc, raw, spec.on_error, "lone surrogate escape")
            return False
        except RecursionError:
            rep.skip("too_deeply_nested", loc, raw, spec.on_error)
            return False
    return True


def _load_line(ln: bytes, loc: str, spec: InputSpec, rep: ReadReport) -> dict | None:
    """One jsonl line parsed and checked, or None (skip counted)."""
    try:
        s = ln.decode("utf-8")
    except UnicodeDecodeError as e:
        rep.skip("non_utf8", loc, ln, spec.on_error, f"byte {e.start}")
        return None
    try:
        obj = json.loads(s)
    except RecursionError:
        rep.skip("too_deeply_nested", loc, s, spec.on_error)
        return None
    except ValueError:
        rep.skip("invalid_json", loc, s, spec.on_error)
        return None
    return obj if _check_obj(obj, ln, loc, spec, rep, unicode=b"\\u" in ln) else None


def _kind(v) -> str:
    if isinstance(v, int) and not isinstance(v, bool) and not -(1 << 63) <= v < (1 << 63):
        return "bigint"  # beyond int64: carried as decimal text, like the fast path's Int128
    return "number" if isinstance(v, (int, float)) and not isinstance(v, bool) else type(v).__name__


def _frame(rows: list[dict], spec: InputSpec) -> pl.DataFrame:
    """Checked rows as a frame, by polars' own JSON reader (lossless; building nested columns from
    Python objects truncated ``[1.5]`` to ``[1]`` and dropped struct keys). A field whose values
    differ in JSON kind, or that still cannot be read together, is carried as JSON text."""
    text_key = spec.raw_key(spec.text_field)

    def read(objs: list[dict]) -> pl.DataFrame:
        data = "\n".join(json.dumps(o, ensure_ascii=False) for o in objs).encode()
        return pl.read_ndjson(io.BytesIO(data), infer_schema_length=None)

    try:
        return read(rows)
    except Exception:  # noqa: BLE001 - a type conflict between rows: apply the mixed-type rule
        pass
    kinds: dict[str, set[str]] = {}
    for r in rows:
        for k, v in r.items():
            if v is not None:
                kinds.setdefault(k, set()).add(_kind(v))
    for pass_ in (0, 1):
        # pass 0: fields mixing kinds, and nested fields; pass 1: every field but the text
        conv = {k for k, ks in kinds.items() if k != text_key and
                (pass_ == 1 or len(ks) > 1 or ks & {"list", "dict", "bigint"})}
        fixed = [{k: (json.dumps(v, ensure_ascii=False) if k in conv and v is not None
                      and not isinstance(v, str) else v) for k, v in r.items()} for r in rows]
        try:
            return read(fixed)
        except Exception:  # noqa: BLE001 - next pass converts more
            continue
    raise AssertionError("unreachable: every field but the text is a string")  # pragma: no cover


def _parse_lines(lines: list[bytes], first: int, where: str, rep: ReadReport,
                 spec: InputSpec) -> tuple[pl.DataFrame, list[int]]:
    """Parse jsonl lines: fast path through polars, exact per-line checks of the few rows the fast
    path cannot vouch for, per-line fallback that isolates bad lines."""
    numbers = [first + i for i, ln in enumerate(lines) if ln.strip()]
    good = [ln for ln in lines if ln.strip()]
    rep.lines += len(good)
    if not good:
        return pl.DataFrame(), []
    try:
        df = pl.read_ndjson(io.BytesIO(b"\n".join(good)), infer_schema_length=None)
        ok = df.height == len(good)
    except Exception:  # noqa: BLE001 - any parse failure sends us to the per-line path
        ok = False
    key = spec.raw_key(spec.text_field)
    if ok:
        rep.saw_text = rep.saw_text or key in df.columns
        suspects = _suspects(df, spec)
        if not suspects:
            return df, numbers
        bad = [i for i in suspects if _load_line(good[i], f"{where}:{numbers[i]}", spec, rep) is None]
        if bad:
            keep = pl.Series(range(df.height)).is_in(bad).not_()
            df = df.filter(keep)
            drop = set(bad)
            numbers = [n for i, n in enumerate(numbers) if i not in drop]
        return df, numbers
    rows, kept_numbers = [], []
    needle = json.dumps(key).encode()
    rep.saw_text = rep.saw_text or any(needle in ln for ln in good)
    for no, ln in zip(numbers, good):
        obj = _load_line(ln, f"{where}:{no}", spec, rep)
        if obj is not None:
            rows.append(obj)
            kept_numbers.append(no)
    if not rows:
        return pl.DataFrame(), []
    return _frame(rows, spec), kept_numbers


def _suspects(df: pl.DataFrame, spec: InputSpec) -> list[int]:
    """Rows polars parsed that may hide a bad value, to be checked exactly against their line: polars
    turns a non-string text into its JSON text ("12345", "[1, 2]") and a lone surrogate into NUL, so
    texts that look like JSON scalars or containers and strings holding NUL are checked (clean corpora
    have next to none: the fast path stays fast)."""
    key = spec.raw_key(spec.text_field)
    cond: list[pl.Expr] = []
    if key in df.columns:
        if df.schema[key] == pl.String:
            cond.append(pl.col(key).str.contains(_NOT_TEXT))
        elif df.schema[key] != pl.Null:
            cond.append(pl.col(key).is_not_null())
    cond += [pl.col(c).str.contains("\x00", literal=True) for c, t in df.schema.items() if t == pl.String]
    if not cond:
        return []
    hit = df.select(pl.any_horizontal(cond).fill_null(False).arg_true()).to_series()
    return hit.to_list()


def _normalise(df: pl.DataFrame, spec: InputSpec, ids: pl.Series, where: str, rep: ReadReport,
               uid_base: int) -> pl.DataFrame:
    """Rename fields, map text/id fields, drop (and count) rows without a usable text, add ``__uid``."""
    if spec.rename:
        clash = [n for o, n in spec.rename.items() if o in df.columns and n in df.columns and n != o]
        if clash:
            raise InputError(f"{where}: input.rename would overwrite the existing field(s) "
                             f"{', '.join(map(repr, clash))}")
        df = df.rename({o: n for o, n in spec.rename.items() if o in df.columns})
    if spec.text_field not in df.columns:
        if df.height and not rep.saw_text and rep.lines == df.height + sum(rep.skipped.values()):
            raise InputError(f"{where}: no field '{spec.text_field}' in the input "
                             f"(fields: {', '.join(df.columns)}); set input.text_field")
        df = df.with_columns(pl.lit(None, dtype=pl.String).alias(spec.text_field))
    t = df.schema[spec.text_field]
    reason = pl.lit(None, dtype=pl.String)
    text = pl.col(spec.text_field)
    if t == pl.Binary:  # parquet bytes without a UTF-8 annotation: decode, or skip as non_utf8
        decoded = text.cast(pl.String, strict=False)
        reason = pl.when(text.is_not_null() & decoded.is_null()).then(pl.lit("non_utf8")).otherwise(reason)
        text = decoded
    elif t not in (pl.String, pl.Null):  # a number, bool, list or struct column (parquet)
        reason = pl.when(text.is_not_null()).then(pl.lit("non_string_text")).otherwise(reason)
        text = pl.lit(None, dtype=pl.String)
    elif t == pl.Null:
        text = text.cast(pl.String)
    reason = (pl.when(reason.is_not_null()).then(reason)
              .when(text.is_null()).then(pl.lit("missing_text"))
              .when(text.str.strip_chars() == "").then(pl.lit("empty_text")).otherwise(reason))
    df = df.with_columns(text.alias("__text"), ids.alias("__where"), reason.alias("__bad"),
                         (pl.int_range(pl.len(), dtype=pl.UInt64) + uid_base).alias(UID))
    if spec.id_field and spec.id_field in df.columns:
        idc = json_text(df.get_column(spec.id_field))
        df = df.with_columns(pl.coalesce(idc, pl.col("__where")).alias("__id"))
    else:
        df = df.with_columns(pl.col("__where").alias("__id"))
    bad = df.filter(pl.col("__bad").is_not_null())
    if bad.height:
        shown = json_text(bad.get_column(spec.text_field))
        for (w, r), raw in zip(bad.select("__where", "__bad").iter_rows(), shown):
            rep.skip(r, w, raw or "", spec.on_error)
        df = df.filter(pl.col("__bad").is_null())
    drop = [c for c in (spec.text_field, spec.id_field, "id", "text") if c and c in df.columns]
    df = df.drop(drop).rename({"__id": "id", "__text": "text"}).drop("__where", "__bad")
    return carry(df.select("id", "text", pl.exclude("id", "text")))


def _rel(path: str) -> str:
    return Path(path).name


def _is_json_array(shard: Shard) -> bool:
    """A ``.json`` file (maybe compressed) whose first non-blank byte is ``[``: one array of documents."""
    p = shard.path.lower()
    for ext in (".gz", ".zst", ".zstd"):
        if p.endswith(ext):
            p = p[: -len(ext)]
    if not p.endswith(".json") or shard.start:
        return False
    try:
        for chunk in _chunks(shard):
            s = chunk.lstrip()
            if s:
                return s[:1] == b"["
    except (OSError, _Damaged):
        return False  # the line reader reports it
    return False


def _read_json_array(spec: InputSpec, shard: Shard, rep: ReadReport, uid: int) -> Iterator[pl.DataFrame]:
    """A .json array of documents (loaded whole: such files are not streamable)."""
    name = _rel(shard.path)
    try:
        data = b"".join(_chunks(shard))
    except _Damaged as e:
        rep.lines += 1
        rep.skip(e.reason, name, b"", spec.on_error, e.detail)
        return
    try:
        docs = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        rep.lines += 1
        reason = "too_deeply_nested" if isinstance(e, RecursionError) else \
            "non_utf8" if isinstance(e, UnicodeDecodeError) else "invalid_json"
        rep.skip(reason, name, data[:1000], spec.on_error, str(e)[:200])
        return
    for start in range(0, len(docs), spec.batch_size):
        part = docs[start:start + spec.batch_size]
        rep.lines += len(part)
        key = spec.raw_key(spec.text_field)
        rep.saw_text = rep.saw_text or any(isinstance(o, dict) and key in o for o in part)
        rows, wheres = [], []
        for i, obj in enumerate(part, start):
            loc = f"{name}:[{i}]"
            try:
                raw = json.dumps(obj)[:1000]  # ASCII escapes: a lone surrogate can be shown
            except RecursionError:
                raw = repr(obj)[:1000]
            if _check_obj(obj, raw, loc, spec, rep, unicode=True):
                rows.append(obj)
                wheres.append(loc)
        if rows:
            df = _normalise(_frame(rows, spec), spec, pl.Series(wheres, dtype=pl.String), name, rep, uid)
            uid += len(rows)
            if df.height:
                yield df


def _read_parquet(spec: InputSpec, shard: Shard, rep: ReadReport, uid: int) -> Iterator[pl.DataFrame]:
    import pyarrow.parquet as pq

    name = _rel(shard.path)
    try:
        pf = pq.ParquetFile(open_input(shard.path, shard.storage, seekable=True))
    except Exception as e:  # noqa: BLE001 - not a parquet file, unreadable, empty: one counted skip
        rep.lines += 1
        rep.skip("unreadable_file", name, b"", spec.on_error, f"{type(e).__name__}: {str(e)[:200]}")
        return
    row = 0
    batches = pf.iter_batches(batch_size=spec.batch_size)
    while True:
        try:
            rb = next(batches)
            df = pl.from_arrow(rb)
        except StopIteration:
            return
        except Exception as e:  # noqa: BLE001 - a damaged row group: keep what was read, count the rest
            rest = max(pf.metadata.num_rows - row, 1)
            rep.lines += 1
            rep.skip("corrupt_file", f"{name}:{row}", b"", spec.on_error,
                     f"{type(e).__name__}: {str(e)[:200]}; {rest:,} rows from row {row:,} not readable")
            return
        assert isinstance(df, pl.DataFrame)
        rep.lines += df.height
        where = pl.Series([f"{name}:{row + i}" for i in range(df.height)], dtype=pl.String)
        out = _normalise(df, spec, where, name, rep, uid)
        uid += df.height
        row += df.height
        if out.height:
            yield out


def read_shard(spec: InputSpec, shard: Shard, rep: ReadReport | None = None) -> Iterator[pl.DataFrame]:
    """Stream one shard as batches of at most ``spec.batch_size`` rows."""
    rep = rep if rep is not None else ReadReport()
    uid = shard.index << 40
    try:
        if shard.format == "jsonl":
            name = _rel(shard.path)
            if _is_json_array(shard):
                for df in _read_json_array(spec, shard, rep, uid):
                    yield from df.iter_slices(spec.batch_size)
                return
            block_bytes = max(1 << 20, min(64 << 20, spec.batch_size * 4096))
            for lines, first in _line_blocks(shard, block_bytes, rep, name, spec.on_error):
                df, numbers = _parse_lines(lines, first, name, rep, spec)
                if not numbers:
                    continue
                where = pl.Series([f"{name}:{n}" for n in numbers], dtype=pl.String)
                df = _normalise(df, spec, where, name, rep, uid)
                uid += len(numbers)
                yield from df.iter_slices(spec.batch_size)
        elif shard.format == "parquet":
            yield from _read_parquet(spec, shard, rep, uid)
        elif shard.format == "text":
            rows: list[dict] = []
            for path in shard.files:
                rep.lines += 1
                try:
                    raw = read_bytes(path, shard.storage)
                except OSError as e:
                    rep.skip("unreadable_file", path, b"", spec.on_error, f"{type(e).__name__}: {e.strerror}")
                    continue
                try:
                    rows.append({"id": path, "text": raw.decode("utf-8")})
                except UnicodeDecodeError:
                    rep.skip("non_utf8", path, raw[:1000], spec.on_error)
                if len(rows) >= spec.batch_size:
                    yield _text_batch(rows, spec, rep, uid)
                    uid += len(rows)
                    rows = []
            if rows:
                yield _text_batch(rows, spec, rep, uid)
        elif shard.format == "warc":
            yield from _read_warc_shard(spec, shard, rep, uid)
        else:  # pragma: no cover - validated by the config model
            raise InputError(f"unknown input format {shard.format}")
    except OSError as e:
        # the file vanished, became a folder or lost its permissions after planning: one counted skip
        # naming it (whatever was read before stays read)
        rep.lines += 1
        rep.skip("unreadable_file", shard.path or "text files", b"", spec.on_error,
                 f"{type(e).__name__}: {e.strerror or e}")


def _text_batch(rows: list[dict], spec: InputSpec, rep: ReadReport, uid: int) -> pl.DataFrame:
    df = pl.DataFrame(rows, schema={"id": pl.String, "text": pl.String})
    where = df.get_column("id")
    return _normalise(df, spec.model_copy(update={"text_field": "text", "id_field": "id", "rename": {}}),
                      where, "text", rep, uid)


def read_texts(paths: str | list[str], text_field: str = "text", max_docs: int | None = None) -> pl.Series:
    """The ``text`` of every document of some files (jsonl(.gz/.zst), parquet, .txt), bad rows skipped and
    counted as a pipeline's reader does; at most ``max_docs``."""
    spec = InputSpec(path=paths, text_field=text_field, id_field=None)
    parts: list[pl.Series] = []
    n = 0
    for batch in spec.iter_batches():
        parts.append(batch["text"])
        n += batch.height
        if max_docs is not None and n >= max_docs:
            return pl.concat(parts).head(max_docs)
    return pl.concat(parts) if parts else pl.Series("text", [], dtype=pl.String)


def read(path: str | list[str], **kwargs) -> InputSpec:
    """Python API: ``read("data/*.jsonl.gz", text_field="content")`` - an input for :class:`Pipeline`."""
    return InputSpec(path=path, **kwargs)


def read_jsonl(path: str | list[str], **kwargs) -> InputSpec:
    return InputSpec(path=path, format="jsonl", **kwargs)


def read_parquet(path: str | list[str], **kwargs) -> InputSpec:
    return InputSpec(path=path, format="parquet", **kwargs)


def read_text(path: str | list[str], **kwargs) -> InputSpec:
    return InputSpec(path=path, format="text", **kwargs)


def _read_warc_shard(spec: InputSpec, shard: Shard, rep: ReadReport, uid: int) -> Iterator[pl.DataFrame]:
    """Batches of ``spec.batch_size`` rows of one WARC file (the ``warc`` input format)."""
    from curate.io.warc import SCHEMA, iter_warc_rows

    rows: list[dict] = []

    def flush() -> pl.DataFrame:
        df = pl.DataFrame(rows, schema=SCHEMA)
        fixed = spec.model_copy(update={"text_field": "text", "id_field": "id"})
        return _normalise(df, fixed, df.get_column("id"), shard.path, rep, uid)

    for row in iter_warc_rows(shard.path, rep, spec.on_error, storage=shard.storage):
        rows.append(row)
        if len(rows) >= spec.batch_size:
            out = flush()
            uid += len(rows)
            rows = []
            if out.height:
                yield out
    if rows:
        out = flush()
        if out.height:
            yield out
