"""The word-token kernel (curate.core.tokens) against the regex definition it replaces (curate.core.text.words),
and the per-batch cache that shares its tokens between filters (curate.core.batch_cache)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from curate.core import tokens
from curate.core.batch_cache import batch_scope
from curate.core.operator import UID
from curate.core.step import run_step
from curate.core.text import words
from curate.core.tokens import word_table, word_table_regex, word_tokens
from curate.filters.c4 import C4Quality, FineWebQuality
from curate.filters.gopher import GopherQuality, GopherRepetition
from tests.conftest import golden_and_udhr_texts

GOLDEN = Path(__file__).parents[1] / "golden"

#: the corners of WORD_TOKEN and the clitic/hyphen rewrites: leftmost-first alternation, consumed characters
TRICKY = [
    "don't can't WON'T I'd we'll they're you've it's it’s Paul’s o'clock rock'n'roll 'tis ' s",
    "a-b-c-d-e state-of-the-art x--y ---- 3-4 a-1 é-b U.S.A. U.S. e.g. i.e.. ... …… a.b.c.d.",
    "_under_score_ __init__ a_b x_ _x email@example.com 3.14 1,000 $5 #tag @user (paren) [x] {y}",
    "it'sn't don'tn't n't N'T 'S 'M 'll'd ''s ’’s -n't xn't. can't! can't\nwon't\n",
    "日本語のテキスト 中文 한국어 Ελληνικά русский текст العربية हिन्दी emoji 😀👍🏽 ½ ² Ⅻ ﬁ",
    "", "   ", "\n\n\t", "-", "'", "a", "naïve café — “quoted” «guillemets» ‘single’ – dash",
]


def _real_texts(shared_data: Path) -> list[str]:
    return golden_and_udhr_texts(shared_data)


@pytest.fixture(scope="module")
def real(shared_data) -> pl.Series:
    return pl.Series("text", _real_texts(shared_data) + TRICKY)


def test_kernel_tokens_equal_the_regex_words_token_for_token(real):
    """Readable token lists on a slice (every script of the UDHR, the corner cases, 300 documents); the
    whole sample is compared through hashes, lengths and flags below."""
    real = pl.concat([real.head(300), real.tail(len(real) - 2273)])
    ref = pl.select(words(pl.lit(real))).to_series()
    got = word_tokens(real)
    bad = (ref != got).fill_null(True)
    assert int(bad.sum()) == 0, [(real[i][:80], ref[i].to_list()[:20], got[i].to_list()[:20])
                                 for i in bad.arg_true().head(3).to_list()]
    assert len(real) > 350 and ref.list.len().sum() > 100_000


def test_word_table_equals_the_table_built_from_regex_tokens(real):
    a, b = word_table(real), word_table_regex(real)
    assert len(real) > 2300 and len(a.hashes) > 500_000
    for field in ("offsets", "hashes", "lengths", "flags"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
    assert (a.flags & tokens.TOK_PUNCT).any() and (a.flags & tokens.TOK_ALPHA).any()


def test_word_table_take_and_concat_keep_rows_together():
    t = word_table(pl.Series(["one two", "", "three four five", "six"]))
    sub = t.take(np.array([2, 0]))
    assert list(sub.counts) == [3, 2] and list(sub.lengths) == [5, 4, 4, 3, 3]
    both = type(t).concat([sub, t.take(np.array([3]))])
    assert list(both.counts) == [3, 2, 1] and list(both.offsets) == [0, 3, 5, 6]


CHAIN = (GopherRepetition, GopherQuality, C4Quality, FineWebQuality)


def _run_chain(df: pl.DataFrame, *, shared: bool, batch: int = 500) -> tuple[pl.DataFrame, pl.DataFrame, int]:
    """The four rule filters as the runner applies them, batch by batch; with the shared token cache or
    without it (each filter tokenises its own rows). Returns kept rows, rejected rows and cache hits."""
    ops = [c() for c in CHAIN]
    kept, rejected, hits = [], [], 0
    for b in df.iter_slices(batch):
        if shared:
            with batch_scope() as cache:
                for op in ops:
                    b, rej, _ = run_step(op, b)
                    rejected += [rej] if rej is not None else []
            hits += cache.hits + cache.partial
        else:
            for op in ops:
                b, rej, _ = run_step(op, b)
                rejected += [rej] if rej is not None else []
        kept.append(b)
    return pl.concat(kept), pl.concat(rejected, how="diagonal_relaxed").sort("id"), hits


@pytest.fixture(scope="module")
def sample_df(real) -> pl.DataFrame:
    return pl.DataFrame({"id": [f"d{i}" for i in range(len(real))], "text": real}).with_columns(
        pl.int_range(pl.len(), dtype=pl.UInt64).alias(UID))


def test_shared_tokens_give_the_per_filter_decisions_reasons_and_scores(sample_df):
    k1, r1, hits = _run_chain(sample_df, shared=True)
    k2, r2, none = _run_chain(sample_df, shared=False)
    assert_frame_equal(k1, k2)
    assert_frame_equal(r1, r2)
    # the cache was used (Gopher quality reuses Gopher repetition's tokens, FineWeb the rows C4 left alone)
    # and leaves no column behind in kept or rejected rows
    assert hits >= 2 * (sample_df.height // 500) and none == 0
    declared = {c for op in CHAIN for c in op().adds()}
    assert set(k1.columns) == {"id", "text", UID} | declared
    assert r1.height > 500 and {"gopher_repetition", "gopher_quality", "c4_quality", "fineweb_quality"} <= set(
        r1.get_column("step"))


def test_kernel_path_gives_the_decisions_of_the_regex_path(sample_df, monkeypatch):
    """Today's filters against the regex tokenisation they used before the kernel: every score and reason."""
    k1, r1, _ = _run_chain(sample_df, shared=True)
    monkeypatch.setattr(tokens, "word_table", word_table_regex)
    k2, r2, _ = _run_chain(sample_df, shared=True)
    assert_frame_equal(k1, k2)
    assert_frame_equal(r1, r2)


