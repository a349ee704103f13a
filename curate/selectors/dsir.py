"""DSIR: data selection with importance resampling over hashed n-gram features (Xie et al. 2023)."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
from pydantic import Field

from curate.core.operator import PATH_INPUT, UID, FitContext
from curate.core.registry import register
from curate.core.text import wordpunct_tokens
from curate.selectors.base import _SELECTED, Selector, SelectParams, select

#: the reference's additive constant inside the logs (``np.log(p + 1e-8) - np.log(q + 1e-8)``)
EPS = 1e-8


# --------------------------------------------------------------------------------------------- features
def _tokens_arrow(texts: pl.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(utf-8 bytes, token byte offsets, per-document token offsets) of the wordpunct tokens."""
    import pyarrow as pa

    toks = texts.to_frame("t").select(wordpunct_tokens(pl.col("t")).alias("t")).to_series()
    arr = toks.to_arrow(compat_level=pl.CompatLevel.oldest())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    doc_off = np.asarray(arr.offsets, dtype=np.int64)
    vals = arr.values
    bufs = vals.buffers()
    tok_off = (np.frombuffer(bufs[1], dtype=np.int64)[vals.offset: vals.offset + len(vals) + 1]
               if bufs[1] is not None else np.zeros(1, np.int64))
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None and bufs[2].size else np.zeros(1, np.uint8)
    return data, np.ascontiguousarray(tok_off), doc_off


