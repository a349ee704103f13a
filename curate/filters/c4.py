"""C4 line and document filters (Raffel et al. 2020; TFDS ``c4_utils``; DataTrove ``c4_filters.py``)."""

from __future__ import annotations

import re

import numpy as np
import polars as pl
from pydantic import Field

from curate.core.operator import UID, Column, Filter, OpParams, Rule, RunContext
from curate.core.registry import register
from curate.core.text import TERMINAL_PUNCTUATION, split_lines

CITATION = r"\[\d*\]|\[edit\]|\[citation needed\]"
END_PUNCTUATION = (".", "?", "!", '"', "'")
POLICY_SUBSTRINGS = ["terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies",
                     "use cookies"]
#: a sentence ends at . ! ? (runs of them, optionally closed by quotes/brackets) before a space or the end
SENTENCE_END = r"[.!?\u2026]+[\"'\u201d\u2019)\]]*(?:\s|$)"


def count_sentences(line: pl.Expr) -> pl.Expr:
    """Sentences in a line: sentence-final punctuation followed by space or end, at least 1 per line
    with text (the part after the last full stop counts as a sentence too)."""
    ends = line.str.count_matches(SENTENCE_END)
    tail = line.str.replace(r"(?s).*" + SENTENCE_END, "").str.strip_chars().str.len_chars() > 0
    return ends + tail.cast(pl.UInt32)


