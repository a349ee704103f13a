"""MinHash/LSH near-duplicate removal: shingles -> signatures -> band buckets -> verified pairs -> clusters."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import threading
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import Field, model_validator

from curate.core.operator import UID, Column, FitContext, GlobalStage, OpParams, Rule, RunContext
from curate.core.registry import register
from curate.core.text import simplify_text

# _minhash_kernels (numba) is imported inside the functions that run kernels: reading the operator
# registry must not load numba (curate/filters/__init__.py), and that import loads its registries.
from curate.filters._minhash_params import PRESETS, optimal_param, permutations, recall_param
from curate.models.device import resolve_device

log = logging.getLogger(__name__)

#: hash scheme name -> (kernel signature scheme, shingle hash kind: 0 xxh64, 1 sha1-32)
_SCHEMES = {"fast": ("fast", 0), "datasketch": ("affine32", 1), "datasketch_legacy": ("legacy", 1)}
_SCHEME_CODE = {"fast": 0, "affine32": 1, "legacy": 2}
#: seed of the xxh64 shingle hashes used for exact-Jaccard sets (independent of the signature hash).
_SET_SEED = np.uint64(0x5EED)
#: the state folder under the stage's state dir: parquet parts of (UID, _OUT_COLS) for clustered docs
_STATE = "minhash_dups"
_OUT_COLS = ("dup_cluster_id", "dup_of", "dup_jaccard_est", "dup_jaccard")


# ----------------------------------------------------------------------------------------------- shingles
def _utf8_buffers(texts: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """(bytes, int64 offsets) of a string column, zero-copy from Arrow where possible."""
    import pyarrow as pa

    arr = texts.fill_null("").rechunk().to_arrow()
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.type != pa.large_string():
        arr = arr.cast(pa.large_string())
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], dtype=np.int64)[arr.offset: arr.offset + len(arr) + 1]
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(1, dtype=np.uint8)
    return data, offsets


def shingle_hashes(texts: pl.Series, *, shingle: str, ngram: int, normalize: bool, kind: int,
                   seed: int | np.uint64 = 0) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every shingle of every text (concatenated) and the count per text.

    ``kind``: 0 = fast 64-bit (word n-grams: :func:`~curate.filters._minhash_kernels.word_shingle_hashes`;
    char n-grams: XXH64(seed) of the UTF-8 bytes), 1 = datasketch ``sha1_hash32`` of the shingle string. A
    word shingle is the n words joined by one space (normalised text has single spaces); a char shingle
    is n code points. Texts with fewer than n words (chars) have no shingle.
    """
    from curate.filters import _minhash_kernels as K

    if shingle == "word" and kind == 0:
        texts = texts.fill_null("")
        data, offsets = _utf8_buffers(texts)
        table = _TABLE
        modes = np.zeros(len(texts), dtype=np.uint8)
        if normalize:  # the kernel normalises ASCII and table code points itself (_SimplifyTable)
            modes = K.codepoint_modes(data, offsets, table.kind)
            if (modes == 3).any():
                table.learn(K.unknown_codepoints(data, offsets, np.flatnonzero(modes == 3), table.kind))
                modes = K.codepoint_modes(data, offsets, table.kind)
            idx = np.flatnonzero(modes == 2)
            if len(idx):  # the rest (scripts beyond the table, combining marks, ...) by simplify_text
                sub = texts.gather(idx).to_frame("t").select(simplify_text(pl.col("t"))).to_series()
                data, offsets = _utf8_buffers(texts.scatter(idx, sub))
        return K.word_shingle_hashes(data, offsets, ngram, np.uint64(seed), normalize, modes, table.kind,
                                     table.rep_len, table.rep)
    if normalize:
        texts = texts.to_frame("t").select(simplify_text(pl.col("t"))).to_series()
    data, offsets = _utf8_buffers(texts)
    starts, ends, counts = K.shingle_ranges(data, offsets, ngram, shingle == "char")
    return K.hash_ranges(data, starts, ends, kind, np.uint64(seed)), counts


