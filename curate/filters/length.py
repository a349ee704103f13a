"""Length and character-ratio filters."""

from __future__ import annotations

import polars as pl
from pydantic import Field

from curate.core.operator import Column, Filter, OpParams, Rule
from curate.core.registry import register


@register("length_filter")
class LengthFilter(Filter):
    """Drops documents whose length in characters or whitespace words is outside a range.

    Defaults keep everything but empty-ish text (min 1 word); Data-Juicer's ``text_length_filter`` and
    ``words_num_filter`` use the same two measures.
    """

    class Params(OpParams):
        min_chars: int | None = Field(None, ge=0, description="drop if fewer characters (default off)")
        max_chars: int | None = Field(None, gt=0, description="drop if more characters (default off)")
        min_words: int | None = Field(1, ge=0, description="drop if fewer whitespace-separated words "
                                      "(default 1: only empty-ish text, as Data-Juicer's words_num_filter)")
        max_words: int | None = Field(None, gt=0, description="drop if more words (default off)")

    def adds(self) -> dict[str, Column]:
        return {"n_chars": Column(pl.UInt32, "characters (Unicode code points)"),
                "n_words": Column(pl.UInt32, "whitespace-separated words")}

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


def _frac(pattern: str) -> pl.Expr:
    n = pl.col("text").str.len_chars()
    return pl.when(n > 0).then(pl.col("text").str.count_matches(pattern) / n)


@register("char_ratio_filter")
class CharRatioFilter(Filter):
    """Drops documents by character composition.

    ``min_alnum_ratio`` (alphanumeric characters / all, Data-Juicer ``alphanumeric_filter`` default 0.25),
    ``max_special_ratio`` (characters that are neither alphanumeric nor whitespace, Data-Juicer
    ``special_characters_filter`` default 0.25), and optional caps on digits, uppercase letters and
    whitespace (off by default).
    """

    class Params(OpParams):
        min_alnum_ratio: float | None = Field(0.25, ge=0, le=1, description="drop if a smaller share of "
                                              "characters is alphanumeric (Data-Juicer alphanumeric_filter: 0.25)")
        max_special_ratio: float | None = Field(0.25, ge=0, le=1, description="drop if a larger share is neither "
                                                "alphanumeric nor whitespace (Data-Juicer special_characters_filter: "
                                                "0.25)")
        max_digit_ratio: float | None = Field(None, ge=0, le=1, description="drop if a larger share is digits "
                                              "(default off)")
        max_upper_ratio: float | None = Field(None, ge=0, le=1, description="drop if a larger share is uppercase "
                                              "letters (default off)")
        max_space_ratio: float | None = Field(None, ge=0, le=1, description="drop if a larger share is whitespace "
                                              "(default off)")

    def adds(self) -> dict[str, Column]:
        null = "null for an empty text (never reaches here: the reader skips empty text); never drops"
        return {"cr_alnum": Column(pl.Float64, "letters and digits / characters", null),
                "cr_special": Column(pl.Float64, "characters neither alphanumeric nor whitespace / characters", null),
                "cr_digit": Column(pl.Float64, "digits / characters", null),
                "cr_upper": Column(pl.Float64, "uppercase letters / characters", null),
                "cr_space": Column(pl.Float64, "whitespace / characters", null)}

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        return batch.with_columns(
            _frac(r"[\p{L}\p{N}]").alias("cr_alnum"), _frac(r"[^\p{L}\p{N}\s]").alias("cr_special"),
            _frac(r"\p{N}").alias("cr_digit"), _frac(r"\p{Lu}").alias("cr_upper"), _frac(r"\s").alias("cr_space"))

    def rules(self) -> list[Rule]:
        p = self.params
        spec = [("min_alnum_ratio", "cr_alnum", "<", p.min_alnum_ratio),
                ("max_special_ratio", "cr_special", ">", p.max_special_ratio),
                ("max_digit_ratio", "cr_digit", ">", p.max_digit_ratio),
                ("max_upper_ratio", "cr_upper", ">", p.max_upper_ratio),
                ("max_space_ratio", "cr_space", ">", p.max_space_ratio)]
        return [Rule(r, c, op, t) for r, c, op, t in spec if t is not None]