@register("c4_quality")
class C4Quality(Filter):
    """C4's line-level cleaning and document rules; rewrites text to the kept lines.

    Per line (stripped), in the reference's order: drop lines with a word longer than 1000 characters;
    remove citation markers (``[1]``, ``[edit]``, ``[citation needed]``); drop lines not ending in terminal
    punctuation (``. ? ! " '``, and not "...") ; drop lines with fewer than 3 words; drop the DOCUMENT if a
    surviving line contains "lorem ipsum"; drop lines containing "javascript"; drop the DOCUMENT if a
    surviving line contains "{"; drop lines containing a cookie/privacy-policy phrase. The document is
    dropped if its kept lines hold fewer than 5 sentences; otherwise its text becomes the kept lines joined
    by newlines. Defaults are C4's (TFDS ``c4_utils``), as DataTrove ``C4QualityFilter``; FineWeb used
    ``filter_no_terminal_punct: false``. Sentences are counted with a punctuation rule (the reference uses
    spaCy's sentencizer). ``text`` of kept documents is rewritten to the kept lines. Counters (per run, as
    DataTrove's line-filter stats): ``lines`` (lines scored), ``lines_removed`` (lines the line rules dropped,
    in documents that are kept or not).
    """

    rewrites_text = True
    #: the run's context (set in ``setup``); scoring outside a run records no counters
    _ctx: RunContext | None = None

    class Params(OpParams):
        remove_citations: bool = Field(True, description="remove [1], [edit], [citation needed] markers "
                                       "(C4 / DataTrove: true)")
        filter_no_terminal_punct: bool = Field(True, description="drop lines not ending in . ? ! \" ' "
                                               "(C4 / DataTrove: true; FineWeb used false)")
        min_num_sentences: int = Field(5, ge=-1, description="drop documents with fewer sentences in their kept "
                                       "lines (C4 / DataTrove: 5; -1 disables)")
        min_words_per_line: int = Field(3, ge=-1, description="drop lines with fewer words "
                                        "(C4 / DataTrove: 3; -1 disables)")
        max_word_length: int = Field(1000, ge=-1, description="drop lines with a longer word, in characters "
                                     "(C4 / DataTrove: 1000; -1 disables)")
        filter_lorem_ipsum: bool = Field(True, description="drop documents containing 'lorem ipsum' "
                                         "(C4 / DataTrove: true)")
        filter_javascript: bool = Field(True, description="drop lines containing 'javascript' (C4 / DataTrove: true)")
        filter_curly_bracket: bool = Field(True, description="drop documents containing '{' (C4 / DataTrove: true)")
        filter_policy: bool = Field(True, description="drop lines with a cookie/privacy-policy phrase "
                                    "(C4 / DataTrove: true)")

    def adds(self) -> dict[str, Column]:
        return {
            "c4_sentences": Column(pl.UInt32, "sentences in the kept lines (0 when no line is kept)"),
            "c4_lines_kept": Column(pl.UInt32, "lines that survive the line rules"),
            "c4_lorem_ipsum": Column(pl.Boolean, "a surviving line has 'lorem ipsum' (before any '{' line)"),
            "c4_curly_bracket": Column(pl.Boolean, "a surviving line has '{' (before any 'lorem ipsum' line)"),
        }

    def setup(self, ctx: RunContext) -> None:
        self._ctx = ctx

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        """The line rules of every document in one numba pass over the batch's bytes
        (:func:`curate.filters._c4_kernel.c4_lines`); documents the kernel cannot lower-case exactly (a
        rare non-ASCII character that lowers to ASCII) go through :meth:`_score_polars`, the definition."""
        import pyarrow as pa

        from curate.core.tokens import char_classes, utf8_buffers
        from curate.filters._c4_kernel import _CITATION_NEEDED, _EDIT, PHRASE_CPS, PHRASE_LEN, c4_lines

        p = self.params
        data, offsets = utf8_buffers(batch.get_column("text"))
        cls = char_classes(data)
        n = batch.height
        out_data = np.empty(max(len(data), 1), dtype=np.uint8)
        out_off = np.zeros(n + 1, dtype=np.int64)
        sent, kept, n_lines, lorem, curly, fallback = c4_lines(
            data, offsets, cls, out_data, out_off, p.remove_citations, p.filter_no_terminal_punct,
            p.min_words_per_line, p.max_word_length, p.filter_lorem_ipsum, p.filter_javascript,
            p.filter_curly_bracket, p.filter_policy, PHRASE_CPS, PHRASE_LEN, _EDIT, _CITATION_NEEDED)
        arr = pa.LargeStringArray.from_buffers(n, pa.py_buffer(out_off), pa.py_buffer(out_data[:out_off[-1]]))
        cols = [pl.Series("__c4_text", pl.from_arrow(arr), dtype=pl.String),
                pl.Series("c4_sentences", sent, dtype=pl.UInt32), pl.Series("c4_lines_kept", kept, dtype=pl.UInt32),
                pl.Series("c4_lorem_ipsum", lorem), pl.Series("c4_curly_bracket", curly)]
        if fallback.any():
            idx = np.flatnonzero(fallback)
            ref = self._score_polars(batch[idx])
            cols = [c.scatter(idx, ref.get_column(c.name)) for c in cols]
        if self._ctx is not None:
            total = int(n_lines.sum())
            self._ctx.stat("lines", total)
            self._ctx.stat("lines_removed", total - int(cols[2].sum()))
        return batch.with_columns(cols)

    def _score_polars(self, batch: pl.DataFrame) -> pl.DataFrame:
        """The line rules as polars expressions over one row per line: the definition the kernel replays
        (used for the documents it sends back, and by the tests as the reference)."""
        p = self.params
        lines = (batch.select(pl.col(UID), split_lines(pl.col("text")).alias("line"))
                 .with_columns(pl.int_range(pl.len()).alias("__row"))
                 .explode("line").drop_nulls("line")
                 .with_columns(pl.col("line").str.strip_chars()))
        line = pl.col("line")
        alive = pl.lit(True)
        if p.max_word_length != -1:
            alive = alive & ~line.str.contains(r"\S{" + str(p.max_word_length + 1) + ",}")
        n_words = line.str.count_matches(r"\S+")
        cleaned = line.str.replace_all(CITATION, "") if p.remove_citations else line
        lines = lines.with_columns(cleaned.alias("line"), n_words.alias("__nw"))
        if p.filter_no_terminal_punct:
            ends = pl.any_horizontal([line.str.ends_with(e) for e in END_PUNCTUATION])
            alive = alive & ends & ~line.str.ends_with("...")
        if p.min_words_per_line != -1:
            alive = alive & (pl.col("__nw") >= p.min_words_per_line)
        lower = line.str.to_lowercase()
        lorem = alive & lower.str.contains("lorem ipsum", literal=True) if p.filter_lorem_ipsum else pl.lit(False)
        if p.filter_javascript:
            alive = alive & ~lower.str.contains("javascript", literal=True)
        curly = alive & line.str.contains("{", literal=True) if p.filter_curly_bracket else pl.lit(False)
        if p.filter_policy:
            alive = alive & ~pl.any_horizontal([lower.str.contains(s, literal=True) for s in POLICY_SUBSTRINGS])
        lines = lines.with_columns(alive.alias("__keep"), lorem.alias("__lorem"), curly.alias("__curly"))
        per_doc = (lines.group_by("__row", maintain_order=True).agg(
            pl.col("line").filter(pl.col("__keep")).str.join("\n").alias("__c4_text"),
            count_sentences(pl.col("line")).filter(pl.col("__keep")).sum().alias("c4_sentences"),
            pl.col("__keep").sum().alias("c4_lines_kept"),
            # a doc-level rule fires only if no earlier line already fired the other one (reference order)
            pl.col("__lorem").arg_max().alias("__lorem_at"), pl.col("__lorem").any().alias("__l"),
            pl.col("__curly").arg_max().alias("__curly_at"), pl.col("__curly").any().alias("__c"),
        ))
        lorem_first = pl.col("__l") & (~pl.col("__c") | (pl.col("__lorem_at") < pl.col("__curly_at")))
        curly_first = pl.col("__c") & ~lorem_first
        per_doc = per_doc.select("__row", "__c4_text", "c4_sentences", "c4_lines_kept",
                                 lorem_first.alias("c4_lorem_ipsum"), curly_first.alias("c4_curly_bracket"))
        out = batch.with_columns(pl.int_range(pl.len()).alias("__row")).join(per_doc, on="__row", how="left",
                                                                             maintain_order="left")
        return out.drop("__row").with_columns(
            pl.col("c4_sentences").fill_null(0), pl.col("c4_lines_kept").fill_null(0),
            pl.col("c4_lorem_ipsum").fill_null(False), pl.col("c4_curly_bracket").fill_null(False),
            pl.col("__c4_text").fill_null(""))

    def rules(self) -> list[Rule]:
        rules = [Rule("lorem_ipsum", "c4_lorem_ipsum", "is_true"), Rule("curly_bracket", "c4_curly_bracket", "is_true")]
        if self.params.min_num_sentences != -1:
            rules.append(Rule("too_few_sentences", "c4_sentences", "<", self.params.min_num_sentences))
        return rules

    def finish(self, kept: pl.DataFrame) -> pl.DataFrame:
        return kept.with_columns(pl.col("__c4_text").str.strip_chars().alias("text")).drop("__c4_text")


