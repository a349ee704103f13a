"""Gopher quality and repetition filters (Rae et al. 2021, MassiveText, Appendix A; DataTrove's
``gopher_quality_filter.py`` and ``gopher_repetition_filter.py``)."""

from __future__ import annotations

import numpy as np
import polars as pl
from pydantic import Field

from curate.core.operator import Column, Filter, OpParams, Rule
from curate.core.registry import register
from curate.core.text import split_lines
from curate.core.tokens import (
    TOK_ALPHA,
    TOK_PUNCT,
    WordTable,
    batch_word_table,
    char_classes,
    token_hash,
    utf8_buffers,
)

STOP_WORDS = ["the", "be", "to", "of", "and", "that", "have", "with"]
#: GopherQuality's output columns, in order
_OUT = ("gq_n_words", "gq_avg_word_len", "gq_hash_ratio", "gq_ellipsis_ratio", "gq_bullet_lines",
        "gq_ellipsis_lines", "gq_alpha_ratio", "gq_stop_words")


def _ratio(num: pl.Expr, den: pl.Expr) -> pl.Expr:
    """num / den, null when den is 0 (the reference divides by zero there; null never drops)."""
    return pl.when(den > 0).then(num / den).otherwise(None)


def _word_stats(table: WordTable, stop_words: list[str]) -> list[pl.Series]:
    """Per document: all tokens (``__gq_n``), non-symbol words, their mean length, tokens with a letter
    (``__gq_alpha``) and distinct stop words, from a :class:`~curate.core.tokens.WordTable`."""
    from curate.filters._repetition_kernel import gopher_word_stats

    stop = sorted({(token_hash(w), len(w)) for w in stop_words})
    n_words, len_sum, n_alpha, n_stop = gopher_word_stats(
        table.offsets, table.hashes, table.lengths, table.flags, np.array([h for h, _ in stop], dtype=np.uint64),
        np.array([n for _, n in stop], dtype=np.int64), TOK_PUNCT, TOK_ALPHA)
    with np.errstate(divide="ignore", invalid="ignore"):
        avg = np.where(n_words > 0, len_sum / np.maximum(n_words, 1), np.nan)
    return [pl.Series("__gq_n", table.counts, dtype=pl.UInt32),
            pl.Series("gq_n_words", n_words, dtype=pl.UInt32),
            pl.Series("gq_avg_word_len", avg, dtype=pl.Float64, nan_to_null=True),
            pl.Series("__gq_alpha", n_alpha, dtype=pl.UInt32),
            pl.Series("gq_stop_words", n_stop, dtype=pl.UInt32)]


