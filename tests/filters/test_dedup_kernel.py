"""Exact dedup's one-pass normaliser (curate.filters._dedup_kernel) against the polars definition it
replaces (:func:`curate.core.text.normalize_for_dedup`): the same strings and the same hashes, on the shared
real corpora, on every Unicode code point and on corner cases (lower cases that are not one code point,
the final sigma, digits of other scripts, nulls)."""

from __future__ import annotations

import numpy as np
import polars as pl
from polars.testing import assert_series_equal

from curate.core.text import normalize_for_dedup
from curate.core.tokens import utf8_buffers
from curate.filters import _dedup_kernel
from curate.filters._dedup_kernel import dedup_normalized
from curate.filters.exact_dedup import _hash_expr, text_hashes
from tests.conftest import golden_and_udhr_texts

CORNERS = [
    "", "   ", "\t\n\u3000", "Hello, World!!  1,000 and 10,000.", "  --lead and trail--  ", "A.B.C", "x\u00a0\u2003y",
    "\u00c9COLE \u00e9cole r\u00e9sum\u00e9 RESUME", "\u0130stanbul \u0130", "\u03a3\u039f\u03a6\u039f\u03a3 \u03c3\u03bf\u03c6\u03cc\u03c2 \u03a3",
    "\u212a Kelvin \u212b \u1e9e STRASSE stra\u00dfe", "\uff11\uff12\uff13 \u0663\u0664 \u0968 \u2167 \u00bd \u00b2", "\u24b6\u24b7 \u00a9 $5 \u20ac3 +-=<>",
    "\x00\x01\x1c\x1f\x7f", "emoji \U0001f600\U0001f44d\U0001f3fd!", "\u0391\u0392\u0393 \u0410\u0411\u0412 \u0531\u0532",
    "\u023a\u023e \u2c65 \u2c66", "a\u0301 \u0301 combining", "tab\tnew\nline\r\nend\u2028", "_under_score_ a_b",
]


def _ref(s: pl.Series) -> pl.Series:
    return pl.select(normalize_for_dedup(pl.lit(s))).to_series().alias(s.name)


def _check(texts: list[str | None]) -> None:
    s = pl.Series("text", texts, dtype=pl.String)
    assert_series_equal(dedup_normalized(s), _ref(s))
    df = pl.DataFrame({"text": s})
    assert_series_equal(text_hashes(s, True), df.select(_hash_expr(True).alias("h")).to_series())
    assert_series_equal(text_hashes(s, False), df.select(_hash_expr(False).alias("h")).to_series())


def test_kernel_gives_the_normalised_text_of_the_definition_on_real_text(shared_data):
    texts = golden_and_udhr_texts(shared_data) + CORNERS
    _check(texts)
    ref = _ref(pl.Series(texts))
    assert len(texts) > 2300 and int((ref != pl.Series(texts)).sum()) > 2000


def test_every_code_point_alone_and_in_runs():
    cps = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    runs = ["".join(chr(c) for c in cps[i:i + 64]) for i in range(0, len(cps), 64)]
    alone = [chr(c) + " " + chr(c).upper() + "x" + chr(c) for c in range(0, 0x3000)]
    _check(runs + alone)


def test_corner_cases_nulls_and_which_rows_take_the_polars_path():
    _check(CORNERS + [None, "after a null"])
    s = pl.Series(CORNERS)
    data, offsets = utf8_buffers(s)
    cls, lower = _dedup_kernel.norm_classes(data)
    out = np.empty(2 * len(data) + 1, dtype=np.uint8)
    odd = _dedup_kernel.normalize_rows(data, offsets, cls, lower, out, np.zeros(len(s) + 1, dtype=np.int64))
    # only U+0130 (lower case of two code points) and the capital sigma (context-dependent) go to polars
    assert np.flatnonzero(odd).tolist() == [8, 9]
    assert dedup_normalized(pl.Series(["\u03a3\u039f\u03a6\u039f\u03a3"])).item() == "\u03c3\u03bf\u03c6\u03bf\u03c2"
