"""Numba kernel for exact dedup's normaliser: :func:`curate.core.text.normalize_for_dedup` in one pass.

:func:`~curate.core.text.normalize_for_dedup` is five polars string passes (``to_lowercase``, three regex
``replace_all`` and ``strip_chars``): about 0.37 CPU-s per 20k documents, the largest part of exact dedup's
hashing. :func:`dedup_normalized` gives the same strings from one pass over the Arrow buffers of ``text``.

Exactness: each code point is classified once per process by polars itself, the engine the definition
runs on: its lower case (``str.to_lowercase`` of the code point alone) and whether that is a digit
(``\\d``, becomes "0"), or punctuation, a symbol or White_Space (``[\\p{P}\\p{S}]`` and ``\\s``, runs of
which become one space, trimmed at both ends). Lower-casing is per code point except for two cases the
kernel does not replay, whose documents take the polars expression instead: a code point whose lower case
is not one code point (U+0130 "İ" -> "i̇") and the capital sigma (U+03A3, "ς" at the end of a word, "σ"
elsewhere). ``tests/filters/test_dedup_kernel.py`` compares the two on the shared real corpora, every
Unicode code point and corner cases.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from numba import njit

from curate.core.jit import prepare
from curate.core.tokens import _first_unknown, _unknown_codepoints, decode_utf8

prepare()  # numba's registries without SciPy, before any kernel loads (curate/core/jit.py)

#: class bits of a code point (``_NORM_CLASS``): its lower case is a digit; is punctuation, a symbol or
#: White_Space; needs the polars path (see the module docstring); classified already
DIGIT, BLANK, ODD, KNOWN = 1, 2, 4, 128
_NORM_CLASS = np.zeros(0x110000, dtype=np.uint8)
_LOWER = np.zeros(0x110000, dtype=np.int32)  # the lower case of a code point (when one code point)


def _classify(cps: np.ndarray) -> None:
    """Lower case and class bits of code points ``cps``, from polars (the engine of the definition)."""
    cps = cps[(cps < 0xD800) | (cps > 0xDFFF)]  # surrogates never occur in valid UTF-8
    if not len(cps):
        return
    low = pl.Series("c", [chr(int(c)) for c in cps], dtype=pl.String).str.to_lowercase()
    df = pl.DataFrame({"l": low}).select(
        (pl.col("l").str.len_chars() == 1).alias("one"),
        (pl.col("l").str.contains(r"^\d$").cast(pl.UInt8) * DIGIT
         + pl.col("l").str.contains(r"^[\p{P}\p{S}\s]$").cast(pl.UInt8) * BLANK).alias("b"))
    one = df.get_column("one").to_numpy()
    bits = df.get_column("b").to_numpy().astype(np.uint8)
    bits[~one | (cps == 0x03A3)] = ODD
    lowered = np.array([ord(x[0]) if len(x) == 1 else 0 for x in low.to_list()], dtype=np.int32)
    _LOWER[cps] = lowered
    _NORM_CLASS[cps] = bits | KNOWN


def norm_classes(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The class and lower-case tables, every code point of the UTF-8 ``data`` classified in them."""
    if not (_NORM_CLASS[:128] & KNOWN).all():  # every ASCII code point first: lets the scan skip ASCII words
        _classify(np.flatnonzero((_NORM_CLASS[:128] & KNOWN) == 0))
    at = _first_unknown(data, _NORM_CLASS)
    if at >= 0:
        _classify(_unknown_codepoints(data, at, _NORM_CLASS))
    return _NORM_CLASS, _LOWER


@njit(cache=True, inline="always")
def _put_utf8(out: np.ndarray, o: int, cp: np.int64) -> int:
    """Encode code point ``cp`` at ``out[o:]``; returns the next free index."""
    if cp < 0x80:
        out[o] = cp
        return o + 1
    if cp < 0x800:
        out[o] = 0xC0 | (cp >> 6)
        out[o + 1] = 0x80 | (cp & 0x3F)
        return o + 2
    if cp < 0x10000:
        out[o] = 0xE0 | (cp >> 12)
        out[o + 1] = 0x80 | ((cp >> 6) & 0x3F)
        out[o + 2] = 0x80 | (cp & 0x3F)
        return o + 3
    out[o] = 0xF0 | (cp >> 18)
    out[o + 1] = 0x80 | ((cp >> 12) & 0x3F)
    out[o + 2] = 0x80 | ((cp >> 6) & 0x3F)
    out[o + 3] = 0x80 | (cp & 0x3F)
    return o + 4


@njit(cache=True)
def normalize_rows(data: np.ndarray, offsets: np.ndarray, cls: np.ndarray, lower: np.ndarray, out: np.ndarray,
                   out_off: np.ndarray) -> np.ndarray:
    """Per document: the normalised text into ``out`` (row ends in ``out_off[1:]``; ``out`` holds at least
    twice the input's bytes: a lower case takes at most 1.5 times its code point's bytes). Returns, per
    document, whether it holds an ``ODD`` code point (its output is then to be replaced)."""
    n_docs = offsets.shape[0] - 1
    odd = np.zeros(n_docs, dtype=np.bool_)
    o = 0
    out_off[0] = 0
    for d in range(n_docs):
        i = offsets[d]
        e = offsets[d + 1]
        blank = False  # a run of punctuation, symbols or spaces is pending
        started = False  # something was written (leading and trailing runs are trimmed)
        while i < e:
            b = data[i]
            if b < 0x80:
                cp = np.int64(b)
                i += 1
            else:
                cp, i = decode_utf8(data, i)
            f = cls[cp]
            if f & BLANK:
                blank = True
                continue
            if f & ODD:
                odd[d] = True
                break
            if blank and started:
                out[o] = 32
                o += 1
            blank = False
            started = True
            if f & DIGIT:
                out[o] = 48
                o += 1
            else:
                o = _put_utf8(out, o, np.int64(lower[cp]))
        out_off[d + 1] = o
    return odd


def dedup_normalized(text: pl.Series) -> pl.Series:
    """:func:`curate.core.text.normalize_for_dedup` of every row of ``text`` (nulls stay null), from
    :func:`normalize_rows`; rows it cannot replay exactly (see the module docstring) from the expression."""
    from curate.core.text import normalize_for_dedup, utf8_series
    from curate.core.tokens import utf8_buffers

    text = text.cast(pl.String)
    data, offsets = utf8_buffers(text)
    cls, lower = norm_classes(data)
    n = len(text)
    out = np.empty(2 * len(data) + 1, dtype=np.uint8)
    out_off = np.zeros(n + 1, dtype=np.int64)
    odd = normalize_rows(data, offsets, cls, lower, out, out_off)
    res = utf8_series(out[:out_off[-1]], out_off, text.name)
    if odd.any():
        idx = np.flatnonzero(odd)
        res = res.scatter(idx, pl.select(normalize_for_dedup(pl.lit(text.gather(idx)))).to_series())
    if text.null_count():
        res = pl.select(pl.when(pl.lit(text).is_null()).then(None).otherwise(pl.lit(res))).to_series().alias(text.name)
    return res
