"""C4's line-filter kernel (curate.filters._c4_kernel) against the polars definition it replaces
(``C4Quality._score_polars``): every output column, on the shared real corpora and on the corners of the
line split, the citation markers, the phrase tests and the sentence count."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from curate.core.operator import UID
from curate.filters import _c4_kernel
from curate.filters.c4 import C4Quality
from tests.conftest import golden_and_udhr_texts

GOLDEN = Path(__file__).parents[1] / "golden"

CORNERS = [
    "One two three.\r\nFour five six!\rSeven eight nine?\x0bTen eleven twelve.\x85A b c.\u2028D e f.\u2029G h i.\n",
    "Trailing break.\r\n", "\n", "\r\n", "\n\n", "a\r\r\n", "  padded line here .  \n\tAnd tabs too here.\t",
    "Citation one two[1]. Three four five [edit]. Six seven eight[citation needed].\nNine ten [٣] eleven.",
    "A cut citation [12] here[] and [ 1] there [citation].\nMore words here. [1]",
    "Please enable JavaScript in this browser.\nWe use cookies to help you here.\nRead our Privacy Policy now.",
    "Lorem Ipsum dolor sit amet.\nAnother good line here.\nfunction() { return 1; } is code.",
    "A { bracket line here.\nThen lorem ipsum dolor sit.",
    "Short.\nends with ellipsis here...\nends with quote here\"\nends with apostrophe here'\nno end here",
    "Mr. Smith went. He said \"hi.\" Then (a note.) left!!! Ok… Done?! yes",
    "x" * 1001 + " long word line here.\nA short word line here.",
    "The \u212aelvin sign: javascript here is not JAVA\u212aSCRIPT.\nİstanbul lorem ipsum İpsum line.",
    "日本語の文です。英語ではありません。\nNon-ASCII line «quoted» here ends.\nЭто строка. Вторая строка!",
    "", "   ", "no terminal punctuation at all",
]


def _real_texts(shared_data: Path) -> list[str]:
    return golden_and_udhr_texts(shared_data)


@pytest.fixture(scope="module")
def real_df(shared_data) -> pl.DataFrame:
    texts = _real_texts(shared_data) + CORNERS
    return pl.DataFrame({"id": [f"d{i}" for i in range(len(texts))], "text": texts}).with_columns(
        pl.int_range(pl.len(), dtype=pl.UInt64).alias(UID))


PARAMS = [{}, {"remove_citations": False, "filter_no_terminal_punct": False, "filter_lorem_ipsum": False,
               "filter_policy": False},
          {"min_words_per_line": 1, "max_word_length": 8, "filter_javascript": False, "filter_curly_bracket": False}]


@pytest.mark.parametrize("params", PARAMS)
def test_kernel_gives_every_column_of_the_polars_definition(real_df, params):
    op = C4Quality(**params)
    got, ref = op.score(real_df), op._score_polars(real_df)
    assert_frame_equal(got, ref)
    kept = ref.get_column("c4_lines_kept")
    assert real_df.height > 2300 and int((kept > 0).sum()) > 1000 and int(kept.sum()) > 5000
    if not params:  # the sample exercises both document rules and the rewrite
        assert ref.get_column("c4_lorem_ipsum").any() and ref.get_column("c4_curly_bracket").any()
        assert int((ref.get_column("__c4_text") != real_df.get_column("text")).sum()) > 1000


def test_corner_cases_match_and_lowercase_to_ascii_takes_the_polars_path():
    df = pl.DataFrame({"id": [str(i) for i in range(len(CORNERS))], "text": CORNERS}).with_columns(
        pl.int_range(pl.len(), dtype=pl.UInt64).alias(UID))
    op = C4Quality()
    assert_frame_equal(op.score(df), op._score_polars(df))
    from curate.core.tokens import char_classes, utf8_buffers

    data, offsets = utf8_buffers(df.get_column("text"))
    out = np.empty(len(data), dtype=np.uint8)
    res = _c4_kernel.c4_lines(data, offsets, char_classes(data), out, np.zeros(df.height + 1, dtype=np.int64),
                              True, True, 3, 1000, True, True, True, True, _c4_kernel.PHRASE_CPS,
                              _c4_kernel.PHRASE_LEN, _c4_kernel._EDIT, _c4_kernel._CITATION_NEEDED)
    # the Kelvin sign and U+0130 lower to ASCII: that document (and only it) is scored by the polars path
    assert np.flatnonzero(res[5]).tolist() == [CORNERS.index(next(t for t in CORNERS if "\u212a" in t))]
    # the line split: 7 line breaks of 7 kinds, the trailing one dropped
    assert res[2][0] == 7 and res[2][2] == 1 and res[2][4] == 2 and res[2][5] == 2
