"""Benchmark decontamination (``decontaminate``): documents sharing a long word n-gram with an evaluation
set are dropped (or flagged)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from curate.core.operator import Column, Filter, OpParams, Rule, RunContext
from curate.core.registry import register
from curate.core.text import simplify_text_fast

_SEED = 0xDEC0
_MUL = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier (golden ratio): the rolling-hash base


class Benchmark(BaseModel):
    """One evaluation set: a jsonl/parquet file and the fields whose text must not leak into training."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="task name recorded in decont_task (e.g. gsm8k)")
    path: str = Field(description="jsonl(.gz/.zst) or parquet file of the evaluation set")
    fields: list[str] = Field(["question"], min_length=1, description="fields indexed, each on its own")


def normalise(text: pl.Expr, mode: str) -> pl.Expr:
    """Text as single-space-separated words: ``simplify`` is DataTrove's ``simplify_text`` (lowercase,
    numbers to 0, punctuation/symbols dropped, accents stripped), ``lower`` only lowercases and splits on
    whitespace, ``none`` splits on whitespace."""
    if mode == "simplify":
        return simplify_text_fast(text)
    t = text.str.to_lowercase() if mode == "lower" else text
    return t.str.replace_all(r"\s+", " ").str.strip_chars()


def ngram_hashes(words: pl.Series, n: int, min_alpha: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of every word n-gram of every row of ``words`` (List[String]), vectorised over the batch.

    Each word is hashed once (polars), then n-gram ``i`` is the polynomial ``sum_j h[i+j] * B^(n-1-j)`` mod
    2^64, built with n shifted array operations over the flattened batch; n-grams that would cross a row
    boundary are dropped, and so are those with fewer than ``min_alpha`` words holding a letter.
    Returns (hashes, row of each hash)."""
    lens = words.list.len().fill_null(0).to_numpy().astype(np.int64)
    flat = words.explode().drop_nulls()
    if flat.len() < n:
        return np.empty(0, np.uint64), np.empty(0, np.int64)
    wh = flat.hash(seed=_SEED).to_numpy().astype(np.uint64)
    m = wh.size - n + 1
    acc = wh[:m].copy()
    with np.errstate(over="ignore"):
        for j in range(1, n):
            acc = acc * _MUL + wh[j: j + m]
    row = np.repeat(np.arange(lens.size), lens)
    start = np.concatenate([[0], np.cumsum(lens)[:-1]])
    pos = np.arange(m) - start[row[:m]]
    valid = pos + n <= lens[row[:m]]
    if min_alpha > 0:
        alpha = np.concatenate([[0], np.cumsum(flat.str.contains(r"\p{L}").to_numpy().astype(np.int64))])
        valid &= (alpha[n: n + m] - alpha[:m]) >= min_alpha
    return acc[valid], row[:m][valid]


@register("decontaminate")
class Decontaminate(Filter):
    """Drops (or flags) documents that share a word n-gram with an evaluation set.

    The GPT-3 contamination rule (Brown et al. 2020, App. C: 13-gram overlap) as DataTrove's
    ``NGramsDecontFilter`` (``pipeline/decont/n_grams.py``, whose default is 12): the evaluation texts
    (each listed field of each benchmark file on its own, and with ``overlap_ngrams`` the fields of a record
    joined, as DataTrove's ``find_overlap_ngrams``) are normalised, split into words, and every
    n-gram's 64-bit hash goes into a sorted index, built once per worker in ``setup``. Each batch's
    documents are normalised the same way and all their n-gram hashes computed at once
    (:func:`ngram_hashes`), then looked up with one ``searchsorted``: cost linear in the corpus. Texts
    shorter than n words contribute no n-gram (as DataTrove) and cannot be caught.

    Columns added: ``decont_matches`` (UInt32: n-grams of the document found in the index, 0 when clean),
    ``decont_task`` (String: benchmark of the first matching n-gram, null when clean), ``contaminated``
    (Boolean). Rule ``contaminated`` (``decont_matches >= min_matches``) unless ``action: flag``.
    Counters: ``index_ngrams``, ``contaminated_<task>``.
    """

    _ctx: RunContext | None = None

    class Params(OpParams):
        benchmarks: list[Benchmark] = Field(min_length=1, description="evaluation sets to protect")
        n: int = Field(13, ge=1, description="n-gram length in words (GPT-3: 13; DataTrove default 12)")
        normalization: Literal["simplify", "lower", "none"] = Field(
            "simplify", description="simplify: DataTrove's simplify_text (its TextNormConfig default)")
        min_matches: int = Field(1, ge=1, description="matching n-grams needed to call a document "
                                                       "contaminated (GPT-3 and DataTrove: 1)")
        min_alpha_words: int = Field(3, ge=0, description=(
            "evaluation n-grams with fewer words holding a letter are not indexed: under simplify a GSM8K "
            "answer's '<<48/2=24>>' is a run of '0' words, whose 13-grams matched 9 of 5,000 20news posts "
            "(number tables); 0 indexes every n-gram as DataTrove does"))
        overlap_ngrams: bool = Field(True, description=(
            "also index the n-grams spanning consecutive fields (question end + answer start), DataTrove's "
            "find_overlap_ngrams=True default"))
        action: Literal["drop", "flag"] = Field("drop", description="flag: keep the row, set the columns")

    def setup(self, ctx: RunContext) -> None:
        self._ctx = ctx
        self._build_index()

    def _build_index(self) -> None:
        from curate.io.readers import read_texts

        p = self.params
        hashes, tasks = [], []
        self._tasks = [b.name for b in p.benchmarks]
        for k, b in enumerate(p.benchmarks):
            cols = [read_texts(b.path, text_field=fld) for fld in b.fields]
            if p.overlap_ngrams and len(cols) > 1 and len({c.len() for c in cols}) == 1:
                # the fields of one record joined: adds the n-grams that cross a field boundary
                cols.append(pl.select(pl.concat_str([pl.lit(c) for c in cols], separator=" ")).to_series())
            for texts in cols:
                words = pl.select(normalise(pl.lit(texts), p.normalization).str.split(" ")).to_series()
                h, _ = ngram_hashes(words, p.n, p.min_alpha_words)
                hashes.append(h)
                tasks.append(np.full(h.size, k, np.int32))
        h = np.concatenate(hashes) if hashes else np.empty(0, np.uint64)
        t = np.concatenate(tasks) if tasks else np.empty(0, np.int32)
        h, first = np.unique(h, return_index=True)
        self._index, self._index_task = h, t[first]
        if self._ctx is not None:
            self._ctx.stat("index_ngrams", int(h.size))

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        if not hasattr(self, "_index"):
            self._build_index()
        p = self.params
        words = batch.select(normalise(pl.col("text"), p.normalization).str.split(" ")).to_series()
        h, row = ngram_hashes(words, p.n)
        matches = np.zeros(batch.height, np.uint32)
        task: list[str | None] = [None] * batch.height
        if h.size and self._index.size:
            at = np.searchsorted(self._index, h).clip(max=self._index.size - 1)
            hit = self._index[at] == h
            np.add.at(matches, row[hit], 1)
            rows, first = np.unique(row[hit], return_index=True)  # first hit of each row, in text order
            for r, ti in zip(rows.tolist(), self._index_task[at[hit][first]].tolist()):
                task[r] = self._tasks[ti]
                if self._ctx is not None:
                    self._ctx.stat(f"contaminated_{self._tasks[ti]}")
        return batch.with_columns(
            pl.Series("decont_matches", matches, dtype=pl.UInt32),
            pl.Series("decont_task", task, dtype=pl.String),
            pl.Series("contaminated", matches >= p.min_matches, dtype=pl.Boolean),
        )

    def adds(self) -> dict[str, Column]:
        return {"decont_matches": Column(pl.UInt32, "n-grams of the document found in the benchmark index",
                                         "never null (0 when clean)"),
                "decont_task": Column(pl.String, "benchmark of the first matching n-gram", "null when clean"),
                "contaminated": Column(pl.Boolean, "decont_matches >= min_matches")}

    def rules(self) -> list[Rule]:
        if self.params.action == "flag":
            return []
        return [Rule("contaminated", "decont_matches", ">=", self.params.min_matches)]