@register("gopher_quality")
class GopherQuality(Filter):
    """Drops documents that fail Gopher's quality heuristics.

    Defaults are Gopher's (Rae et al. 2021, App. A, Table A1) as in DataTrove ``GopherQualityFilter``:
    50-100,000 non-symbol words; mean word length 3-10 characters; "#" and ellipsis to word ratios at most
    0.1; at most 90% of lines starting with a bullet; at most 30% ending with an ellipsis; at least 80% of
    words with an alphabetic character; at least 2 of the 8 stop words (the, be, to, of, and, that, have,
    with; case-sensitive, as the reference). Rules are checked in that order; the first that fails is the
    recorded reason. ``None`` disables a rule.

    Words are tokens of :func:`curate.core.text.words` (punctuation split off, like the reference's spaCy
    tokenizer), taken from the batch's shared token table (:func:`curate.core.tokens.batch_word_table`). Ratios over zero words or lines are null, and a null never drops a document.
    """

    class Params(OpParams):
        min_doc_words: int | None = Field(50, ge=0, description="drop if fewer non-symbol words "
                                          "(Gopher Table A1 / DataTrove: 50; null or 0 disables)")
        max_doc_words: int | None = Field(100_000, gt=0, description="drop if more non-symbol words "
                                          "(Gopher / DataTrove: 100,000; null disables)")
        min_avg_word_length: float | None = Field(3, ge=0, description="drop if the mean word length in "
                                                  "characters is lower (Gopher / DataTrove: 3)")
        max_avg_word_length: float | None = Field(10, gt=0, description="drop if the mean word length is "
                                                  "higher (Gopher / DataTrove: 10)")
        max_symbol_word_ratio: float | None = Field(0.1, ge=0, description="drop if '#' or ellipses per word "
                                                    "exceed this (Gopher / DataTrove: 0.1, each checked alone)")
        max_bullet_lines_ratio: float | None = Field(0.9, ge=0, description="drop if a larger share of lines "
                                                     "starts with a bullet (Gopher / DataTrove: 0.9)")
        max_ellipsis_lines_ratio: float | None = Field(0.3, ge=0, description="drop if a larger share of lines "
                                                       "ends with an ellipsis (Gopher / DataTrove: 0.3)")
        min_alpha_words_ratio: float | None = Field(0.8, ge=0, le=1, description="drop if a smaller share of "
                                                    "words has an alphabetic character (Gopher / DataTrove: 0.8)")
        min_stop_words: int | None = Field(2, ge=0, description="drop if fewer distinct stop words occur "
                                           "(Gopher / DataTrove: 2)")
        stop_words: list[str] = Field(default_factory=lambda: list(STOP_WORDS), description="the stop words, "
                                      "case-sensitive (Gopher / DataTrove: the, be, to, of, and, that, have, with)")

    def adds(self) -> dict[str, Column]:
        per_word = "null when the document has no word token"
        per_line = "null when the document has no line"
        return {
            "gq_n_words": Column(pl.UInt32, "words that are not only punctuation"),
            "gq_avg_word_len": Column(pl.Float64, "mean characters per non-symbol word",
                                      "null when there is no non-symbol word; never drops"),
            "gq_hash_ratio": Column(pl.Float64, "'#' characters per word", per_word + "; never drops"),
            "gq_ellipsis_ratio": Column(pl.Float64, "ellipses ('...' or U+2026) per word", per_word + "; never drops"),
            "gq_bullet_lines": Column(pl.Float64, "share of lines starting with a bullet", per_line + "; never drops"),
            "gq_ellipsis_lines": Column(pl.Float64, "share of lines ending with an ellipsis",
                                        per_line + "; never drops"),
            "gq_alpha_ratio": Column(pl.Float64, "share of words with an alphabetic character",
                                     per_word + "; never drops"),
            "gq_stop_words": Column(pl.UInt32, "distinct stop words present"),
        }

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Word statistics from the batch's shared token table (tokenised once for every filter); the "#"
        and ellipsis counts and the bullet / end-ellipsis line shares in one numba pass over the batch's
        bytes (:func:`curate.filters._gopher_kernel.gopher_line_stats`; :meth:`_score_polars` is the
        polars definition it replays, kept for the tests)."""
        from curate.filters._gopher_kernel import gopher_line_stats

        stats = _word_stats(batch_word_table(batch), self.params.stop_words)
        data, offsets = utf8_buffers(batch.get_column("text"))
        n_hash, n_ell, n_lines, n_bullet, n_ell_lines = gopher_line_stats(data, offsets, char_classes(data))
        n = stats[0].to_numpy().astype(np.float64)
        lines = n_lines.astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):  # a zero denominator gives null, as _ratio
            cols = [pl.Series(name, np.where(den > 0, num / den, np.nan), dtype=pl.Float64, nan_to_null=True)
                    for name, num, den in (("gq_hash_ratio", n_hash, n), ("gq_ellipsis_ratio", n_ell, n),
                                           ("gq_bullet_lines", n_bullet, lines),
                                           ("gq_ellipsis_lines", n_ell_lines, lines),
                                           ("gq_alpha_ratio", stats[3].to_numpy(), n))]
        return batch.with_columns(*stats[1:3], stats[4], *cols).select(*batch.columns, *_OUT)

    def _score_polars(self, batch: pl.DataFrame) -> pl.DataFrame:
        """The line and symbol ratios as polars expressions: the definition :meth:`score`'s kernel replays."""
        stats = _word_stats(batch_word_table(batch), self.params.stop_words)
        lines = pl.col("__gq_lines")
        n = pl.col("__gq_n")
        n_lines = lines.list.len()
        text = pl.col("text")
        out = batch.with_columns(split_lines(text).alias("__gq_lines"), *stats)
        return out.with_columns(
            _ratio(text.str.count_matches("#", literal=True), n).alias("gq_hash_ratio"),
            _ratio(text.str.count_matches("...", literal=True) + text.str.count_matches("\u2026", literal=True), n)
            .alias("gq_ellipsis_ratio"),
            _ratio(lines.list.eval(pl.element().str.strip_chars_start().str.contains("^[\u2022-]")).list.sum(),
                   n_lines).alias("gq_bullet_lines"),
            _ratio(lines.list.eval(pl.element().str.strip_chars_end().str.contains("(\\.\\.\\.|\u2026)$")).list.sum(),
                   n_lines).alias("gq_ellipsis_lines"),
            _ratio(pl.col("__gq_alpha"), n).alias("gq_alpha_ratio"),
        ).drop("__gq_lines", "__gq_n", "__gq_alpha").select(*batch.columns, *_OUT)

    def rules(self) -> list[Rule]:
        p = self.params
        spec = [
            ("gopher_short_doc", "gq_n_words", "<", p.min_doc_words),
            ("gopher_long_doc", "gq_n_words", ">", p.max_doc_words),
            ("gopher_below_avg_threshold", "gq_avg_word_len", "<", p.min_avg_word_length),
            ("gopher_above_avg_threshold", "gq_avg_word_len", ">", p.max_avg_word_length),
            ("gopher_too_many_hashes", "gq_hash_ratio", ">", p.max_symbol_word_ratio),
            ("gopher_too_many_ellipsis", "gq_ellipsis_ratio", ">", p.max_symbol_word_ratio),
            ("gopher_too_many_bullets", "gq_bullet_lines", ">", p.max_bullet_lines_ratio),
            ("gopher_too_many_end_ellipsis", "gq_ellipsis_lines", ">", p.max_ellipsis_lines_ratio),
            ("gopher_below_alpha_threshold", "gq_alpha_ratio", "<", p.min_alpha_words_ratio),
            ("gopher_enough_stop_words", "gq_stop_words", "<", p.min_stop_words),
        ]
        # the reference disables a rule on a falsy threshold (None or 0)
        return [Rule(r, c, op, t) for r, c, op, t in spec if t]