@register("fineweb_quality")
class FineWebQuality(Filter):
    """FineWeb's line-structure rules (Penedo et al. 2024; DataTrove ``FineWebQualityFilter``).

    Over non-blank lines (split on "\\n", not stripped, as the reference): drop if fewer than 12% end in
    terminal punctuation (``line_punct_ratio``), more than 67% are at most 30 characters
    (``short_line_ratio``), duplicated lines hold more than 1% of the non-newline characters
    (``char_dup_ratio``), or newlines per word exceed 0.3 (``list_ratio``). Defaults from the FineWeb
    release. Documents with no non-blank line are dropped as ``empty``.
    """

    class Params(OpParams):
        line_punct_thr: float = Field(0.12, ge=0, le=1, description="drop if a smaller share of lines ends in "
                                      "terminal punctuation (FineWeb / DataTrove: 0.12)")
        line_punct_exclude_zero: bool = Field(False, description="a share of exactly 0 never drops "
                                              "(DataTrove: false)")
        short_line_thr: float = Field(0.67, ge=0, le=1, description="drop if a larger share of lines is short "
                                      "(FineWeb / DataTrove: 0.67)")
        short_line_length: int = Field(30, ge=0, description="a line of at most this many characters is short "
                                       "(FineWeb / DataTrove: 30)")
        char_duplicates_ratio: float = Field(0.01, ge=0, description="drop if duplicated lines hold a larger share "
                                             "of the non-newline characters (FineWeb / DataTrove: 0.01)")
        new_line_ratio: float = Field(0.3, ge=0, description="drop if newlines per word exceed this "
                                      "(FineWeb / DataTrove: 0.3)")
        stop_chars: str | None = Field(None, description="line-final characters that count as punctuation; "
                                       "default: DataTrove's TERMINAL_PUNCTUATION (159 marks, many scripts)")

    def adds(self) -> dict[str, Column]:
        no_line = "null when the document has no non-blank line (then dropped as empty)"
        return {
            "fw_lines": Column(pl.UInt32, "non-blank lines"),
            "fw_line_punct_ratio": Column(pl.Float64, "share of lines ending in terminal punctuation", no_line),
            "fw_short_line_ratio": Column(pl.Float64, "share of lines of at most short_line_length characters",
                                          no_line),
            "fw_char_dup_ratio": Column(pl.Float64, "characters in duplicated lines / non-newline characters",
                                        "null when there is no non-newline character; never drops"),
            "fw_list_ratio": Column(pl.Float64, "newlines per word", "null when there is no word; never drops"),
        }

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        from curate.core.tokens import batch_word_table

        p = self.params
        text = pl.col("text")
        lines = text.str.split("\n").list.eval(pl.element().filter(pl.element().str.strip_chars() != ""))
        out = batch.with_columns(lines.alias("__fw_lines"))
        ln = pl.col("__fw_lines")
        n = ln.list.len()
        ends = pl.element().str.contains("[" + re.escape(p.stop_chars or TERMINAL_PUNCTUATION) + "]$")
        chars = ln.list.eval(pl.element().str.len_chars()).list.sum()
        uchars = ln.list.unique().list.eval(pl.element().str.len_chars()).list.sum()
        nonl = text.str.len_chars() - text.str.count_matches("\n", literal=True)
        # token counts from the batch's shared table: recomputed only for rows an earlier step rewrote
        n_words = pl.lit(pl.Series(batch_word_table(batch).counts, dtype=pl.UInt32))
        return out.with_columns(
            n.alias("fw_lines"),
            (ln.list.eval(ends).list.sum() / n).alias("fw_line_punct_ratio"),
            (ln.list.eval(pl.element().str.len_chars() <= p.short_line_length).list.sum() / n)
            .alias("fw_short_line_ratio"),
            pl.when(nonl > 0).then((chars - uchars) / nonl).alias("fw_char_dup_ratio"),
            pl.when(n_words > 0).then(text.str.count_matches("\n", literal=True) / n_words).alias("fw_list_ratio"),
        ).drop("__fw_lines")

    def rules(self) -> list[Rule]:
        p = self.params
        rules = [Rule("empty", "fw_lines", "==", 0)]
        if p.line_punct_exclude_zero:
            rules.append(Rule("line_punct_ratio", "__fw_punct_nonzero", "<", p.line_punct_thr))
        else:
            rules.append(Rule("line_punct_ratio", "fw_line_punct_ratio", "<", p.line_punct_thr))
        return rules + [
            Rule("short_line_ratio", "fw_short_line_ratio", ">", p.short_line_thr),
            Rule("char_dup_ratio", "fw_char_dup_ratio", ">", p.char_duplicates_ratio),
            Rule("list_ratio", "fw_list_ratio", ">", p.new_line_ratio),
        ]

    def process(self, batch: pl.DataFrame) -> pl.DataFrame:
        out = self.score(batch)
        if self.params.line_punct_exclude_zero:  # ratio 0 is exempt: compare a copy with 0 set to null
            r = pl.col("fw_line_punct_ratio")
            out = out.with_columns(pl.when(r == 0).then(None).otherwise(r).alias("__fw_punct_nonzero"))
        return out

    def finish(self, kept: pl.DataFrame) -> pl.DataFrame:
        return kept.drop("__fw_punct_nonzero", strict=False)
