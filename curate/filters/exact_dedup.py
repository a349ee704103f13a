"""Exact deduplication on normalised text."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from pydantic import Field

from curate.core.operator import UID, Column, FitContext, GlobalStage, OpParams, Rule, RunContext
from curate.core.registry import register
from curate.core.text import normalize_for_dedup

_HASH_SEED = 0x5EED


def _hash_expr(normalize: bool) -> pl.Expr:
    text = normalize_for_dedup(pl.col("text")) if normalize else pl.col("text")
    return text.hash(seed=_HASH_SEED)


@register("exact_dedup")
class ExactDedup(GlobalStage):
    """Removes documents whose normalised text equals an earlier document's.

    Normalisation (default on, :func:`curate.core.text.normalize_for_dedup`) lowercases, maps every digit
    to 0, turns punctuation and symbols into spaces and collapses whitespace, so copies that differ only in
    case, numbers, punctuation or spacing collapse (accents are kept; ``normalize: false`` compares raw
    text). The first document in input order (shard, then line) is kept, so the
    result does not depend on the number of workers. Hash: polars' 64-bit hash of the normalised text
    (collision chance ~N^2/2^65). Counters: ``distinct_texts``, ``duplicates``; timers ``hash`` (reading and
    hashing), ``group``.
    """

    class Params(OpParams):
        normalize: bool = Field(True, description="compare normalised text (case, digits, punctuation, "
                                                    "spaces); default true, as DataTrove's exact dedup normaliser")

    def adds(self) -> dict[str, Column]:
        return {"dup_of": Column(pl.String, "id of the earlier document with the same (normalised) text",
                                 "never null on a rejected row", rejects_only=True)}

    def fit(self, ctx: FitContext) -> None:
        with ctx.timer("hash"):
            frames = [b.select(pl.col(UID), pl.col("id"), _hash_expr(self.params.normalize).alias("h"))
                      for b in ctx.iter_batches(columns=[UID, "id", "text"])]
        if not frames:
            pl.DataFrame({UID: [], "dup_of": []}, schema={UID: pl.UInt64, "dup_of": pl.String}).write_parquet(
                ctx.state_dir / "dups.parquet")
            return
        with ctx.timer("group"):
            allh = pl.concat(frames)
            first = allh.group_by("h").agg(pl.col("id").sort_by(UID).first().alias("dup_of"),
                                            pl.col(UID).min().alias("first_uid"))
            dups = allh.join(first, on="h").filter(pl.col(UID) != pl.col("first_uid")).select(UID, "dup_of")
        dups.sort(UID).write_parquet(ctx.state_dir / "dups.parquet")
        ctx.stat("distinct_texts", first.height)
        ctx.stat("duplicates", dups.height)

    def setup(self, ctx: RunContext) -> None:
        self._dups = pl.read_parquet(Path(ctx.state_dir) / "dups.parquet")

    def apply(self, batch: pl.DataFrame) -> pl.DataFrame:
        if "dup_of" in batch.columns:
            batch = batch.drop("dup_of")
        return batch.join(self._dups, on=UID, how="left", maintain_order="left")

    def rules(self) -> list[Rule]:
        return [Rule("exact_duplicate", "dup_of", "not_null")]

    def finish(self, kept: pl.DataFrame) -> pl.DataFrame:
        return kept.drop("dup_of")
