"""C4 and FineWeb rules on hand-built documents (algorithms.md §2.1-2.2)."""

from __future__ import annotations

import polars as pl

from curate.core.operator import UID
from curate.core.step import run_step
from curate.filters.c4 import C4Quality, FineWebQuality, count_sentences

S = "This is a complete sentence with words."


def _df(*texts: str) -> pl.DataFrame:
    return pl.DataFrame({"id": [str(i) for i in range(len(texts))], "text": list(texts)}).with_columns(
        pl.int_range(pl.len(), dtype=pl.UInt64).alias(UID))


def test_c4_line_rules_and_rewrite():
    text = "\n".join([
        S, "no terminal punctuation here", "Too short.", "Ends with an ellipsis...",
        "Enable javascript to view this page.", "Read our privacy policy before you go.",
        "A cited claim is here [1] and stays.", S, S, S])
    kept, rej, _ = run_step(C4Quality(), _df(text))
    assert rej is None
    assert kept["text"][0].split("\n") == [S, "A cited claim is here  and stays.", S, S, S]
    assert kept["c4_sentences"][0] == 5


def test_c4_document_rules():
    kept, rej, _ = run_step(C4Quality(), _df(
        "\n".join([S] * 4),                                  # 4 sentences < 5
        "\n".join([S] * 5 + ["Lorem ipsum dolor sit amet."]),
        "\n".join([S] * 5 + ["function f() { return 1; }."]),
        "\n".join([S] * 5 + ["lorem ipsum without an end"]),  # line dropped before the lorem check
    ))
    assert dict(zip(rej["id"], rej["reason"])) == {"0": "too_few_sentences", "1": "lorem_ipsum", "2": "curly_bracket"}
    assert kept["id"].to_list() == ["3"]


def test_c4_terminal_punct_off_as_fineweb():
    kept, _, _ = run_step(C4Quality(filter_no_terminal_punct=False),
                          _df("\n".join(["one two three four"] * 2 + [S] * 3)))
    assert kept["text"][0].count("\n") == 4


def test_sentence_count():
    got = pl.DataFrame({"l": ["One. Two! Three?", "No end here", "Dr. Who said so.", "Wait... what."]}).select(
        count_sentences(pl.col("l"))).to_series().to_list()
    assert got == [3, 1, 2, 2]


def test_fineweb_rules():
    punct = "\n".join([S] * 10)
    no_punct = "\n".join([f"a line without the final mark number {i} here" for i in range(10)])
    short = "\n".join([S] + [f"short {i}." for i in range(9)])
    dup = "\n".join([S] * 3 + [f"{S} {i}" for i in range(20)])
    kept, rej, _ = run_step(FineWebQuality(), _df(punct, no_punct, short, dup))
    reasons = dict(zip(rej["id"], rej["reason"]))
    assert reasons == {"0": "char_dup_ratio", "1": "line_punct_ratio", "2": "short_line_ratio", "3": "char_dup_ratio"}
    uniq = "\n".join(f"Sentence number {i} is a unique and long enough line." for i in range(10))
    kept, rej, _ = run_step(FineWebQuality(), _df(uniq))
    assert rej is None and kept.height == 1


def test_fineweb_exclude_zero_punct():
    no_punct = "\n".join(f"a line without the final mark number {i} here" for i in range(10))
    kept, _, _ = run_step(FineWebQuality(line_punct_exclude_zero=True), _df(no_punct))
    assert kept.height == 1
