"""Exact substring dedup (``substring_dedup``): Lee et al. 2022's suffix-array ExactSubstr."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
from pydantic import Field

from curate.core.operator import UID, Column, FitContext, GlobalStage, OpParams, Rule
from curate.core.registry import register

#: a token is a run of non-space characters with the whitespace after it (so removing tokens and
#: joining the rest keeps the original spacing); the text's leading whitespace is kept apart
TOKEN = r"\S+\s*"
_SEED = 0x5AB5


@functools.lru_cache(maxsize=1)
def _kernels():
    """The two numba kernels, compiled once per process (numba is imported only when a fit runs)."""
    from numba import njit

    @njit(cache=True)
    def earlier_lcp(sa: np.ndarray, lcp: np.ndarray) -> np.ndarray:
        """For every position p: the longest common prefix of suffix p with any suffix starting before p.

        That suffix is, in suffix-array order, the nearest one on the left or on the right with a smaller
        start (LCP only shrinks with rank distance); both are found with a monotonic stack whose entries
        carry the minimum LCP over the ranks they span (linear time)."""
        n = sa.size
        out = np.zeros(n, np.int64)
        for direction in (0, 1):
            st_pos = np.empty(n, np.int64)
            st_min = np.empty(n, np.int64)
            top = -1
            for t in range(n):
                r = t if direction == 0 else n - 1 - t
                if top >= 0:
                    # lcp between rank r and the previous rank visited
                    step = lcp[r - 1] if direction == 0 else lcp[r]
                    if step < st_min[top]:
                        st_min[top] = step
                    while top >= 0 and st_pos[top] > sa[r]:
                        if top >= 1 and st_min[top] < st_min[top - 1]:
                            st_min[top - 1] = st_min[top]
                        top -= 1
                    if top >= 0 and st_min[top] > out[sa[r]]:
                        out[sa[r]] = st_min[top]
                top += 1
                st_pos[top] = sa[r]
                st_min[top] = 1 << 62
        return out

    @njit(cache=True)
    def any_lcp(sa: np.ndarray, lcp: np.ndarray) -> np.ndarray:
        """For every position p: the longest common prefix of suffix p with any other suffix."""
        n = sa.size
        out = np.zeros(n, np.int64)
        for r in range(n):
            best = 0
            if r > 0:
                best = lcp[r - 1]
            if r < n - 1 and lcp[r] > best:
                best = lcp[r]
            out[sa[r]] = best
        return out

    return earlier_lcp, any_lcp


def repeated_mask(ids: np.ndarray, doc_end: np.ndarray, k: int, keep_first: bool) -> np.ndarray:
    """Tokens inside a span of at least ``k`` tokens that also occurs elsewhere (``keep_first``: earlier)
    in the corpus ``ids``; spans never cross ``doc_end[p]`` (the end of the document holding position p)."""
    from pydivsufsort import divsufsort, kasai

    if ids.size == 0:
        return np.zeros(0, bool)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    sa = divsufsort(ids)
    lcp = kasai(ids, sa)
    earlier_lcp, any_lcp = _kernels()
    m = earlier_lcp(sa, lcp) if keep_first else any_lcp(sa, lcp)
    pos = np.arange(ids.size)
    # a common prefix running past the document's end is cut there (separators are one shared id)
    m = np.minimum(m, doc_end - pos)
    reach = np.where(m >= k, pos + m, 0)
    return np.maximum.accumulate(reach) > pos


@register("substring_dedup")
class SubstringDedup(GlobalStage):
    """Removes every span of at least ``min_tokens`` tokens that already occurred earlier in the corpus.

    Lee et al. 2022 ("Deduplicating Training Data Makes Language Models Better", ExactSubstr;
    google-research/deduplicate-text-datasets): the corpus is concatenated into one sequence, a suffix
    array is built (``pydivsufsort``, libdivsufsort) with its LCP array (Kasai), and any substring of at
    least k tokens that occurs twice is found from suffixes whose LCP with another suffix is >= k. Default
    k = 50 tokens, the paper's threshold. Tokens here are whitespace-separated words (the paper counts
    GPT-2 BPE tokens, about 0.75 words each, so 50 words is a somewhat longer span than the paper's).
    ``keep: first`` (default) keeps the first occurrence in input order and removes later copies (a token
    is removed when a window of k tokens covering it occurred at an earlier position); ``keep: none``
    removes every occurrence, as the ExactSubstr scripts do. Spans never cross documents.

    The fit holds the whole corpus's token ids, suffix array and LCP in memory (about 32 bytes per word):
    for corpora beyond RAM, run it per shard group. Text is rewritten to the kept tokens (leading
    whitespace kept). Columns added: ``substr_removed_tokens`` (UInt32, 0 when none), ``substr_tokens``
    (UInt32, tokens before). Rule ``all_text_duplicate``: nothing but whitespace is left. Counters
    ``tokens``, ``removed_tokens``, ``docs_touched``; timers ``tokenize``, ``suffix_array``.
    """

    rewrites_text = True
    requires = ("pydivsufsort",)
    extra = "dedup"

    class Params(OpParams):
        min_tokens: int = Field(50, ge=1, description="shortest repeated span removed, in word tokens "
                                                       "(Lee et al. 2022: 50 tokens)")
        keep: Literal["first", "none"] = Field("first", description="first: keep the earliest copy; none: "
                                                                     "remove all copies (ExactSubstr scripts)")
        case_sensitive: bool = Field(True, description="compare tokens as written (ExactSubstr: bytes as is)")

    def _tokens(self, texts: pl.Series) -> tuple[pl.Series, pl.Series]:
        toks = texts.str.extract_all(TOKEN)
        key = toks.explode().drop_nulls().str.strip_chars_end()
        if not self.params.case_sensitive:
            key = key.str.to_lowercase()
        return toks, key

    def fit(self, ctx: FitContext) -> None:
        uids, lens, keys = [], [], []
        with ctx.timer("tokenize"):
            for b in ctx.iter_batches(columns=[UID, "text"]):
                toks, key = self._tokens(b.get_column("text"))
                uids.append(b.get_column(UID).to_numpy())
                lens.append(toks.list.len().fill_null(0).to_numpy().astype(np.int64))
                keys.append(key.hash(seed=_SEED).to_numpy())
        uid = np.concatenate(uids) if uids else np.empty(0, np.uint64)
        n_tok = np.concatenate(lens) if lens else np.empty(0, np.int64)
        h = np.concatenate(keys) if keys else np.empty(0, np.uint64)
        with ctx.timer("suffix_array"):
            removed = self.removed_tokens(h, n_tok)
        doc_of = np.repeat(np.arange(n_tok.size), n_tok)
        local = np.arange(h.size) - np.repeat(np.cumsum(n_tok) - n_tok, n_tok)  # token index in its doc
        hit = np.flatnonzero(removed)
        rm = (pl.DataFrame({UID: uid[doc_of[hit]].astype(np.uint64), "__sub_rm": local[hit].astype(np.uint32)})
              .group_by(UID, maintain_order=True).agg("__sub_rm"))
        rm.write_parquet(Path(ctx.state_dir) / "substr_removed.parquet")
        touched = rm
        ctx.stat("tokens", int(h.size))
        ctx.stat("removed_tokens", int(removed.sum()))
        ctx.stat("docs_touched", touched.height)

    def removed_tokens(self, token_hash: np.ndarray, doc_tokens: np.ndarray) -> np.ndarray:
        """Boolean mask over all tokens of the corpus (documents concatenated in order, ``doc_tokens``
        tokens each): the tokens this stage removes."""
        if token_hash.size == 0:
            return np.zeros(0, bool)
        _, inv = np.unique(token_hash, return_inverse=True)
        sep = int(inv.max()) + 1 if inv.size else 0
        # one separator id after every document keeps suffixes of different documents comparable; the
        # clip in repeated_mask stops a match at its document's end
        n_docs = doc_tokens.size
        total = int(doc_tokens.sum()) + n_docs
        seq = np.full(total, sep, np.int64)
        starts = np.concatenate([[0], np.cumsum(doc_tokens + 1)[:-1]])
        tok_pos = (np.repeat(starts, doc_tokens) + (np.arange(doc_tokens.sum())
                   - np.repeat(np.concatenate([[0], np.cumsum(doc_tokens)[:-1]]), doc_tokens)))
        seq[tok_pos] = inv
        doc_end = np.repeat(starts + doc_tokens, doc_tokens + 1)
        mask = repeated_mask(seq, doc_end, self.params.min_tokens, self.params.keep == "first")
        return mask[tok_pos]

    def setup(self, ctx) -> None:
        self._rm = pl.read_parquet(Path(ctx.state_dir) / "substr_removed.parquet")

    def apply(self, batch: pl.DataFrame) -> pl.DataFrame:
        b = batch.drop("substr_removed_tokens", "substr_tokens", strict=False).join(
            self._rm, on=UID, how="left", maintain_order="left")
        toks = b.get_column("text").str.extract_all(TOKEN)
        lead = b.get_column("text").str.extract(r"^(\s*)", 1).fill_null("")
        rows = pl.int_range(b.height, dtype=pl.UInt32, eager=True).alias("__row")
        parts = (pl.DataFrame([rows, toks.alias("tok")]).explode("tok")
                 .with_columns(pl.int_range(pl.len(), dtype=pl.UInt32).over("__row").alias("__i")))
        drop = (pl.DataFrame([rows, b.get_column("__sub_rm")]).explode("__sub_rm").drop_nulls()
                .rename({"__sub_rm": "__i"}))
        keep = parts.join(drop, on=["__row", "__i"], how="anti", maintain_order="left")
        joined = keep.group_by("__row", maintain_order=True).agg(pl.col("tok").fill_null("").str.join(""))
        new = (pl.DataFrame([rows]).join(joined, on="__row", how="left", maintain_order="left")
               .get_column("tok").fill_null(""))
        text = lead + new
        return b.drop("__sub_rm").with_columns(
            text.alias("__sub_text"),
            b.get_column("__sub_rm").list.len().fill_null(0).cast(pl.UInt32).alias("substr_removed_tokens"),
            toks.list.len().fill_null(0).cast(pl.UInt32).alias("substr_tokens"),
            (text.str.strip_chars() == "").alias("__sub_empty"),
        )

    def adds(self) -> dict[str, Column]:
        return {"substr_removed_tokens": Column(pl.UInt32, "tokens removed as parts of repeated substrings",
                                                "never null (0 when none)"),
                "substr_tokens": Column(pl.UInt32, "tokens before removal")}

    def rules(self) -> list[Rule]:
        return [Rule("all_text_duplicate", "__sub_empty", "is_true", score_column="substr_removed_tokens")]

    def finish(self, kept: pl.DataFrame) -> pl.DataFrame:
        return kept.with_columns(pl.col("__sub_text").alias("text")).drop("__sub_text", "__sub_empty")