class _SimplifyTable:
    """What :func:`~curate.core.text.simplify_text` does to each non-ASCII code point below
    :data:`_CP_LIMIT` (Latin-1 and Latin Extended, Greek, Cyrillic, Hebrew, Arabic, Indic scripts, Latin
    Extended Additional, General Punctuation, currency signs), so the word kernel normalises text using
    them in its one pass instead of running the regex expression (0.18 CPU-s on the 8% non-ASCII texts of
    the 20k benchmark corpus, 40% of the shingling).

    Entries are learnt lazily, only for the code points a batch holds, from ``simplify_text`` itself: a
    code point c is a **word break** (1) when "a{c}a" -> "a a", "1{c}1" -> "0 0", "{c}" -> "", "a{c}" ->
    "a", "{c}a" -> "a" and "a{c}{c}a" -> "a a"; it is **replaced** (2) by x when "a{c}a" -> "a{x}a" with x
    non-empty, free of spaces, ASCII digits/capitals/punctuation and Unicode digits, at most
    :data:`_REP_MAX` UTF-8 bytes, and the other contexts agree ("1{c}1" -> "0{x}0", ...); anything else
    **falls back** (3) to ``simplify_text`` for the whole text: characters whose result depends on their
    neighbours (Greek capital sigma's final form, number separators such as U+060C, deleted combining
    marks, which could join a number across them), digits of other scripts, unassigned code points. So a
    text gets the same shingles either way (``tests/filters/test_minhash.py`` checks texts of many
    scripts against the ``simplify_text`` path)."""

    def __init__(self) -> None:
        self.kind = np.zeros(_CP_LIMIT, dtype=np.uint8)  # 0 not learnt, 1 break, 2 replaced, 3 fall back
        self.rep_len = np.zeros(_CP_LIMIT, dtype=np.uint8)
        self.rep = np.zeros((_CP_LIMIT, _REP_MAX), dtype=np.uint8)
        self._lock = threading.Lock()

    def learn(self, cps: np.ndarray) -> None:
        """Fill in the entries of code points ``cps`` (not learnt yet) from ``simplify_text``."""
        import unicodedata

        with self._lock:
            cps = [int(c) for c in cps if self.kind[c] == 0]
            if not cps:
                return
            forms = ("a{}a", "1{}1", "{}", "a{}", "{}a", "a{}{}a")  # mid, num, alone, left, right, twice
            ctx = [f.replace("{}", chr(c)) for c in cps for f in forms]
            got = pl.Series(ctx).to_frame("t").select(simplify_text(pl.col("t"))).to_series().to_list()
            for i, c in enumerate(cps):
                mid, num, alone, left, right, twice = got[6 * i: 6 * i + 6]
                kind = 3
                x = mid[1:-1] if len(mid) > 2 and mid[0] == mid[-1] == "a" else ""
                if unicodedata.category(chr(c)) == "Cn":  # unassigned here: leave it to simplify_text
                    pass
                elif (mid, num, alone, left, right, twice) == ("a a", "0 0", "", "a", "a", "a a"):
                    kind = 1
                elif (x and " " not in x and len(x.encode()) <= _REP_MAX
                      and all((y.isascii() and y.islower()) or (not y.isascii() and unicodedata.category(y) != "Nd")
                              for y in x)
                      and (num, alone, left, right, twice) == (f"0{x}0", x, f"a{x}", f"{x}a", f"a{x}{x}a")):
                    kind = 2
                    b = x.encode()
                    self.rep[c, :len(b)] = np.frombuffer(b, dtype=np.uint8)
                    self.rep_len[c] = len(b)
                self.kind[c] = kind


#: code points below this get a :class:`_SimplifyTable` entry (3-byte UTF-8 up to the currency signs)
_CP_LIMIT = 0x20D0
#: the longest replacement a table entry holds, in UTF-8 bytes
_REP_MAX = 8
_TABLE = _SimplifyTable()


# ------------------------------------------------------------------------------------------------ config
class _Cfg:
    """The resolved, picklable settings the per-shard functions need."""

    def __init__(self, *, shingle: str, ngram: int, normalize: bool, hash: str, num_perm: int, seed: int,
                 bands: int, rows: int, score_column: str | None, device: str):
        self.shingle, self.ngram, self.normalize, self.hash = shingle, ngram, normalize, hash
        self.num_perm, self.seed, self.bands, self.rows = num_perm, seed, bands, rows
        self.score_column, self.device = score_column, device

    def key(self) -> str:
        """Fingerprint of everything a signature shard depends on (names its scratch folder)."""
        d = {k: v for k, v in vars(self).items() if k != "device"}
        d["format"] = 2  # signature shard layout (2: sig as fixed-width binary): older shards are not reused
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def compute_signatures(texts: pl.Series, cfg: _Cfg) -> tuple[np.ndarray, np.ndarray]:
    """MinHash signatures (docs x num_perm, uint32) and shingle counts for a batch of texts."""
    from curate.filters import _minhash_kernels as K

    scheme, kind = _SCHEMES[cfg.hash]
    a, b = permutations(scheme, cfg.num_perm, cfg.seed)
    hv, counts = shingle_hashes(texts, shingle=cfg.shingle, ngram=cfg.ngram, normalize=cfg.normalize,
                                kind=kind, seed=cfg.seed)
    if cfg.device == "cuda" and scheme == "fast":
        from curate.filters._minhash_torch import signatures_fast_torch

        sig = signatures_fast_torch(hv, counts, a, b, "cuda")
    else:
        sig = K.signatures(hv, counts, a, b, _SCHEME_CODE[scheme])
    return sig.astype(np.uint32, copy=False), counts


def _sig_to_binary(sig: np.ndarray) -> pl.Series:
    """Signatures (docs x K uint32) as one fixed-width binary value per doc: parquet writes and reads it
    as a flat byte run (an ``Array(UInt32, K)`` column costs a repetition level per hash)."""
    import pyarrow as pa

    sig = np.ascontiguousarray(sig, dtype="<u4")
    # built as large_binary from its buffers (offsets are multiples of the width): no Arrow cast, whose
    # first use imports pyarrow.compute (~0.1 CPU-s of start-up in a fresh worker)
    offsets = np.arange(sig.shape[0] + 1, dtype=np.int64) * (sig.shape[1] * 4)
    arr = pa.LargeBinaryArray.from_buffers(pa.large_binary(), sig.shape[0],
                                           [None, pa.py_buffer(offsets), pa.py_buffer(sig)])
    return pl.Series(_ArrowCapsule(arr)).alias("sig")  # the C interface carries no name


class _ArrowCapsule:
    """An Arrow array seen only through the C data interface: polars then imports it without the
    pyarrow conversion path, which imports pyarrow.compute."""

    def __init__(self, arr) -> None:  # noqa: ANN001 (a pyarrow.Array)
        self.arr = arr

    def __arrow_c_array__(self, requested_schema=None):  # noqa: ANN001, ANN204
        return self.arr.__arrow_c_array__(requested_schema)


