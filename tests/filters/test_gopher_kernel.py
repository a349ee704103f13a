"""Gopher quality's line and symbol kernel (curate.filters._gopher_kernel) against the polars definition it
replaces (``GopherQuality._score_polars``): every output column, on the shared real corpora and on the
corners of the line split, the whitespace strips and the ellipsis counts."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from curate.core.operator import UID
from curate.core.tokens import char_classes, utf8_buffers
from curate.filters._gopher_kernel import gopher_line_stats
from curate.filters.gopher import GopherQuality
from tests.conftest import golden_and_udhr_texts

CORNERS = [
    "- one\r\n\u2022 two\r- three\x0b\u3000\u2022 four\x0c\t-five\x1c six\x1d\u00a0- seven\x1e\x85- eight\u2028- nine\u2029x",
    "a\r\r\n", "\r\n", "\n", "\r", "\n\n", "\x85", "\u2028", "a\n", "a\r\n\r\n", "a\n\u2028", "", "   ", "\t\n\t",
    "ends here...\nand here\u2026\nspaced ... \t\nnot..\nfour....\nmid...dle\n\u2026\u3000\n...",
    "#hash ## tag #\n# heading", "......", ".....", "..\u2026", "\u2026\u2026...", "...\u2026", ".. .. ..",
    "\u2013 en dash is not a bullet\n\u2022\n-\n  \u2022  \n\u00a0-", "x" * 50 + "...",
    "\u00e9\u2026\n\u65e5\u672c\u8a9e...\n\u0424 \u2022 bullet mid-line",
]


@pytest.fixture(scope="module")
def real_df(shared_data) -> pl.DataFrame:
    texts = golden_and_udhr_texts(shared_data) + CORNERS
    return pl.DataFrame({"id": [f"d{i}" for i in range(len(texts))], "text": texts}).with_columns(
        pl.int_range(pl.len(), dtype=pl.UInt64).alias(UID))


def test_kernel_gives_every_column_of_the_polars_definition(real_df):
    op = GopherQuality()
    got, ref = op.score(real_df), op._score_polars(real_df)
    assert_frame_equal(got, ref)
    # the sample exercises every ratio, and rows where each is null
    for col in ("gq_hash_ratio", "gq_ellipsis_ratio", "gq_bullet_lines", "gq_ellipsis_lines"):
        assert int((ref.get_column(col) > 0).sum()) > 50, col
    assert ref.get_column("gq_bullet_lines").null_count() >= 1 and ref.get_column("gq_hash_ratio").null_count() >= 2


def test_corner_cases_match_and_count_as_split_lines():
    df = pl.DataFrame({"id": [str(i) for i in range(len(CORNERS))], "text": CORNERS}).with_columns(
        pl.int_range(pl.len(), dtype=pl.UInt64).alias(UID))
    op = GopherQuality()
    assert_frame_equal(op.score(df), op._score_polars(df))
    data, offsets = utf8_buffers(df.get_column("text"))
    n_hash, n_ell, n_lines, n_bullet, n_ell_lines = gopher_line_stats(data, offsets, char_classes(data))
    # 10 line breaks of 10 kinds (\r\n is one); bullets behind tabs, U+3000 and U+00A0, not behind "\x1c"
    assert n_lines[0] == 11 and n_bullet[0] == 8
    assert n_lines[1:12].tolist() == [2, 1, 1, 1, 2, 1, 1, 1, 2, 2, 0]
    # non-overlapping "..." plus every U+2026; end-ellipsis lines after stripping trailing whitespace
    assert n_ell[CORNERS.index("......")] == 2 and n_ell[CORNERS.index(".....")] == 1
    assert n_ell[CORNERS.index("..\u2026")] == 1 and n_ell[CORNERS.index("\u2026\u2026...")] == 3
    assert n_ell_lines[14] == 6 and n_hash[CORNERS.index("#hash ## tag #\n# heading")] == 5
    assert n_bullet[CORNERS.index("\u2013 en dash is not a bullet\n\u2022\n-\n  \u2022  \n\u00a0-")] == 4
    assert np.all(n_lines[[CORNERS.index(""), CORNERS.index("   ")]] == [0, 1])


def test_repetition_kernel_skips_longer_n_grams_only_where_each_own_pass_finds_none(real_df):
    """Gopher repetition's duplicate n-gram kernel stops at the first n without a repeated n-gram (no longer
    one can repeat): every n's figure equals that n's own pass, run alone."""
    from curate.core.tokens import word_table
    from curate.filters._repetition_kernel import repetition_stats

    t = word_table(real_df.get_column("text"))
    top_ns = np.array([2, 3, 4], dtype=np.int64)
    dup_ns = np.arange(5, 11, dtype=np.int64)
    top, dup = repetition_stats(t.hashes, t.lengths, t.offsets, top_ns, dup_ns)
    for i, n in enumerate(dup_ns):
        _, alone = repetition_stats(t.hashes, t.lengths, t.offsets, top_ns, np.array([n], dtype=np.int64))
        np.testing.assert_array_equal(dup[:, i], alone[:, 0], err_msg=f"{n}-grams")
    # both sides of the skip occur: documents without a repeated 5-gram, and with repeated 10-grams
    assert int((dup[:, 0] == 0).sum()) > 300 and int((dup[:, -1] > 0).sum()) > 100
    for i, n in enumerate(top_ns):
        top_alone, _ = repetition_stats(t.hashes, t.lengths, t.offsets, np.array([n], dtype=np.int64), dup_ns[:1])
        np.testing.assert_array_equal(top[:, i], top_alone[:, 0], err_msg=f"top {n}-gram")