def test_a_rewritten_text_is_tokenised_again():
    df = pl.DataFrame({"id": ["a", "b"], "text": ["one two three", "four five"]}).with_columns(
        pl.int_range(pl.len(), dtype=pl.UInt64).alias(UID))
    with batch_scope() as cache:
        first = tokens.batch_word_table(df)
        again = tokens.batch_word_table(df.slice(1, 1))
        changed = tokens.batch_word_table(df.with_columns(pl.Series("text", ["one two three four", "four five"])))
    assert list(first.counts) == [3, 2] and list(again.counts) == [2] and list(changed.counts) == [4, 2]
    assert (cache.hits, cache.partial, cache.misses) == (1, 1, 1) and not cache.entries  # dropped at the end of the batch


def test_duplicate_line_and_paragraph_kernel_equals_the_polars_split(real):
    """GopherRepetition's dup line/paragraph numbers (a numba pass) against the polars definition it
    replaced: split on runs of newlines (2+ for paragraphs, after stripping), distinct by string equality."""
    from curate.core.tokens import char_classes, utf8_buffers
    from curate.filters._repetition_kernel import dup_segment_stats

    texts = pl.concat([real, pl.Series(["a\n\nb\n\n\na", "x\x00y\n\x00y", " \u3000 para\n\npara \u2028", "\n\n",
                                        "one\ntwo\none\n", "\u00a0", "é\n\né\n\nè", "", "\t",
                                        "\n\n  a\n\nb\n\n  ", "\x00\n\n\x00", "  \x00 a\x00\n\n\x00  ",
                                        "  \n a \n\n a \n", "a\n\n\n\n", "\u2028a\nb\n\na\nb\u3000"])])
    t = pl.col("text")
    ref = pl.DataFrame({"text": texts}).select(
        *[e for name, col in (("para", t.str.strip_chars().str.replace_all(r"\n{2,}", "\x00").str.split("\x00")),
                              ("line", t.str.replace_all(r"\n+", "\x00").str.split("\x00")))
          for e in (col.list.len().alias(f"{name}_n"), col.list.unique().list.len().alias(f"{name}_u"),
                    col.list.eval(pl.element().str.len_chars()).list.sum().alias(f"{name}_c"),
                    col.list.unique().list.eval(pl.element().str.len_chars()).list.sum().alias(f"{name}_uc"))])
    data, offsets = utf8_buffers(texts)
    got = dup_segment_stats(data, offsets, char_classes(data))  # paragraphs and lines in one pass
    for k, name in enumerate(("para", "line")):
        for arr, col in zip(got[4 * k:4 * k + 4], ("n", "u", "c", "uc")):
            np.testing.assert_array_equal(arr, ref.get_column(f"{name}_{col}").to_numpy(), err_msg=f"{name}_{col}")
