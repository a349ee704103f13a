"""Exact deduplication on normalised text."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import polars as pl
from pydantic import Field

from curate.core.operator import UID, Column, FitContext, GlobalStage, OpParams, Rule, RunContext
from curate.core.registry import register
from curate.core.text import normalize_for_dedup

_HASH_SEED = 0x5EED


def _hash_expr(normalize: bool) -> pl.Expr:
    """The text hash as a polars expression: the definition :func:`text_hashes` computes faster."""
    text = normalize_for_dedup(pl.col("text")) if normalize else pl.col("text")
    return text.hash(seed=_HASH_SEED)


def text_hashes(text: pl.Series, normalize: bool) -> pl.Series:
    """:func:`_hash_expr` of ``text``: polars' 64-bit hash of the text, normalised by the one-pass kernel
    (:func:`curate.filters._dedup_kernel.dedup_normalized`, the same strings as ``normalize_for_dedup``)."""
    if normalize:
        from curate.filters._dedup_kernel import dedup_normalized

        text = dedup_normalized(text)
    return text.hash(seed=_HASH_SEED).alias("h")


def _hash_shard(normalize: bool, shard: Path, out: Path) -> None:
    """Per shard: (row key, id, text hash) -> parquet."""
    from curate.io.spill import read_spill

    frames = [b.select(pl.col(UID), pl.col("id")).with_columns(text_hashes(b.get_column("text"), normalize))
              for b in read_spill(shard, [UID, "id", "text"])]
    (pl.concat(frames) if frames else pl.DataFrame(schema={UID: pl.UInt64, "id": pl.String, "h": pl.UInt64})
     ).write_parquet(out)


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
        with ctx.timer("hash"):  # per shard, in parallel (worker processes locally, Ray tasks on Ray)
            hash_files = ctx.map_shards(partial(_hash_shard, self.params.normalize),
                                        f"exact_hash_{int(self.params.normalize)}")
        with ctx.timer("group"):  # by hash: in this process locally, a Ray Data shuffle on Ray
            dup_files, distinct = ctx.global_ops.group_first(hash_files, key="h", order=UID, value="id",
                                                             out_dir=ctx.scratch_dir / "exact_groups")
            dups = (pl.concat([pl.read_parquet(f) for f in dup_files]) if dup_files
                    else pl.DataFrame(schema={UID: pl.UInt64, "dup_of": pl.String}))
        dups.sort(UID).write_parquet(ctx.state_dir / "dups.parquet")
        ctx.stat("distinct_texts", distinct)
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