def _sig_from_binary(col: Any, k: int) -> np.ndarray:
    """Inverse of :func:`_sig_to_binary`: docs x K uint32, from a polars Series or an Arrow (chunked) array
    (wrapping Arrow in a Series imports pyarrow.compute)."""
    import pyarrow as pa

    arr = col.to_arrow() if isinstance(col, pl.Series) else col
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    # polars exports Binary as large_binary, a parquet file read by pyarrow gives binary: read either's
    # offsets as they are (a cast would import pyarrow.compute, 0.1-0.2 CPU-s of start-up)
    if arr.type == pa.binary():
        width = np.int32
    else:
        if arr.type != pa.large_binary():
            arr = arr.cast(pa.large_binary())
        width = np.int64
    off = np.frombuffer(arr.buffers()[1], dtype=width)[arr.offset: arr.offset + len(arr) + 1].astype(np.int64)
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8) if len(arr) else np.zeros(0, dtype=np.uint8)
    if len(arr) and not (np.diff(off) == 4 * k).all():
        raise ValueError("signature blobs of unexpected width")
    return data[off[0]: off[0] + 4 * k * len(arr)].view("<u4").reshape(len(arr), k)


def _sig_shard(cfg: _Cfg, shard: Path, out: Path) -> None:
    """Per shard: UID, shingle count, length, keep score, band keys and signature -> parquet."""
    import pyarrow.parquet as pq

    from curate.filters import _minhash_kernels as K
    from curate.io.spill import read_spill

    cols = [UID, "text"] + ([cfg.score_column] if cfg.score_column else [])
    schema = {UID: pl.UInt64, "n_shingles": pl.UInt32, "length": pl.UInt32, "score": pl.Float64,
              **{f"b{i}": pl.UInt64 for i in range(cfg.bands)}, "sig": pl.Binary}
    writer = None  # one row group per batch: memory is bounded by the batch, not the shard
    try:
        for batch in read_spill(shard, cols):
            sig, counts = compute_signatures(batch["text"], cfg)
            keys = K.band_keys(sig, cfg.bands, cfg.rows)  # uint32 in, same keys as from uint64
            df = pl.DataFrame({
                UID: batch[UID],
                "n_shingles": pl.Series(counts, dtype=pl.UInt32),
                "length": batch["text"].str.len_chars().cast(pl.UInt32),
                "score": (batch[cfg.score_column].cast(pl.Float64) if cfg.score_column
                          else pl.Series([None] * batch.height, dtype=pl.Float64)),
                **{f"b{i}": pl.Series(keys[:, i], dtype=pl.UInt64) for i in range(cfg.bands)},
                "sig": _sig_to_binary(sig),
            }, schema=schema)
            table = df.to_arrow()
            if writer is None:  # band keys and signatures are random 64/32-bit values: dictionary
                # pages and snappy only cost CPU (2.5x the write) and make the file larger
                writer = pq.ParquetWriter(out, table.schema, use_dictionary=False, compression="none")
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        pl.DataFrame(schema=schema).write_parquet(out)


def _cand_shard(cfg: _Cfg, sig_dir: Path, cand_path: Path, verify: bool, shard: Path, out: Path) -> None:
    """Per shard, for candidate docs only: id, length, score, signature and (if verifying) the sorted
    unique 64-bit hashes of its shingles."""
    from curate.filters import _minhash_kernels as K
    from curate.io.spill import read_spill

    cand = pl.read_parquet(cand_path)
    sig = (pl.scan_parquet(sig_dir / f"{shard.name}.parquet").select(UID, "length", "score", "sig")
           .join(cand.lazy(), on=UID, how="semi").collect())
    parts = []
    for batch in read_spill(shard, [UID, "id", "text"] if verify else [UID, "id"]):
        batch = batch.join(cand, on=UID, how="semi", maintain_order="left")
        if not batch.height:
            continue
        if verify:
            hv, counts = shingle_hashes(batch["text"], shingle=cfg.shingle, ngram=cfg.ngram,
                                        normalize=cfg.normalize, kind=0, seed=_SET_SEED)
            vals, ucounts = K.sorted_unique_per_doc(hv, counts)
            import pyarrow as pa

            off = np.concatenate([[0], np.cumsum(ucounts)]).astype(np.int64)
            sets = pl.Series(_ArrowCapsule(pa.LargeListArray.from_arrays(
                off, pa.array(vals, type=pa.uint64())))).alias("shingles")
            batch = batch.select(UID, "id").with_columns(sets)
        parts.append(batch)
    ids = pl.concat(parts) if parts else pl.DataFrame(schema={UID: pl.UInt64, "id": pl.String})
    if verify and "shingles" not in ids.columns:
        ids = ids.with_columns(pl.lit(None, dtype=pl.List(pl.UInt64)).alias("shingles"))
    sig.join(ids, on=UID, how="inner").write_parquet(out)