@register("gopher_repetition")
class GopherRepetition(Filter):
    """Drops documents with too much repeated content (Gopher, Rae et al. 2021, Table A1).

    Defaults as Gopher / DataTrove ``GopherRepetitionFilter``: duplicate-paragraph fraction 0.30 by count and
    0.20 by characters, duplicate-line fraction 0.30 / 0.20, most frequent 2/3/4-gram character fractions
    0.20 / 0.18 / 0.16, duplicate 5..10-gram character fractions 0.15 .. 0.10. Definitions follow the
    reference exactly (paragraphs split on 2+ newlines of the stripped text, lines on 1+ newlines, top
    n-grams space-joined, duplicate n-grams concatenated with skip-ahead, all over the raw character count);
    the n-gram and duplicate line/paragraph statistics run in numba kernels over the whole batch, on the
    word tokens the batch's filters share (:func:`curate.core.tokens.batch_word_table`: tokenised once,
    reused by Gopher quality and FineWeb quality). Ratios over an empty document are
    null (NaN for the n-gram fractions) and never drop it (the reader already skips empty text, counted).
    """

    class Params(OpParams):
        dup_para_frac: float | None = Field(0.3, ge=0, description="drop if a larger share of paragraphs "
                                            "are duplicates (Gopher Table A1 / DataTrove: 0.3; null disables)")
        dup_para_char_frac: float | None = Field(0.2, ge=0, description="drop if duplicate paragraphs hold a "
                                                 "larger share of characters (Gopher / DataTrove: 0.2)")
        dup_line_frac: float | None = Field(0.3, ge=0, description="drop if a larger share of lines are "
                                            "duplicates (Gopher / DataTrove: 0.3)")
        dup_line_char_frac: float | None = Field(0.2, ge=0, description="drop if duplicate lines hold a larger "
                                                 "share of characters (Gopher / DataTrove: 0.2)")
        top_n_grams: dict[int, float] = Field(default_factory=lambda: {2: 0.2, 3: 0.18, 4: 0.16}, description=(
            "n -> max character share of the most frequent n-gram (Gopher / DataTrove: 2: 0.2, 3: 0.18, 4: 0.16)"))
        dup_n_grams: dict[int, float] = Field(
            default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}, description=(
                "n -> max character share of duplicated n-grams (Gopher / DataTrove: 5: 0.15 down to 10: 0.10)"))

    def adds(self) -> dict[str, Column]:
        p = self.params
        null = "null for an empty document (never reaches here: the reader skips empty text); never drops"
        out = {}
        for unit in ("para", "line"):
            out[f"gr_dup_{unit}_frac"] = Column(pl.Float64, f"share of {unit}s that repeat an earlier one", null)
            out[f"gr_dup_{unit}_char_frac"] = Column(pl.Float64, f"characters in duplicate {unit}s / all", null)
        nan = "NaN for an empty document; never drops"
        out.update({f"gr_top_{n}_gram": Column(pl.Float64, f"characters of the most frequent {n}-gram / all", nan)
                    for n in sorted(p.top_n_grams)})
        out.update({f"gr_dup_{n}_gram": Column(pl.Float64, f"characters in duplicated {n}-grams / all", nan)
                    for n in sorted(p.dup_n_grams)})
        return out

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        from curate.filters._repetition_kernel import dup_segment_stats, repetition_stats

        text = pl.col("text")
        L = text.str.len_chars()
        # duplicate paragraphs and lines in one pass over the bytes (same definitions as the polars split:
        # see dup_segment_stats)
        data, offsets = utf8_buffers(batch.get_column("text"))
        length = batch.select(L).to_series().to_numpy().astype(np.float64)
        stats = dup_segment_stats(data, offsets, char_classes(data))
        cols = []
        with np.errstate(divide="ignore", invalid="ignore"):
            for k, name in enumerate(("para", "line")):
                n, u, ch, uch = stats[4 * k:4 * k + 4]
                cols += [pl.Series(f"gr_dup_{name}_frac", np.where(n > 0, (n - u) / np.maximum(n, 1), np.nan),
                                   nan_to_null=True),
                         pl.Series(f"gr_dup_{name}_char_frac", np.where(length > 0, (ch - uch) / length, np.nan),
                                   nan_to_null=True)]
        out = batch.with_columns(cols)
        top_ns = np.array(sorted(self.params.top_n_grams), dtype=np.int64)
        dup_ns = np.array(sorted(self.params.dup_n_grams), dtype=np.int64)
        table = batch_word_table(batch)  # shared with the other filters of the batch
        top, dup = repetition_stats(table.hashes, table.lengths, table.offsets, top_ns, dup_ns)
        with np.errstate(divide="ignore", invalid="ignore"):
            cols = [pl.Series(f"gr_top_{n}_gram", np.where(length > 0, top[:, i] / length, np.nan))
                    for i, n in enumerate(top_ns)]
            cols += [pl.Series(f"gr_dup_{n}_gram", np.where(length > 0, dup[:, i] / length, np.nan))
                     for i, n in enumerate(dup_ns)]
        return out.with_columns(cols)

    def rules(self) -> list[Rule]:
        p = self.params
        rules: list[Rule] = []
        for name, col, t in [("dup_para_frac", "gr_dup_para_frac", p.dup_para_frac),
                             ("dup_para_char_frac", "gr_dup_para_char_frac", p.dup_para_char_frac),
                             ("dup_line_frac", "gr_dup_line_frac", p.dup_line_frac),
                             ("dup_line_char_frac", "gr_dup_line_char_frac", p.dup_line_char_frac)]:
            if t is not None:
                rules.append(Rule(name, col, ">", t))
        rules += [Rule(f"top_{n}_gram", f"gr_top_{n}_gram", ">", t) for n, t in sorted(p.top_n_grams.items())]
        rules += [Rule(f"duplicated_{n}_n_grams", f"gr_dup_{n}_gram", ">", t) for n, t in sorted(p.dup_n_grams.items())]
        return rules
