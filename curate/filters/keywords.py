"""Regex and keyword filters."""

from __future__ import annotations

import re

import polars as pl
from pydantic import Field, field_validator, model_validator

from curate.core.operator import Column, Filter, OpParams, Rule
from curate.core.registry import register


@register("regex_filter")
class RegexFilter(Filter):
    """Drops (or, with ``mode: keep``, keeps only) documents matching regular expressions or keywords.

    ``patterns`` are Rust-regex patterns (polars' engine: no look-around); ``keywords`` match as whole
    words, case-insensitively (word boundaries on lowercased text, as C4's bad-words filter; adjacent
    repeats each count).
    A document matches when it has more than ``max_matches`` hits in total (default 0: any hit).
    """

    class Params(OpParams):
        patterns: list[str] = Field(default_factory=list, description="Rust-regex patterns, each hit counted "
                                    "(default none; give patterns or keywords)")
        keywords: list[str] = Field(default_factory=list, description="whole words matched case-insensitively, "
                                    "as C4's bad-words filter (default none)")
        mode: str = Field("drop", pattern="^(drop|keep)$", description="drop matching docs, or keep only them "
                          "(default drop)")
        max_matches: int = Field(0, ge=0, description="a document matches with more hits than this (default 0: "
                                 "any hit)")

        @field_validator("patterns")
        @classmethod
        def _compiles(cls, v: list[str]) -> list[str]:
            for p in v:  # compiled by polars' (Rust) engine, which has no look-around: check with it
                try:
                    pl.select(pl.lit("").str.contains(p))
                except Exception as e:  # noqa: BLE001 - polars raises ComputeError for bad patterns
                    raise ValueError(f"invalid regex {p!r} (polars/Rust syntax): {e}") from None
            return v

        @model_validator(mode="after")
        def _something(self):
            if not self.patterns and not self.keywords:
                raise ValueError("give at least one of patterns, keywords")
            return self

    def adds(self) -> dict[str, Column]:
        return {"regex_matches": Column(pl.UInt32, "pattern hits plus keyword hits")}

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        text = pl.col("text")
        hits = [text.str.count_matches(p) for p in self.params.patterns]
        if self.params.keywords:
            alt = "|".join(re.escape(k.lower()) for k in self.params.keywords)
            hits.append(text.str.to_lowercase().str.count_matches(r"\b(?:" + alt + r")\b"))
        return batch.with_columns(pl.sum_horizontal(hits).alias("regex_matches"))

    def rules(self) -> list[Rule]:
        if self.params.mode == "drop":
            return [Rule("regex_match", "regex_matches", ">", self.params.max_matches)]
        return [Rule("regex_no_match", "regex_matches", "<=", self.params.max_matches)]
