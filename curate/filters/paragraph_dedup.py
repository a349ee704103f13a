"""Paragraph-level dedup across documents (``paragraph_dedup``): Dolma's Bloom-filter paragraph dedup."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
from pydantic import Field

from curate.core.operator import UID, Column, FitContext, GlobalStage, OpParams, Rule, RunContext
from curate.core.registry import register

_SEEDS = (0xB100, 0xB101)


class BloomFilter:
    """A Bloom filter over pairs of 64-bit hashes, in a numpy bit array.

    Sized as usual for ``n`` expected items and false-positive rate ``p``: ``m = -n ln p / (ln 2)^2`` bits
    and ``k = round(m / n ln 2)`` probes (Dolma's ``BloomFilter::suggest_size_in_bytes`` /
    ``optimal_number_of_hashers``); probes ``h1 + i*h2 mod m`` (Kirsch & Mitzenmacher 2006 double
    hashing) instead of Dolma's k seeded ahash calls, with the same false-positive rate."""

    def __init__(self, expected_items: int, fp_rate: float):
        n = max(int(expected_items), 1)
        self.m = max(64, int(math.ceil(-n * math.log(fp_rate) / math.log(2) ** 2)))
        self.k = max(1, round(self.m / n * math.log(2)))
        self.bits = np.zeros((self.m + 63) // 64, dtype=np.uint64)

    def _probes(self, h1: np.ndarray, h2: np.ndarray) -> np.ndarray:
        i = np.arange(self.k, dtype=np.uint64)
        with np.errstate(over="ignore"):
            return (h1[:, None] + i[None, :] * (h2[:, None] | np.uint64(1))) % np.uint64(self.m)

    def contains(self, h1: np.ndarray, h2: np.ndarray) -> np.ndarray:
        pos = self._probes(h1, h2)
        word = self.bits[(pos >> np.uint64(6)).astype(np.int64)]
        return ((word >> (pos & np.uint64(63))) & np.uint64(1)).astype(bool).all(axis=1)

    def insert(self, h1: np.ndarray, h2: np.ndarray) -> None:
        pos = np.sort(self._probes(h1, h2).ravel())  # np.unique was 50x slower here (numpy 2.x)
        if pos.size == 0:
            return
        word = (pos >> np.uint64(6)).astype(np.int64)
        bit = np.uint64(1) << (pos & np.uint64(63))
        # positions are sorted, so bits of one word are adjacent: OR them per word, then one fancy-index OR
        starts = np.flatnonzero(np.r_[True, word[1:] != word[:-1]])
        self.bits[word[starts]] |= np.bitwise_or.reduceat(bit, starts)

    def fp_rate(self, items: int) -> float:
        """The expected false-positive rate after ``items`` insertions: (1 - e^(-k n / m))^k."""
        return (1 - math.exp(-self.k * items / self.m)) ** self.k


def paragraphs(batch: pl.DataFrame, separator: str) -> pl.DataFrame:
    """One row per paragraph: ``__row`` (row in batch), ``__p`` (index in its doc), ``para``, ``start`` and
    ``end`` character offsets exactly as Dolma writes its spans (``end`` includes the separator, except for
    the last paragraph; see the comment below for Dolma's byte/character quirk)."""
    sep_len = len(separator)
    parts = (batch.select(pl.col("text").str.split(separator).alias("para"),
                          pl.col("text").str.len_bytes().cast(pl.Int64).alias("__bytes"))
             .with_columns(pl.int_range(pl.len(), dtype=pl.UInt32).alias("__row"))
             .explode("para")
             .with_columns(pl.int_range(pl.len(), dtype=pl.UInt32).over("__row").alias("__p"),
                           pl.col("para").str.len_chars().cast(pl.Int64).alias("__len")))
    return parts.with_columns(
        (pl.col("__len") + sep_len).cum_sum().over("__row").alias("__cum"),
    ).with_columns(
        (pl.col("__cum") - pl.col("__len") - sep_len).alias("start"),
    ).with_columns(
        # Dolma adds the separator unless the paragraph's end (in characters) reaches the text's byte length
        # minus 1: the last paragraph of a non-ASCII text gets one past its end too (reproduced, harmless)
        pl.when(pl.col("start") + pl.col("__len") < pl.col("__bytes") - 1).then(pl.col("__cum"))
        .otherwise(pl.col("start") + pl.col("__len")).alias("end"),
    ).drop("__cum", "__bytes")


@register("paragraph_dedup")
class ParagraphDedup(GlobalStage):
    """Removes paragraphs that already appeared earlier in the corpus (first occurrence kept).

    Dolma's ``dedupe.paragraphs`` (``src/deduper.rs``): each document's text is split on ``"\\n"``
    (``paragraph_separator``); documents are visited in input order (shard, then row) and each paragraph is
    looked up in a Bloom filter, then inserted: a paragraph found is a duplicate and removed. The filter is
    sized from ``expected_paragraphs`` and ``false_positive_rate`` (Dolma: ``estimated_doc_count``,
    ``desired_false_positive_rate``); a false positive removes a unique paragraph, so the rate is the
    fraction of unique paragraphs wrongly removed (``method: exact`` uses exact 64-bit hashes instead:
    no false positives, memory ~24 bytes per paragraph). Within one batch, copies are found exactly
    (first in order kept). Differences from Dolma's defaults, both settable: ``skip_empty: true``
    (Dolma hashes empty lines too, so every blank line after the first in the corpus is a "duplicate" -
    harmless for its span attributes, destructive when text is rewritten) and ``min_length`` 0 as Dolma.

    Text is rewritten to the kept paragraphs joined by the separator. Columns added: ``para_dups``
    (UInt32: paragraphs removed, 0 when none), ``para_dup_chars`` (UInt32: characters removed with their
    separators). Rule ``all_paragraphs_duplicate``: nothing but whitespace is left. Counters:
    ``paragraphs``, ``duplicate_paragraphs``, ``bloom_bits``, ``bloom_hashes``, ``bloom_fp_rate_ppm``
    (expected rate at the end of the fit, parts per million).
    """

    rewrites_text = True

    class Params(OpParams):
        method: Literal["bloom", "exact"] = Field("bloom", description="bloom: Dolma's; exact: 64-bit hashes")
        expected_paragraphs: int = Field(10_000_000, gt=0, description=(
            "Bloom filter sizing: paragraphs expected (Dolma sizes by estimated_doc_count); 10M paragraphs "
            "at 1e-3 take 18 MB"))
        false_positive_rate: float = Field(0.001, gt=0, lt=1, description=(
            "Bloom filter target rate (Dolma's test config: desired_false_positive_rate 0.001)"))
        separator: str = Field("\n", min_length=1, description="Dolma paragraph_separator default '\\n'")
        min_length: int = Field(0, ge=0, description="shorter paragraphs (characters) are never removed "
                                                      "(Dolma min_length, default 0)")
        skip_empty: bool = Field(True, description="whitespace-only paragraphs are never removed (Dolma "
                                                    "skip_empty, default false there: see above)")

    def _candidates(self, batch: pl.DataFrame) -> pl.DataFrame:
        p = self.params
        parts = paragraphs(batch, p.separator)
        eligible = pl.col("__len") >= max(p.min_length, 1 if p.skip_empty else 0)
        if p.skip_empty:
            eligible = eligible & (pl.col("para").str.strip_chars() != "")
        return parts.filter(eligible).with_columns(
            pl.col("para").hash(seed=_SEEDS[0]).alias("h1"), pl.col("para").hash(seed=_SEEDS[1]).alias("h2"))

    def duplicate_spans(self, batches) -> dict[int, list[tuple[int, int]]]:
        """Fit over ``batches`` (frames with ``__uid`` and ``text``, in corpus order): the removed paragraphs'
        ``(start, end)`` spans per uid (Dolma's ``bff_duplicate_paragraph_spans`` without the score)."""
        frames = list(self._fit_frames(batches))
        if not frames:
            return {}
        df = pl.concat(frames)
        return {u: list(zip(s, e)) for u, s, e in df.group_by(UID, maintain_order=True)
                .agg("start", "end").iter_rows()}

    def _fit_frames(self, batches, ctx: FitContext | None = None):
        p = self.params
        bloom = BloomFilter(p.expected_paragraphs, p.false_positive_rate) if p.method == "bloom" else None
        seen: list[pl.DataFrame] = []  # exact mode: (uid, p, h1, h2) of every paragraph, resolved at the end
        total = 0
        for batch in batches:
            c = self._candidates(batch)
            c = c.with_columns(batch.get_column(UID).gather(c.get_column("__row")).alias(UID))
            total += c.height
            if bloom is None:
                seen.append(c.select(UID, "__p", "start", "end", "h1", "h2"))
                continue
            h1, h2 = c["h1"].to_numpy(), c["h2"].to_numpy()
            dup = bloom.contains(h1, h2) | ~c.select(pl.struct("h1", "h2").is_first_distinct()).to_series().to_numpy()
            bloom.insert(h1, h2)
            yield c.filter(pl.Series(dup)).select(UID, "__p", "start", "end")
        if bloom is None and seen:
            allp = pl.concat(seen)
            yield allp.filter(~pl.struct("h1", "h2").is_first_distinct()).select(UID, "__p", "start", "end")
        if ctx is not None:
            ctx.stat("paragraphs", total)
            if bloom is not None:
                ctx.stat("bloom_bits", bloom.m)
                ctx.stat("bloom_hashes", bloom.k)
                ctx.stat("bloom_fp_rate_ppm", round(bloom.fp_rate(total) * 1e6, 3))

    def fit(self, ctx: FitContext) -> None:
        frames = list(self._fit_frames(ctx.iter_batches(columns=[UID, "text"]), ctx))
        schema = {UID: pl.UInt64, "__p": pl.UInt32, "start": pl.Int64, "end": pl.Int64}
        dups = pl.concat(frames) if frames else pl.DataFrame(schema=schema)
        ctx.stat("duplicate_paragraphs", dups.height)
        dups.group_by(UID).agg(pl.col("__p").alias("__dup_p"), (pl.col("end") - pl.col("start")).sum()
                               .cast(pl.UInt32).alias("para_dup_chars")).sort(UID).write_parquet(
            Path(ctx.state_dir) / "dup_paragraphs.parquet")

    def setup(self, ctx: RunContext) -> None:
        self._dups = pl.read_parquet(Path(ctx.state_dir) / "dup_paragraphs.parquet")

    def apply(self, batch: pl.DataFrame) -> pl.DataFrame:
        sep = self.params.separator
        b = batch.drop("para_dups", "para_dup_chars", strict=False).join(self._dups, on=UID, how="left",
                                                                         maintain_order="left")
        parts = (b.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias("__row"), pl.col("__dup_p"),
                          pl.col("text").str.split(sep).alias("para"))
                 .explode("para").with_columns(pl.int_range(pl.len(), dtype=pl.UInt32).over("__row").alias("__p"))
                 .filter(~pl.col("__p").is_in(pl.col("__dup_p").fill_null([])) | pl.col("__dup_p").is_null()))
        # is_in against a per-row list: element-wise membership of __p in that row's __dup_p
        kept = parts.group_by("__row", maintain_order=True).agg(pl.col("para").str.join(sep).alias("__t"))
        b = b.with_columns(pl.int_range(pl.len(), dtype=pl.UInt32).alias("__row")).join(
            kept, on="__row", how="left", maintain_order="left")
        return b.with_columns(
            pl.col("__t").fill_null("").alias("__para_text"),
            pl.col("__dup_p").list.len().fill_null(0).cast(pl.UInt32).alias("para_dups"),
            pl.col("para_dup_chars").fill_null(0),
            (pl.col("__t").fill_null("").str.strip_chars() == "").alias("__para_empty"),
        ).drop("__row", "__t", "__dup_p")

    def adds(self) -> dict[str, Column]:
        return {"para_dups": Column(pl.UInt32, "paragraphs removed", "never null (0 when none)"),
                "para_dup_chars": Column(pl.UInt32, "characters removed with their separators",
                                         "never null (0 when none)")}

    def rules(self) -> list[Rule]:
        return [Rule("all_paragraphs_duplicate", "__para_empty", "is_true", score_column="para_dups")]

    def finish(self, kept: pl.DataFrame) -> pl.DataFrame:
        return kept.with_columns(pl.col("__para_text").alias("text")).drop("__para_text", "__para_empty")