def hashed_ngram_features(texts: pl.Series, ngrams: int = 2, num_buckets: int = 10_000
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Bucket ids of every 1..n-gram of every document, flat, and per-document offsets into them.

    Same features as p-lambda/dsir ``get_ngram_counts``: ``text.lower()``, NLTK wordpunct tokens,
    n-grams joined by a space, ``int(sha256(utf8).hexdigest(), 16) % num_buckets``.
    Returns ``(buckets int64[F], feat_off int64[D+1])``.
    """
    from curate.selectors import _dsir_kernels as kern

    data, tok_off, doc_off = _tokens_arrow(texts)
    n_tok = np.diff(doc_off)
    n_feat = sum(np.maximum(n_tok - g + 1, 0) for g in range(1, ngrams + 1))
    feat_off = np.zeros(n_tok.size + 1, np.int64)
    np.cumsum(n_feat, out=feat_off[1:])
    buckets = np.empty(int(feat_off[-1]), np.int64)
    kern.ngram_buckets(data, tok_off, doc_off, feat_off, ngrams, num_buckets, buckets)
    return buckets, feat_off


def example_length(feat_off: np.ndarray, ngrams: int) -> np.ndarray:
    """The reference's length metadata: ``(n_features + n(n-1)/2) // n`` (= words for n=2)."""
    return (np.diff(feat_off) + ngrams * (ngrams - 1) // 2) // ngrams


def log_importance_weights(buckets: np.ndarray, feat_off: np.ndarray, log_diff: np.ndarray) -> np.ndarray:
    """log w(x) = sum_j c_j(x) (log p_j - log q_j), per document."""
    from curate.selectors import _dsir_kernels as kern

    return kern.segment_sum(log_diff[buckets], feat_off)


def normalised(counts: np.ndarray, smoothing: float = 0.0) -> np.ndarray:
    c = counts.astype(np.float64) + smoothing
    total = c.sum()
    return c / total if total > 0 else np.full(c.size, 1.0 / c.size)


def gumbel_noise(uids: np.ndarray, seed: int | np.ndarray) -> np.ndarray:
    """Gumbel(0, 1) noise that is a pure function of (row key, seed): splitmix64 -> uniform -> -log(-log u).

    Keyed by ``__uid`` rather than drawn in row order, so it does not depend on batching or workers.
    ``seed`` may be an array that broadcasts against ``uids``.
    """

    def mix(z: np.ndarray) -> np.ndarray:
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))

    with np.errstate(over="ignore"):
        s = mix(np.asarray(seed).astype(np.uint64))
        x = mix(np.asarray(uids).astype(np.uint64) ^ s)
    u = ((x >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53
    return -np.log(-np.log(u))


# ------------------------------------------------------------------------------------------- shard work
def _count_shard(shard: Path, out: Path, *, ngrams: int, num_buckets: int, budget: int | None) -> None:
    """Bucket counts of one spilled shard, stopping after the document that passes ``budget`` features
    (the reference's per-shard early stop)."""
    from curate.io.spill import read_spill

    counts = np.zeros(num_buckets, np.int64)
    seen = 0
    for b in read_spill(shard, ["text"]):
        buckets, feat_off = hashed_ngram_features(b["text"], ngrams, num_buckets)
        if budget is not None and seen + feat_off[-1] > budget:
            # the reference checks `counts.sum() > budget` after each document and stops there
            last = int(np.searchsorted(feat_off[1:] + seen, budget, side="right"))
            buckets = buckets[: feat_off[last + 1]]
            counts += np.bincount(buckets, minlength=num_buckets)
            break
        counts += np.bincount(buckets, minlength=num_buckets)
        seen += int(feat_off[-1])
    with open(out, "wb") as f:
        np.save(f, counts)


def _score_shard(shard: Path, out: Path, *, ngrams: int, num_buckets: int, log_diff_path: str) -> None:
    from curate.io.spill import read_spill

    log_diff = np.load(log_diff_path)
    frames = []
    for b in read_spill(shard, [UID, "text"]):
        buckets, feat_off = hashed_ngram_features(b["text"], ngrams, num_buckets)
        frames.append(pl.DataFrame({
            UID: b[UID],
            "logw": log_importance_weights(buckets, feat_off, log_diff),
            "length": example_length(feat_off, ngrams),
            "tokens": b["text"].str.count_matches(r"\S+").cast(pl.Int64),
        }))
    df = pl.concat(frames) if frames else pl.DataFrame(schema={UID: pl.UInt64, "logw": pl.Float64,
                                                               "length": pl.Int64, "tokens": pl.Int64})
    df.write_parquet(out)


def target_counts(path: str | list[str], text_field: str, ngrams: int, num_buckets: int,
                  fmt: str | None = None) -> np.ndarray:
    """Bucket counts over ALL documents of the target corpus (jsonl / parquet / txt, read with curate.io)."""
    from curate.io.readers import InputSpec

    spec = InputSpec(path=path, text_field=text_field, format=fmt)  # type: ignore[arg-type]
    counts = np.zeros(num_buckets, np.int64)
    for b in spec.iter_batches():
        buckets, _ = hashed_ngram_features(b["text"], ngrams, num_buckets)
        counts += np.bincount(buckets, minlength=num_buckets)
    return counts


# ----------------------------------------------------------------------------------------------- operator
@register("dsir")
class DSIR(Selector):
    """Data Selection with Importance Resampling (Xie et al. 2023), as p-lambda/dsir
    ``data_selection/hashed_ngram_dsir.py`` and ``base.py`` compute it.

    Features: ``text.lower()``, NLTK wordpunct tokens (``\\w+|[^\\w\\s]+``), unigrams and bigrams
    (``ngrams=2``) hashed with SHA-256 into ``num_buckets=10000`` buckets - bit-for-bit the reference's
    buckets. Target distribution p: bucket counts over all of ``target`` (+ ``target_laplace_smoothing``),
    normalised; raw distribution q: counts over this pipeline's data, each shard stopping after
    ``num_tokens_to_fit / shards`` features (``"auto"`` = 100 000 x num_buckets, as the reference).
    Score ``dsir_logw`` = log w(x) = sum_j c_j(x) (log(p_j + 1e-8) - log(q_j + 1e-8)).

    Selection: with ``top_k`` / ``fraction`` / ``budget_tokens`` and ``resample`` (default), Gumbel
    top-k importance resampling *without replacement* (keys log w + Gumbel noise, noise a pure
    function of ``seed`` and the row key, so a run is reproducible and independent of workers);
    ``resample: false`` keeps the deterministic top-k by weight (the reference's ``top_k=True``).
    ``threshold`` keeps log w >= threshold. ``fraction`` is of all documents; ``higher_is_better`` is
    ignored (larger weights are always preferred). Documents shorter than
    ``min_example_length`` words (reference default 100) are never selected and get a null score.
    Not implemented: the reference's ``separate_targets`` (several targets with their own quotas).
    Columns: ``dsir_logw``. State: ``target_probs.npy``, ``raw_probs.npy``, ``log_diff.npy``.
    """

    score_column = "dsir_logw"
    higher_is_better = True
    score_doc = "log importance weight log p(x)/q(x) over hashed n-grams"
    score_null = "null for documents shorter than min_example_length (never selected)"

    class Params(SelectParams):
        target: str | list[str] = Field(json_schema_extra=PATH_INPUT, description="target corpus: file(s), folder "
                                        "or glob (jsonl, parquet, txt); required")
        target_text_field: str = Field("text", description="text field of the target records (default text)")
        target_format: Literal["jsonl", "parquet", "text"] | None = Field(None, description="default: inferred from the file extension")
        ngrams: int = Field(2, ge=1, le=5, description="n-gram orders 1..n (reference: 2)")
        num_buckets: int = Field(10_000, gt=0, lt=2**40, description="hash buckets (reference: 10000)")
        tokenizer: Literal["wordpunct"] = Field("wordpunct", description="reference default tokenizer")
        min_example_length: int = Field(100, ge=0, description="documents with fewer words are never selected (reference default 100)")
        num_tokens_to_fit: int | Literal["auto", "all"] = Field(
            "auto", description="raw-distribution feature budget ('auto' = 100000 x num_buckets)")
        target_laplace_smoothing: float = Field(0.0, ge=0, description="pseudo-count added to target buckets (reference default 0)")
        resample: bool = Field(True, description="Gumbel top-k resampling; false: deterministic top-k")

    # ----------------------------------------------------------------------------------- fit
    def fit(self, ctx: FitContext) -> None:
        p = self.params
        state = Path(ctx.state_dir)
        tp = normalised(target_counts(p.target, p.target_text_field, p.ngrams, p.num_buckets, p.target_format),
                        p.target_laplace_smoothing)
        budget = {"auto": 100_000 * p.num_buckets, "all": None}.get(p.num_tokens_to_fit, p.num_tokens_to_fit)
        per_shard = None if budget is None else int(budget) // max(1, len(ctx.shards))
        counts = ctx.map_shards(functools.partial(_count_shard, ngrams=p.ngrams, num_buckets=p.num_buckets,
                                                  budget=per_shard), "dsir-counts", suffix=".npy")
        raw = np.zeros(p.num_buckets, np.int64)
        for c in counts:
            raw += np.load(c)
        rp = normalised(raw)
        log_diff = np.log(tp + EPS) - np.log(rp + EPS)
        for name, arr in (("target_probs", tp), ("raw_probs", rp), ("log_diff", log_diff)):
            np.save(state / f"{name}.npy", arr)
        digest = hashlib.sha256(log_diff.tobytes()).hexdigest()[:16]
        outs = ctx.map_shards(functools.partial(_score_shard, ngrams=p.ngrams, num_buckets=p.num_buckets,
                                                log_diff_path=str(state / "log_diff.npy")), f"dsir-scores-{digest}")
        scores = pl.concat([pl.read_parquet(o) for o in outs]) if outs else pl.DataFrame(
            schema={UID: pl.UInt64, "logw": pl.Float64, "length": pl.Int64, "tokens": pl.Int64})
        keep, cutoff = self._select(scores)
        out = scores.select(UID, pl.when(pl.col("length") >= p.min_example_length).then(pl.col("logw"))
                            .alias(self.score_column)).with_columns(keep)
        out.write_parquet(state / "selection.parquet")
        (state / "cutoff.txt").write_text("" if cutoff is None else repr(cutoff))

    def _select(self, scores: pl.DataFrame) -> tuple[pl.Series, float | None]:
        """Boolean selection aligned with ``scores`` and the cut-off (of log w; None for resampling)."""
        p = self.params
        n = scores.height
        valid = (scores["length"] >= p.min_example_length).to_numpy()
        if not any(getattr(p, m) is not None for m in ("threshold", "top_k", "fraction", "budget_tokens")):
            return pl.Series(_SELECTED, valid), None
        sub = scores.filter(pl.Series(valid))
        noisy = p.resample and p.threshold is None
        key = sub["logw"].to_numpy() + (gumbel_noise(sub[UID].to_numpy(), p.seed) if noisy else 0.0)
        cand = pl.DataFrame({UID: sub[UID], "score": key, "tokens": sub["tokens"]})
        sp = SelectParams(threshold=p.threshold, budget_tokens=p.budget_tokens, seed=p.seed)
        if p.top_k is not None or p.fraction is not None:
            k = p.top_k if p.top_k is not None else int(round(p.fraction * n))
            sp = SelectParams(top_k=max(1, min(k, max(1, sub.height))), seed=p.seed) if k > 0 and sub.height else None
        if sp is None:
            return pl.Series(_SELECTED, np.zeros(n, bool)), None
        keep_sub, cutoff = select(cand, sp, True)
        full = np.zeros(n, bool)
        full[np.flatnonzero(valid)[keep_sub.to_numpy()]] = True
        return pl.Series(_SELECTED, full), (None if noisy else cutoff)