# ------------------------------------------------------------------------------------------------ operator
@register("minhash_dedup")
class MinHashDedup(GlobalStage):
    """Removes near-duplicate documents by MinHash + LSH banding (Broder 1997; Leskovec et al., *Mining
    of Massive Datasets* ch. 3), with optional exact-Jaccard verification.

    Steps: shingles of the normalised text (default word 5-grams after DataTrove's ``simplify_text``:
    lowercase, numbers to 0, punctuation to space, diacritics stripped, whitespace collapsed;
    ``shingle="char"`` gives character n-grams as NeMo Curator) -> ``num_perm`` MinHash values per doc
    (numba kernel over a whole batch) -> ``bands`` x ``rows`` band keys spilled per shard as parquet under
    the scratch dir (``ctx.map_shards``: an interrupted run reuses finished shards) -> per band, docs with
    equal keys form a bucket (group-by, one band column in memory at a time, split into hash partitions
    to stay under ``bucket_memory_mb``; spilled as sorted star pairs) -> the candidates' signatures and
    shingle sets gathered into memory-mapped files under the scratch dir (not held in RAM) -> union-find with path compression
    over the buckets, band by band. Without verification a bucket joins all its docs. With verification
    a doc joins another only if their exact Jaccard on shingle sets is >= ``threshold``; each doc of a
    bucket is checked against the first doc of each sub-cluster already formed in that bucket (at most
    ``verify_heads`` of them) and against the previous doc, so near-duplicates that share a bucket with
    a dissimilar earlier doc are still joined, at a bounded cost per doc -> in each connected cluster one
    doc is kept by ``keep``; the others are removed. Where the executor puts global steps
    (``ctx.global_ops``: the driver locally, Ray Data shuffles and tasks on Ray) the buckets are grouped
    and the connected components of the bucket graph found: without verification they are the clusters;
    with it the verified union runs per group of components (``global_ops.map_groups``), each group's
    buckets in the one-process (band, head, member) order, which gives the one-process clusters since a
    bucket never reaches outside its component (see :func:`_verify_group`); then the keep step runs per
    cluster there too (``global_ops.map_groups`` of the candidates by cluster label, :func:`_pick_group`),
    each group writing its part of the state (``state_dir/minhash_dups/part-*.parquet``: the clustered
    documents only), so the process running the fit holds file names and counters, not the candidates.

    Defaults: threshold 0.8, num_perm 128, verification on when threshold >= 0.7. (bands, rows), when not
    given, follow ``bands_rule``: ``recall`` (the default when verifying, since verification removes every
    false positive afterwards) takes the largest rows r with S(threshold) = 1 - (1 - t^r)^(num_perm // r)
    >= 0.99 (``_minhash_params.recall_param``; 21 x 6 at 0.8, S-curve table there); ``datasketch`` (the
    default without verification, where false positives stay) is datasketch's ``_optimal_param``
    (``datasketch/lsh.py``, ``fp_weight``/``fn_weight`` 0.5) -> 9 x 13 for 0.8, bit-for-bit.
    ``hash="fast"`` (default): XXH64 shingle hashes and 64-bit multiply-shift permutations;
    ``hash="datasketch"`` gives signatures bit-identical to ``datasketch.MinHash(num_perm, seed=1)``
    2.0.0 (sha1 32-bit + fmix32 + affine mod 2^32); ``hash="datasketch_legacy"`` matches
    ``MinHash(scheme="legacy")`` / datasketch < 2.0 (permutations mod 2^61-1, masked to 32 bits).
    Presets reproduce the peers: ``datatrove`` (word 5-grams, 14 x 8, no verification; DataTrove
    ``MinhashConfig``) and ``nemo`` (char 24-grams of raw text, 20 x 13, no verification; NeMo Curator
    ``FuzzyDuplicatesConfig``); explicitly given fields override a preset.

    Keep policy (deterministic, independent of worker count): ``earliest`` (smallest input position),
    ``longest`` (most characters, ties -> earliest) or ``score`` (highest ``score_column``, ties and nulls
    -> earliest). Without verification a cluster is a connected component of LSH candidates (DataTrove's
    semantics); with it, of verified pairs.

    Short documents: a document with fewer than ``ngram`` words (chars) has no shingle, so it is
    **kept and never deduplicated** (as DataTrove); their number is the step's ``short_docs`` counter.

    Counters (in ``stats.json`` and the run table): ``docs``, ``short_docs``, ``bucket_pairs`` (star pairs
    over all bands), ``verified_pairs`` / ``false_positive_pairs`` (verification checks that passed /
    failed), ``clusters``, ``removed``; timers ``signatures``, ``buckets``, ``candidates``, ``cluster``.
    The derived settings (bands, rows, num_perm, verify) are logged.

    Rejected rows have reason ``near_duplicate`` and score = exact Jaccard if verified, else estimated.
    """

    class Params(OpParams):
        threshold: float = Field(0.8, gt=0.0, lt=1.0, description="Jaccard similarity of near-duplicates (curate default 0.8 -> 21 x 6 bands "
                               "when verifying, 9 x 13 with bands_rule datasketch)")
        num_perm: int = Field(128, ge=2, le=4096, description="hash permutations when bands/rows are derived (datasketch MinHash default: 128)")
        bands: int | None = Field(None, ge=1, description="LSH bands (with rows; default from threshold)")
        rows: int | None = Field(None, ge=1, description="rows per band (with bands)")
        preset: Literal["datatrove", "nemo"] | None = Field(None, description="peer settings to reproduce: datatrove or nemo (default none)")
        shingle: Literal["word", "char"] = Field("word", description="word or character n-grams (DataTrove: word)")
        ngram: int = Field(5, ge=1, description="n of the shingles (DataTrove: 5)")
        normalize: bool = Field(True, description="DataTrove simplify_text before shingling (DataTrove: true)")
        hash: Literal["fast", "datasketch", "datasketch_legacy"] = Field("fast", description="hash scheme (default fast; datasketch for bit-identical signatures)")
        seed: int = Field(1, ge=0, description="permutation seed (datasketch default 1)")
        verify: bool | None = Field(None, description="exact-Jaccard check of candidates (default: threshold>=0.7)")
        keep: Literal["earliest", "longest", "score"] = Field("earliest", description="which doc a cluster keeps (default earliest, as DataTrove keeps the first)")
        score_column: str | None = Field(None, description="column for keep='score' (highest kept)")
        fp_weight: float = Field(0.5, ge=0.0, description="false-positive weight for derived bands/rows (datasketch: 0.5)")
        fn_weight: float = Field(0.5, ge=0.0, description="false-negative weight for derived bands/rows (datasketch: 0.5)")
        bands_rule: Literal["recall", "datasketch"] | None = Field(
            None, description="derived bands/rows: recall (S(threshold) >= 0.99; default when verifying) or "
            "datasketch (its _optimal_param with fp/fn weights; default without verification)")
        bucket_memory_mb: int = Field(1024, ge=16, description="memory bound of one bucketing pass (curate default 1024)")
        verify_heads: int = Field(16, ge=1, le=4096,
                                  description="sub-cluster heads per LSH bucket a doc is verified against "
                                              "(curate default 16)")
        device: Literal["cpu", "cuda", "auto"] = Field("cpu", description="signature kernel device (torch on cuda)")

        @model_validator(mode="after")
        def _check(self) -> MinHashDedup.Params:
            if (self.bands is None) != (self.rows is None):
                raise ValueError("give both bands and rows, or neither")
            if self.keep == "score" and not self.score_column:
                raise ValueError("keep='score' needs score_column")
            if (self.bands is not None and self.rows is not None and "num_perm" in self.model_fields_set
                    and self.bands * self.rows > self.num_perm):
                raise ValueError(f"bands*rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
            return self

    def needs(self) -> list[str]:
        return [self.params.score_column] if self.params.keep == "score" and self.params.score_column else []

    def adds(self) -> dict[str, Column]:
        return {
            "dup_cluster_id": Column(pl.UInt64, "internal row key (__uid) of the kept document of its cluster",
                                     "null for a document in no cluster"),
            "dup_of": Column(pl.String, "id of the kept document of its cluster",
                             "null on kept rows (set on rejected rows)"),
            "dup_jaccard_est": Column(pl.Float64, "Jaccard with the kept document estimated from signatures",
                                      "never null on a rejected row", rejects_only=True),
            "dup_jaccard": Column(pl.Float64, "exact Jaccard of shingle sets with the kept document",
                                  "null when verify is off", rejects_only=True),
        }

    # --------------------------------------------------------------------------------- settings
    def settings(self) -> dict:
        """Parameters after the preset and derived (bands, rows, num_perm, verify) are filled in."""
        p = self.params
        d = p.model_dump()
        if p.preset:
            for k, v in PRESETS[p.preset].items():
                if k not in p.model_fields_set:
                    d[k] = v
        if d["verify"] is None:
            d["verify"] = d["threshold"] >= 0.7
        if d["bands_rule"] is None:
            d["bands_rule"] = "recall" if d["verify"] else "datasketch"
        if d["bands"] is None:
            if d["bands_rule"] == "recall":
                d["bands"], d["rows"] = recall_param(d["threshold"], d["num_perm"])
            else:
                d["bands"], d["rows"] = optimal_param(d["threshold"], d["num_perm"], fp_weight=d["fp_weight"],
                                                      fn_weight=d["fn_weight"])
        elif "num_perm" not in p.model_fields_set:
            d["num_perm"] = d["bands"] * d["rows"]
        if d["bands"] * d["rows"] > d["num_perm"]:
            raise self.error(f"bands*rows = {d['bands'] * d['rows']} exceeds num_perm = {d['num_perm']}",
                             param="num_perm")
        return d

    def _cfg(self, s: dict) -> _Cfg:
        device = s["device"]
        if device == "auto":
            device = resolve_device("auto")
        return _Cfg(shingle=s["shingle"], ngram=s["ngram"], normalize=s["normalize"], hash=s["hash"],
                    num_perm=s["num_perm"], seed=s["seed"], bands=s["bands"],
                    rows=s["rows"], score_column=s["score_column"], device=device)

    # --------------------------------------------------------------------------------------- fit
    def fit(self, ctx: FitContext) -> None:
        s = self.settings()
        cfg = self._cfg(s)
        key = cfg.key()
        log.info("minhash_dedup: bands %d x rows %d of num_perm %d, hash %s, %s %d-grams, threshold %g, verify %s, "
                 "keep %s", s["bands"], s["rows"], s["num_perm"], s["hash"], s["shingle"], s["ngram"],
                 s["threshold"], s["verify"], s["keep"])
        with ctx.timer("signatures"):
            sig_files = ctx.map_shards(partial(_sig_shard, cfg), f"minhash_sig_{key}")
        sig_dir = ctx.scratch_dir / f"minhash_sig_{key}"
        stats: dict[str, int] = {}
        counts = (pl.scan_parquet(sig_files).select(pl.len().alias("docs"),
                                                    (pl.col("n_shingles") == 0).sum().alias("short"))
                  .collect()) if sig_files else pl.DataFrame({"docs": [0], "short": [0]})
        stats["docs"], stats["short_docs"] = int(counts["docs"][0]), int(counts["short"][0] or 0)
        with ctx.timer("buckets"):
            # grouped where the executor groups (the driver locally, a Ray Data shuffle on Ray)
            pair_files = ctx.global_ops.star_pairs(
                sig_files, key_columns=[f"b{i}" for i in range(s["bands"])], node=UID,
                out_dir=ctx.scratch_dir / f"minhash_buckets_{key}", active="n_shingles",
                memory_mb=s["bucket_memory_mb"], nrows=stats["docs"])
        stats["bucket_pairs"] = _num_rows(pair_files)
        stats.update(verified_pairs=0, false_positive_pairs=0, clusters=0, removed=0)  # set below if pairs
        if stats["bucket_pairs"]:
            cand_path = ctx.scratch_dir / f"minhash_cand_{key}.parquet"
            with ctx.timer("candidates"):
                scan = pl.scan_parquet(pair_files)
                (pl.concat([scan.select(pl.col("a").alias(UID)), scan.select(pl.col("b").alias(UID))])
                 .unique().sort(UID).collect().write_parquet(cand_path))
                cand_files = ctx.map_shards(partial(_cand_shard, cfg, sig_dir, cand_path, s["verify"]),
                                            f"minhash_cand_{key}_{int(s['verify'])}")
            with ctx.timer("cluster"):
                mmap_dir = ctx.scratch_dir / f"minhash_mmap_{key}"
                # only the row keys stay here: the keep step reads id, length and score with the groups
                cands = _spill_candidates(cand_files, int(s["num_perm"]), bool(s["verify"]), mmap_dir,
                                          columns=(UID,))
                n_cands, n_set_vals = cands.meta.height, int(cands.off[-1])
                del cands
                # components of all bucket pairs, where the executor computes them: the clusters
                # without verification, the independent groups of the verified union with it
                label_files = ctx.global_ops.connected_components(
                    pair_files, out_dir=ctx.scratch_dir / f"minhash_components_{key}")
                if s["verify"]:
                    label_files, counts = ctx.global_ops.map_groups(
                        pair_files, key="a", labels=label_files, file_index="file", order=["file", "a", "b"],
                        fn=partial(_verify_group, str(mmap_dir), float(s["threshold"]),
                                   int(s["verify_heads"])),
                        out_dir=ctx.scratch_dir / f"minhash_verified_{key}",
                        memory_mb=s["bucket_memory_mb"], nrows=stats["bucket_pairs"])
                    stats["verified_pairs"] = counts.get("passed", 0)
                    stats["false_positive_pairs"] = counts.get("failed", 0)
                # the keep step per cluster, also where the executor runs groups: the candidates' small
                # columns grouped by cluster label; each group writes its state rows under the state dir
                # (map_groups sizes partitions at 64 bytes a row: a group also copies its members'
                # signatures, 4 * num_perm bytes each, and shingle sets, 8 bytes a value, out of the maps)
                _, counts = ctx.global_ops.map_groups(
                    cand_files, key=UID, columns=[UID, "id", "length", "score"], labels=label_files,
                    order=[UID], fn=partial(_pick_group, str(mmap_dir), str(s["keep"]), bool(s["verify"])),
                    out_dir=ctx.state_dir / _STATE, memory_mb=s["bucket_memory_mb"],
                    nrows=n_cands * (2 + int(s["num_perm"]) // 16) + n_set_vals // 8)
                if counts.get("candidates", 0) != n_cands:
                    raise ValueError(f"connected components labelled {counts.get('candidates', 0)} of "
                                     f"{n_cands} candidate documents")
                stats["clusters"], stats["removed"] = counts.get("clusters", 0), counts.get("removed", 0)
        state_dir = ctx.state_dir / _STATE
        if not stats["bucket_pairs"]:  # (with pairs, map_groups replaced the folder)
            shutil.rmtree(state_dir, ignore_errors=True)
        if not any(state_dir.glob("*.parquet")):  # no clustered documents: one empty part
            state_dir.mkdir(parents=True, exist_ok=True)
            _empty_state().write_parquet(state_dir / "part-empty.parquet")
        for name, value in stats.items():
            ctx.stat(name, value)
        if stats["short_docs"]:
            log.info("minhash_dedup: %d documents shorter than %d %ss kept without deduplication",
                     stats["short_docs"], s["ngram"], s["shingle"])

    def setup(self, ctx: RunContext) -> None:
        """Reads the state parts the fit's keep step wrote (``state_dir/minhash_dups/``): one row per
        document of a cluster (kept and removed)."""
        self._state = pl.read_parquet(sorted((Path(ctx.state_dir) / _STATE).glob("*.parquet")))

    def apply(self, batch: pl.DataFrame) -> pl.DataFrame:
        batch = batch.drop([c for c in _OUT_COLS if c in batch.columns])
        return batch.join(self._state, on=UID, how="left", maintain_order="left")

    def rules(self) -> list[Rule]:
        s = self.settings()
        return [Rule("near_duplicate", "dup_of", "not_null", threshold=s["threshold"],
                     score_column="dup_jaccard" if s["verify"] else "dup_jaccard_est")]

    def finish(self, kept: pl.DataFrame) -> pl.DataFrame:
        return kept.drop(["dup_jaccard_est", "dup_jaccard"])


def _empty_state() -> pl.DataFrame:
    return pl.DataFrame(schema={UID: pl.UInt64, "dup_cluster_id": pl.UInt64, "dup_of": pl.String,
                                "dup_jaccard_est": pl.Float64, "dup_jaccard": pl.Float64})


def _num_rows(files: list[Path]) -> int:
    import pyarrow.parquet as pq

    return sum(pq.read_metadata(f).num_rows for f in files)


class _Cands:
    """The candidate documents of the clustering step, sorted by row key: ``meta`` (UID and the asked-for
    columns of id, length, score) in memory (~40 bytes a doc with all of them), and the two big parts as
    memory-mapped ``.npy`` files under the scratch dir: ``sig`` (docs x num_perm uint32) and the
    concatenated sorted shingle-hash sets ``vals`` (uint64, doc i at ``vals[off[i]:off[i + 1]]``; the
    row keys and offsets are saved beside them, ``uids.npy`` and ``off.npy``, for the group steps that
    run in other processes: :func:`_verify_group`, :func:`_pick_group`). File-backed pages are dropped
    by the kernel under memory pressure, so the step's anonymous memory does not grow with the
    candidates' signatures and sets."""

    def __init__(self, meta: pl.DataFrame, sig: np.ndarray, off: np.ndarray, vals: np.ndarray):
        self.meta, self.sig, self.off, self.vals = meta, sig, off, vals


def _list_parts(col) -> tuple[np.ndarray, np.ndarray]:
    """(int64 offsets rebased to 0, values) of an Arrow list column, zero-copy views (null rows: empty)."""
    import pyarrow as pa

    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if len(arr) == 0:
        return np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.uint64)
    off = np.asarray(arr.offsets).astype(np.int64)
    vals = np.asarray(arr.values)[off[0]: off[-1]]
    return off - off[0], vals


def _spill_candidates(cand_files: list[Path], k: int, verify: bool, out_dir: Path,
                      columns: tuple[str, ...] = (UID, "id", "length", "score")) -> _Cands:
    """Gather the per-shard candidate files into :class:`_Cands`, one file in memory at a time: a first
    pass reads the small columns (``columns`` of ``meta``; :meth:`MinHashDedup.fit` asks for the row key
    only, as its keep step reads the rest with the groups) and the set sizes, a second scatters signatures
    and sets into the memory-mapped arrays at their sorted positions. (Reading them all as one DataFrame
    held every signature and shingle set in RAM three times over: ~3 KB a candidate, ~8 GB at 10M
    documents.)"""
    import pyarrow.parquet as pq

    out_dir.mkdir(parents=True, exist_ok=True)
    metas, lens = [], []
    for f in cand_files:
        metas.append(pl.read_parquet(f, columns=list(dict.fromkeys((UID, *columns)))))
        if verify:
            off_f, _ = _list_parts(pq.ParquetFile(f).read(columns=["shingles"]).column(0))
            lens.append(np.diff(off_f))
    meta = pl.concat(metas)
    n = meta.height
    order = np.argsort(meta[UID].to_numpy(), kind="stable")
    meta = meta[order]
    pos = np.empty(n, dtype=np.int64)  # pos[row in file order] = row in UID order
    pos[order] = np.arange(n)
    off = np.zeros(n + 1, dtype=np.int64)
    if verify and n:
        off[1:] = np.cumsum(np.concatenate(lens)[order])

    def mm(name: str, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
        if not math.prod(shape):  # an empty file cannot be mapped
            return np.zeros(shape, dtype=dtype)
        return np.lib.format.open_memmap(out_dir / name, mode="w+", dtype=dtype, shape=shape)

    sig, vals = mm("sig.npy", "<u4", (n, k)), mm("vals.npy", "<u8", (int(off[-1]),))
    start = 0
    for f in cand_files:
        # ParquetFile.read, not read_table: read_table's dataset layer imports pandas and pyarrow.compute
        t = pq.ParquetFile(f).read(columns=["sig"] + (["shingles"] if verify else []))
        p = pos[start: start + t.num_rows]
        start += t.num_rows
        sig[p] = _sig_from_binary(t.column("sig"), k)
        if verify:
            off_f, vals_f = _list_parts(t.column("shingles"))
            lens_f = np.diff(off_f)
            dest = np.repeat(off[p] - off_f[:-1], lens_f) + np.arange(len(vals_f))
            vals[dest] = vals_f
        del t
    for a in (sig, vals):
        if isinstance(a, np.memmap):
            a.flush()
    # for the verified union's group tasks (other processes, maybe other nodes): which row is which doc
    np.save(out_dir / "uids.npy", meta[UID].to_numpy())
    np.save(out_dir / "off.npy", off)
    return _Cands(meta, sig, off, vals)


def _verify_group(mmap_dir: str, threshold: float, max_heads: int,
                  rows: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, int]]:
    """The verified union (:func:`~curate.filters._minhash_kernels.verify_buckets`) of the buckets of some
    connected components of the bucket graph: ``rows`` are their star pairs (``file``, ``a``, ``b``),
    sorted by (component, file, a, b). Returns every node's ``label`` (the smallest row key of its
    verified cluster) and the passed / failed checks.

    Why this equals the one-process union over all pair files: a bucket's members are all in one
    component of the bucket graph, and the kernel's work on a bucket reads and changes the union-find
    only at that bucket's members. So the outcome of each check (which pairs are compared, which pass)
    depends only on the unions done earlier in the same component, and those are the same here as in
    one process, since this runs the component's buckets in the same (file, head, member) order, one
    kernel call per pair file as there. Which node ends up as a root does not matter (labels are the
    smallest node of each set)."""
    from curate.filters import _minhash_kernels as K

    d = Path(mmap_dir)
    uids, off = np.load(d / "uids.npy"), np.load(d / "off.npy")
    vals = np.load(d / "vals.npy", mmap_mode="r") if (d / "vals.npy").exists() else np.zeros(0, np.uint64)
    ia = np.searchsorted(uids, rows["a"].to_numpy()).astype(np.int64)
    ib = np.searchsorted(uids, rows["b"].to_numpy()).astype(np.int64)
    nodes = np.unique(np.concatenate([ia, ib]))
    la, lb = np.searchsorted(nodes, ia).astype(np.int64), np.searchsorted(nodes, ib).astype(np.int64)
    lens = off[nodes + 1] - off[nodes]  # this group's shingle sets, copied out of the memory map
    loff = np.zeros(len(nodes) + 1, dtype=np.int64)
    loff[1:] = np.cumsum(lens)
    lvals = np.ascontiguousarray(vals[np.repeat(off[nodes] - loff[:-1], lens) + np.arange(int(loff[-1]))])
    parent = np.arange(len(nodes), dtype=np.int64)
    size = np.ones(len(nodes), dtype=np.int64)
    n_pass = n_fail = 0
    file = rows["file"].to_numpy()
    order = np.argsort(file, kind="stable")  # rows come by component first: regroup by file, order kept
    bounds = np.flatnonzero(np.diff(file[order])) + 1
    for sel in np.split(order, bounds):  # one kernel call per pair file, in file order (as in one process)
        ok, bad = K.verify_buckets(parent, size, la[sel], lb[sel], lvals, loff, threshold, max_heads)
        n_pass, n_fail = n_pass + ok, n_fail + bad
    root = K.roots(parent)
    first = np.full(len(nodes), len(nodes), dtype=np.int64)
    np.minimum.at(first, root, np.arange(len(nodes)))  # nodes are sorted: the set's first is its smallest
    return (pl.DataFrame({"node": uids[nodes], "label": uids[nodes[first[root]]]},
                         schema={"node": pl.UInt64, "label": pl.UInt64}),
            {"passed": int(n_pass), "failed": int(n_fail)})


def _pick_group(mmap_dir: str, keep: str, verify: bool,
                rows: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, int]]:
    """The keep step for some clusters (a group function of ``ctx.global_ops.map_groups``): ``rows`` are
    their candidate documents (``UID``, ``id``, ``length``, ``score``) with the cluster's label as
    ``GROUP`` (the smallest row key of the cluster: without verification a connected component of the
    bucket pairs, every bucket one clique as in DataTrove; with it a set of :func:`_verify_group`'s union).
    In each cluster of two or more documents one is kept by ``keep`` (``earliest``: smallest row key;
    ``longest``: most characters; ``score``: highest score, nulls and NaN last; ties by smallest row key)
    and the others are removed. Returns the state rows of the clustered documents (``dup_cluster_id``:
    the kept one's row key; on removed rows ``dup_of``, the kept one's id, and their Jaccard with it,
    estimated from the signatures and, verifying, exact on the shingle sets read out of the memory maps
    under ``mmap_dir``) and the counters ``candidates`` (rows seen), ``clusters`` and ``removed``. Each
    cluster's result depends only on its own rows, so any split of the clusters over partitions gives
    the same rows."""
    from curate.core.global_ops import GROUP
    from curate.filters import _minhash_kernels as K

    uids = rows[UID].to_numpy()
    n = len(uids)
    _, root = np.unique(rows[GROUP].to_numpy(), return_inverse=True)  # cluster index of each row
    root = root.astype(np.int64).reshape(-1)
    if keep == "earliest":
        primary = np.zeros(n)
    elif keep == "longest":
        primary = -rows["length"].to_numpy().astype(np.float64)
    else:
        sc = rows["score"].cast(pl.Float64).to_numpy().astype(np.float64)
        primary = np.where(np.isnan(sc), np.inf, -sc)
    order = np.lexsort((uids, primary, root))
    first = np.ones(n, dtype=bool)
    first[1:] = root[order][1:] != root[order][:-1]
    kept_of_root = np.empty(int(root.max(initial=-1)) + 1, dtype=np.int64)
    kept_of_root[root[order][first]] = order[first]
    size = np.bincount(root, minlength=len(kept_of_root))
    in_cluster = size[root] > 1
    kept = kept_of_root[root]
    removed = in_cluster & (kept != np.arange(n))
    node = np.nonzero(in_cluster)[0]
    rem = np.nonzero(removed)[0]
    # the clustered documents' signatures and sets, copied out of the memory maps (rows by node order)
    d = Path(mmap_dir)
    all_uids = np.load(d / "uids.npy", mmap_mode="r")
    g = np.searchsorted(all_uids, uids[node]).astype(np.int64)
    if len(g) and (g.max() >= len(all_uids) or not np.array_equal(all_uids[g], uids[node])):
        raise ValueError("a clustered document is not among the spilled candidates")
    local = np.full(n, -1, dtype=np.int64)
    local[node] = np.arange(len(node))
    sig = (np.ascontiguousarray(np.load(d / "sig.npy", mmap_mode="r")[g]) if len(g)
           else np.zeros((0, 1), dtype="<u4"))
    loff = np.zeros(len(node) + 1, dtype=np.int64)
    lvals = np.zeros(0, dtype=np.uint64)
    if verify and len(g):
        off = np.load(d / "off.npy", mmap_mode="r")
        lens = np.asarray(off[g + 1] - off[g], dtype=np.int64)
        loff[1:] = np.cumsum(lens)
        if loff[-1]:
            vals = np.load(d / "vals.npy", mmap_mode="r")
            src = np.repeat(np.asarray(off[g], dtype=np.int64) - loff[:-1], lens) + np.arange(int(loff[-1]))
            lvals = np.ascontiguousarray(vals[src])
    est, exact = K.pair_jaccards(local[rem], local[kept[rem]], sig, lvals, loff, verify)
    j_est = np.full(n, np.nan)
    j_est[rem] = est
    j_ex = np.full(n, np.nan)
    j_ex[rem] = exact
    kept_id = rows["id"].cast(pl.String).gather(kept[node])
    out = pl.DataFrame({
        UID: pl.Series(uids[node], dtype=pl.UInt64),
        "dup_cluster_id": pl.Series(uids[kept[node]], dtype=pl.UInt64),
        "dup_of": pl.select(pl.when(pl.Series(removed[node], dtype=pl.Boolean)).then(kept_id)).to_series(),
        "dup_jaccard_est": pl.Series(j_est[node], dtype=pl.Float64).fill_nan(None),
        "dup_jaccard": pl.Series(j_ex[node], dtype=pl.Float64).fill_nan(None),
    }).cast(_empty_state().schema)  # type: ignore[arg-type]
    return out, {"candidates": n, "clusters": int(in_cluster.sum() - removed.sum()),
                 "removed": int(removed.sum())}
