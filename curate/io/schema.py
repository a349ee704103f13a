"""One rule for fields whose type varies, applied wherever batches meet (spilled shards, output parts).

The rule (documented in the README, "How a run works"): a field keeps its type while every value has it; ``null``
fits any type; integers of different widths become ``Int64`` and integers mixed with floats ``Float64``;
any other mix (``tags: 1`` in one row, batch, shard or part and ``tags: [1, 2]`` in another; a struct
whose keys differ; a number beside a string) is carried as text: strings unchanged, every other value
as its JSON text (``[1, 2]``, ``{"k": 1}``, ``true``), null stays null. Integers beyond int64 (which
parquet and most tools cannot read back) are carried as their decimal text. Polars' own ndjson reader
already turns a number beside a string into text, so this is the rule it applies within one read,
extended across reads.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import polars as pl

_INTS = (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32)
_WIDE = (pl.Int128, pl.UInt128) if hasattr(pl, "UInt128") else (pl.Int128,)
_FLOATS = (pl.Float32, pl.Float64)


def _is(dtype: pl.DataType, kinds: tuple) -> bool:
    return any(dtype == k for k in kinds)


def _has_wide_int(dtype: pl.DataType) -> bool:
    if _is(dtype, _WIDE):
        return True
    inner = getattr(dtype, "inner", None)
    if inner is not None:
        return _has_wide_int(inner)
    fields = getattr(dtype, "fields", None)
    if fields:
        return any(_has_wide_int(f.dtype) for f in fields)
    return False


def storable(dtype: pl.DataType) -> pl.DataType:
    """The type a column of ``dtype`` is carried as: wide integers (anywhere inside) become text."""
    return pl.String if _has_wide_int(dtype) else dtype


def supertype(a: pl.DataType, b: pl.DataType) -> pl.DataType:
    """The one type two pieces of the same field are carried as (see the module docstring)."""
    a, b = storable(a), storable(b)
    if a == b:
        return a
    if a == pl.Null:
        return b
    if b == pl.Null:
        return a
    if _is(a, _INTS) and _is(b, _INTS):
        return pl.Int64
    if (_is(a, _INTS) or _is(a, _FLOATS) or a == pl.UInt64) and (_is(b, _INTS) or _is(b, _FLOATS) or b == pl.UInt64):
        return pl.Float64
    return pl.String


def common_schema(schemas: Iterable[pl.Schema | dict]) -> dict[str, pl.DataType]:
    """Column order of first appearance, each column's :func:`supertype` over every schema."""
    out: dict[str, pl.DataType] = {}
    for schema in schemas:
        for name, dtype in schema.items():
            out[name] = supertype(out[name], dtype) if name in out else storable(dtype)
    return out


def json_text(s: pl.Series) -> pl.Series:
    """``s`` as text under the rule: strings unchanged, other values as JSON text, null stays null."""
    if s.dtype == pl.String:
        return s
    if s.dtype == pl.Null:
        return s.cast(pl.String)
    if s.dtype == pl.Boolean or _is(s.dtype, _INTS) or _is(s.dtype, _WIDE) or s.dtype == pl.UInt64:
        return s.cast(pl.String)
    if _is(s.dtype, _FLOATS):  # JSON has no NaN/inf: polars' own text for those, as read_ndjson would show
        return s.cast(pl.String)
    # nested, temporal, binary...: Python's JSON text with the separators polars' reader uses ("[1, 2]")
    return pl.Series(s.name, [None if v is None else json.dumps(v, ensure_ascii=False, default=str)
                              for v in s.to_list()], dtype=pl.String)


def conform(df: pl.DataFrame, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """``df`` with exactly ``schema``'s columns, order and types (absent columns as nulls); columns of
    ``df`` not in ``schema`` are kept at the end, so nothing is dropped."""
    if dict(df.schema) == schema:
        return df
    cols: list[pl.Series] = []
    for name, dtype in schema.items():
        if name not in df.columns:
            cols.append(pl.Series(name, [None] * df.height, dtype=dtype))
            continue
        s = df.get_column(name)
        if s.dtype == dtype:
            cols.append(s)
        elif dtype == pl.String:
            cols.append(json_text(s))
        else:
            cols.append(s.cast(dtype))
    extra = [df.get_column(c) for c in df.columns if c not in schema]
    return pl.DataFrame(cols + extra, schema=None) if cols or extra else df


def carry(df: pl.DataFrame) -> pl.DataFrame:
    """``df`` with every column in the type it is carried as (:func:`storable`)."""
    wide = [c for c, t in df.schema.items() if storable(t) != t]
    return df.with_columns([json_text(df.get_column(c)) for c in wide]) if wide else df
