"""Document feature vectors for valuation and coresets: an ``embedding`` column when the dataset has one
(written by the ``embed`` operator), else hashed TF-IDF bag-of-words computed here (no model, fast).

Hashed features: lowercase word tokens (:func:`curate.core.text.words`, punctuation dropped), hashed with
polars' 64-bit hash, signed feature hashing (Weinberger et al. 2009) into ``dim`` buckets, weight
``(1 + ln tf) · idf`` with sklearn's smooth idf ``ln((1+n)/(1+df)) + 1`` fitted on the pool, rows
L2-normalised (so Euclidean order = cosine order).
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import polars as pl

from curate.core.errors import StepError
from curate.core.text import words

log = logging.getLogger("curate.selectors")

_HASH_SEED = 0x5A17
FeatureSource = Literal["auto", "embedding", "hashed"]


def _token_counts(texts: pl.Series) -> pl.DataFrame:
    """(row, h, tf) for every distinct token hash of every text."""
    toks = words(pl.col("text").fill_null("").str.to_lowercase()).list.eval(
        pl.element().filter(pl.element().str.contains(r"\w")))
    return (pl.DataFrame({"text": texts}).with_row_index("row")
            .select("row", toks.alias("w")).explode("w").drop_nulls("w")
            .select("row", pl.col("w").hash(seed=_HASH_SEED).alias("h"))
            .group_by("row", "h").agg(pl.len().alias("tf")))


class HashedFeatures:
    """Signed hashed TF-IDF vectors; ``fit`` learns document frequencies, ``transform`` embeds."""

    def __init__(self, dim: int = 1024):
        self.dim = int(dim)
        self._df: pl.DataFrame | None = None
        self._n = 0

    def fit(self, texts: pl.Series) -> HashedFeatures:
        counts = _token_counts(texts)
        self._df = counts.group_by("h").agg(pl.len().alias("df"))
        self._n = len(texts)
        return self

    def transform(self, texts: pl.Series, chunk: int = 8192) -> np.ndarray:
        assert self._df is not None, "fit first"
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for a in range(0, len(texts), chunk):
            c = (_token_counts(texts[a:a + chunk]).join(self._df, on="h", how="left")
                 .with_columns(pl.col("df").fill_null(0)))
            if c.height == 0:
                continue
            idf = np.log((1.0 + self._n) / (1.0 + c["df"].to_numpy())) + 1.0
            h = c["h"].to_numpy()
            sign = np.where((h >> np.uint64(63)) & np.uint64(1), -1.0, 1.0)
            bucket = (h % np.uint64(self.dim)).astype(np.int64)
            w = sign * (1.0 + np.log(c["tf"].to_numpy().astype(np.float64))) * idf
            rows = c["row"].to_numpy().astype(np.int64)
            m = min(chunk, len(texts) - a)
            block = np.bincount(rows * self.dim + bucket, weights=w, minlength=m * self.dim).reshape(m, self.dim)
            out[a:a + m] = block
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
        return out

    def fit_transform(self, texts: pl.Series) -> np.ndarray:
        return self.fit(texts).transform(texts)


def embedding_matrix(col: pl.Series) -> np.ndarray:
    """A Float list/array column as a float32 (n, d) matrix (rows must share one length)."""
    if isinstance(col.dtype, pl.List):
        lens = col.list.len()
        d = int(lens.max() or 0)
        if lens.min() != d:
            raise ValueError(f"column '{col.name}': embeddings of different lengths")
        col = col.list.to_array(d)
    return np.asarray(col.to_numpy(), dtype=np.float32).reshape(len(col), -1)


def resolve_source(columns: list[str], source: FeatureSource, column: str, who: str) -> str:
    """'embedding' or 'hashed'; ``auto`` uses the embedding column when present and says so otherwise."""
    if source == "embedding" and column not in columns:
        raise StepError(who, f"features='embedding' but the data has no '{column}' column "
                        "(add an `embed` step before, or use features: hashed)", column=column)
    if source == "auto":
        if column in columns:
            return "embedding"
        log.warning("%s: no '%s' column, using hashed TF-IDF bag-of-words features (add an `embed` step "
                    "before this one for semantic features)", who, column)
        return "hashed"
    return source


def features(df: pl.DataFrame, source: str, column: str = "embedding", hash_dim: int = 1024,
             others: list[pl.DataFrame] | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """Feature matrices for ``df`` and for each frame of ``others`` (same featuriser; idf fitted on ``df``)."""
    others = others or []
    if source == "embedding":
        return embedding_matrix(df[column]), [embedding_matrix(o[column]) for o in others]
    hf = HashedFeatures(hash_dim).fit(df["text"])
    return hf.transform(df["text"]), [hf.transform(o["text"]) for o in others]
