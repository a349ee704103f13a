"""Length and character-ratio filters."""

from __future__ import annotations

import polars as pl
from pydantic import Field

from curate.core.operator import Filter, OpParams, Rule
from curate.core.registry import register


@register("length_filter")
class LengthFilter(Filter):
    """Drops documents whose length in characters or whitespace words is outside a range.

    Defaults keep everything but empty-ish text (min 1 word); Data-Juicer's ``text_length_filter`` and
    ``words_num_filter`` use the same two measures. Columns: ``n_chars``, ``n_words``.
    """

    class Params(OpParams):
        min_chars: int | None = Field(None, ge=0, description="drop if fewer characters")
        max_chars: int | None = Field(None, gt=0, description="drop if more characters")
        min_words: int | None = Field(1, ge=0, description="drop if fewer whitespace-separated words")
        max_words: int | None = Field(None, gt=0, description="drop if more words")

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        text = pl.col("text")
        return batch.with_columns(
            text.str.len_chars().alias("n_chars"),
            text.str.count_matches(r"\S+").alias("n_words"),
        )

    def rules(self) -> list[Rule]:
        p = self.params
        candidates = [("min_chars", "n_chars", "<", p.min_chars), ("max_chars", "n_chars", ">", p.max_chars),
                      ("min_words", "n_words", "<", p.min_words), ("max_words", "n_words", ">", p.max_words)]
        return [Rule(r, c, op, t) for r, c, op, t in candidates if t is not None]
