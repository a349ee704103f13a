"""Gopher filters against the hand-checkable reference values of algorithms.md §1 and the paper's rules."""

from __future__ import annotations

import polars as pl
import pytest

from curate.core.operator import UID
from curate.core.step import run_step
from curate.filters.gopher import GopherQuality, GopherRepetition


def _df(*texts: str) -> pl.DataFrame:
    return pl.DataFrame({"id": [str(i) for i in range(len(texts))], "text": list(texts)}).with_columns(
        pl.int_range(pl.len(), dtype=pl.UInt64).alias(UID))


def test_repetition_reference_values():
    out = GopherRepetition().score(_df("the cat sat on the mat the cat sat on the mat", "a b a b a b")).row(0, named=True)
    assert out["gr_top_2_gram"] == pytest.approx(14 / 45)
    assert out["gr_top_3_gram"] == pytest.approx(22 / 45)
    assert out["gr_top_4_gram"] == pytest.approx(28 / 45)
    assert out["gr_dup_5_gram"] == pytest.approx(14 / 45)
    assert out["gr_dup_6_gram"] == pytest.approx(17 / 45)
    second = GopherRepetition().score(_df("a b a b a b")).row(0, named=True)
    assert second["gr_top_2_gram"] == pytest.approx(9 / 11)  # "a b" x 3


def test_repetition_rejects_at_top_2_gram_first():
    _, rej, _ = run_step(GopherRepetition(), _df("the cat sat on the mat the cat sat on the mat"))
    assert rej["reason"].to_list() == ["top_2_gram"]
    assert rej["threshold"][0] == 0.2


def test_repeated_paragraph_fails_duplicate_paragraph_fraction():
    para = "This is one fairly ordinary paragraph of text with enough words in it to matter here."
    out = GopherRepetition().score(_df("\n\n".join([para] * 3))).row(0, named=True)
    assert out["gr_dup_para_frac"] == pytest.approx(2 / 3)
    _, rej, _ = run_step(GopherRepetition(), _df("\n\n".join([para] * 3)))
    assert rej["reason"][0] == "dup_para_frac"


def test_threshold_boundary_is_strict():
    # duplicate 5-gram fraction exactly at the threshold passes, just above fails
    op = GopherRepetition(dup_para_frac=None, dup_para_char_frac=None, dup_line_frac=None,
                          dup_line_char_frac=None, top_n_grams={}, dup_n_grams={5: 14 / 45})
    _, rej, _ = run_step(op, _df("the cat sat on the mat the cat sat on the mat"))
    assert rej is None
    op2 = GopherRepetition(top_n_grams={}, dup_n_grams={5: 14 / 45 - 1e-9})
    assert run_step(op2, _df("the cat sat on the mat the cat sat on the mat"))[1] is not None


def test_appending_unique_paragraph_never_increases_duplicate_fractions():
    base = "alpha beta gamma.\n\nalpha beta gamma.\n\ndelta epsilon zeta eta.\nline two\nline two"
    more = base + "\n\nan entirely fresh paragraph appears here"
    a, b = GopherRepetition().score(_df(base, more)).iter_rows(named=True)
    for k in ("gr_dup_para_frac", "gr_dup_line_frac"):
        assert b[k] <= a[k]


def test_quality_rules_in_reference_order():
    good = ("The committee said that it would have to be careful with the new plan, and that the members of "
            "the board agreed. ") * 6
    short = "The cat and the dog."
    hashes = good + " #" * 200
    bullets = "\n".join(["- item with the words and to be"] * 20)
    no_stop = " ".join(["lorem"] * 60)
    kept, rej, _ = run_step(GopherQuality(), _df(good, short, hashes, bullets, no_stop))
    assert kept["id"].to_list() == ["0"]
    reasons = dict(zip(rej["id"], rej["reason"]))
    assert reasons["1"] == "gopher_short_doc"
    assert reasons["2"] == "gopher_too_many_hashes"
    assert reasons["3"] == "gopher_too_many_bullets"
    assert reasons["4"] == "gopher_enough_stop_words"


def test_quality_scores_and_disabled_rule():
    text = "The cat... and the dog... were with us all the time..."
    out = GopherQuality().score(_df(text)).row(0, named=True)
    assert out["gq_stop_words"] == 3  # the, and, with (case-sensitive: "The" does not count)
    assert out["gq_ellipsis_lines"] == 1.0
    _, rej, _ = run_step(GopherQuality(min_doc_words=None, max_ellipsis_lines_ratio=None,
                                       max_symbol_word_ratio=None), _df(text))
    assert rej is None or "gopher_short_doc" not in rej["reason"].to_list()
