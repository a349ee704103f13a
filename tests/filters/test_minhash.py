"""minhash_dedup: datasketch parity, optimal (b, r) parity, S-curve recall, planted near-duplicates on real
text against exact Jaccard, determinism across worker counts, keep policies, short documents."""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import struct
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from core.text_reference import shingles_py
from core.text_reference import simplify_text_reference as simplify_text

from curate import Pipeline, read, read_output, write
from curate.core.operator import UID, FitContext
from curate.core.text import simplify_text as simplify_text_fast
from curate.filters import _minhash_kernels as K
from curate.filters._minhash_params import optimal_param, permutations, recall_param, s_curve
from curate.filters.minhash import MinHashDedup, _Cfg, compute_signatures, shingle_hashes
from curate.io.spill import SpillWriter


def _news(shared_data: Path, n: int) -> list[str]:
    with gzip.open(shared_data / "web" / "20news-bydate.jsonl.gz", "rt") as fh:
        return [json.loads(line)["text"] for _, line in zip(range(n), fh)]


EDGE = ["", "short text", "1.2.3 abc123def 1,000,000 x.", "Tab\there  ÉCOLE café 3,5 — “quoted” naïve words here",
        "a-b_c d e f g h", "日本語 の テキスト です よ ね"]


# ------------------------------------------------------------------------------------------- hashing
def test_xxh64_and_sha1_match_reference():
    xxhash = pytest.importorskip("xxhash")
    rng = np.random.default_rng(0)
    for n in [0, 1, 3, 4, 7, 8, 31, 32, 33, 55, 56, 63, 64, 65, 200]:
        raw = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        arr = np.frombuffer(raw + b"pad", dtype=np.uint8)
        assert K.xxh64(arr, 0, n, np.uint64(7)) == xxhash.xxh64_intdigest(raw, seed=7)
        assert K.sha1_prefix(arr, 0, n, 4) == struct.unpack("<I", hashlib.sha1(raw).digest()[:4])[0]
        assert K.sha1_prefix(arr, 0, n, 8) == struct.unpack("<Q", hashlib.sha1(raw).digest()[:8])[0]


@pytest.mark.parametrize("hash_name,scheme", [("datasketch", "affine32"), ("datasketch_legacy", "legacy")])
@pytest.mark.parametrize("shingle,n", [("word", 5), ("char", 24), ("word", 1)])
def test_signatures_bit_identical_to_datasketch(shared_data, hash_name, scheme, shingle, n):
    datasketch = pytest.importorskip("datasketch")
    texts = _news(shared_data, 120) + EDGE
    cfg = _Cfg(shingle=shingle, ngram=n, normalize=True, hash=hash_name, num_perm=128, seed=1, bands=16,
               rows=8, score_column=None, device="cpu")
    sig, counts = compute_signatures(pl.Series(texts), cfg)
    for i, t in enumerate(texts):
        sh = shingles_py(t, shingle, n)
        assert counts[i] == len(sh)
        m = datasketch.MinHash(num_perm=128, seed=1, scheme=scheme)
        m.update_batch([s.encode("utf-8") for s in sh])
        np.testing.assert_array_equal(m.hashvalues.astype(np.uint64), sig[i].astype(np.uint64))


def test_fast_word_kernel_normalises_like_simplify_text(shared_data):
    texts = _news(shared_data, 1500) + EDGE
    s = pl.Series(texts)
    h1, c1 = shingle_hashes(s, shingle="word", ngram=5, normalize=True, kind=0, seed=7)
    simplified = s.to_frame("t").select(simplify_text(pl.col("t"))).to_series()
    fast = s.to_frame("t").select(simplify_text_fast(pl.col("t"))).to_series()
    assert fast.to_list() == simplified.to_list()  # vectorised accent stripping == the Python reference
    h2, c2 = shingle_hashes(simplified, shingle="word", ngram=5, normalize=False, kind=0, seed=7)
    np.testing.assert_array_equal(c1, c2)
    np.testing.assert_array_equal(h1, h2)
    np.testing.assert_array_equal(c1[-600:], [len(shingles_py(t)) for t in texts[-600:]])  # incl. EDGE


MULTI = ["ΣΟΦΙΑ και ΟΔΟΣ σοφός Σ", "Привет, мир! Ёлка 123,45 руб.", "مرحبا بالعالم ١٢٣ ٣،٤ 3،4 كَتَبَ",
         "İstanbul'da ĞÜŞ ı", "naïve café — “quoted” … ½ £3.50 e\u0301t\u0301e 1\u03015 x", "Việt Nam Tiếng Việt ễ ữ",
         "हिन्दी भाषा १२३ क़", "tab\u00a0nbsp\u2003em\u2028line", "\u0096dash\u0085nel\u0097", "ǅungla Ǆ ǆ ﬁne ﬂ",
         "1.\u03015 2,\u00a03 4\u00b45 ÉCOLE É", "日本語 テキスト"]


@pytest.mark.parametrize("ngram", [1, 5])
def test_word_kernel_code_point_table_gives_simplify_text_shingles(shared_data, ngram):
    """Non-ASCII texts whose code points the table covers are normalised in the kernel (no regex pass),
    with the same shingles as through simplify_text; the others (Greek capital sigma, Arabic digits and
    comma, combining marks, CJK) fall back and still agree."""
    with gzip.open(shared_data / "reviews" / "aclImdb_v1.jsonl.gz", "rt") as fh:
        reviews = [t for t in (json.loads(line)["text"] for _, line in zip(range(6000), fh)) if not t.isascii()]
    s = pl.Series(reviews + MULTI)
    h1, c1 = shingle_hashes(s, shingle="word", ngram=ngram, normalize=True, kind=0, seed=3)
    simplified = s.to_frame("t").select(simplify_text(pl.col("t"))).to_series()
    h2, c2 = shingle_hashes(simplified, shingle="word", ngram=ngram, normalize=False, kind=0, seed=3)
    np.testing.assert_array_equal(c1, c2)
    np.testing.assert_array_equal(h1, h2)
    from curate.filters.minhash import _TABLE, _utf8_buffers

    modes = K.codepoint_modes(*_utf8_buffers(s), _TABLE.kind)
    assert len(reviews) > 100 and (modes[:len(reviews)] == 1).mean() > 0.9  # the kernel's own path
    assert modes[len(reviews):].tolist() == [2, 1, 2, 1, 2, 1, 2, 1, 1, 2, 2, 2]


def _signatures_numpy(hv: np.ndarray, counts: np.ndarray, a: np.ndarray, b: np.ndarray, scheme: int) -> np.ndarray:
    """The three signature schemes written out in numpy, shingle by shingle (the kernel's definition)."""
    m32 = np.uint64(0xFFFFFFFF)

    def fmix(h: np.ndarray, bits: int) -> np.ndarray:
        if bits == 64:
            for c in (0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53):
                h = (h ^ (h >> np.uint64(33))) * np.uint64(c)
            return h ^ (h >> np.uint64(33))
        h = h & m32
        for sh, c in ((16, 0x85EBCA6B), (13, 0xC2B2AE35)):
            h = ((h ^ (h >> np.uint64(sh))) * np.uint64(c)) & m32
        return h ^ (h >> np.uint64(16))

    out = np.full((len(counts), len(a)), 0xFFFFFFFF, dtype=np.uint64)
    off = np.concatenate([[0], np.cumsum(counts)])
    with np.errstate(over="ignore"):
        for d in range(len(counts)):
            h = hv[off[d]:off[d + 1]][:, None]
            if scheme == 0:
                v = (a * fmix(h, 64) + b) >> np.uint64(32)
            elif scheme == 1:
                v = (a * fmix(h, 32) + b) & m32
            else:
                v = ((a * h + b) % K.MERSENNE) & m32
            if len(h):
                out[d] = v.min(axis=0)
    return out


@pytest.mark.parametrize("scheme,name", [(0, "fast"), (1, "affine32"), (2, "legacy")])
@pytest.mark.parametrize("num_perm", [112, 7])  # 112: the blocked 4-permutation path; 7: blocks + remainder
def test_signature_kernel_matches_numpy_reference(scheme, name, num_perm):
    rng = np.random.default_rng(21)
    counts = rng.integers(0, 40, 60)
    counts[[0, 7]] = 0  # empty documents: the all-max signature
    hv = rng.integers(0, np.iinfo(np.uint64).max, int(counts.sum()), dtype=np.uint64, endpoint=True)
    a, b = permutations(name, num_perm, 1)
    sig = K.signatures(hv, counts, a, b, scheme)
    assert sig.dtype == np.uint32
    np.testing.assert_array_equal(sig, _signatures_numpy(hv, counts, a, b, scheme))
    # band keys from the uint32 signatures equal those from the same values as uint64
    np.testing.assert_array_equal(K.band_keys(sig, 1, num_perm), K.band_keys(sig.astype(np.uint64), 1, num_perm))


def test_torch_fast_kernel_matches_numba():
    pytest.importorskip("torch")
    from curate.filters._minhash_torch import signatures_fast_torch

    rng = np.random.default_rng(3)
    counts = rng.integers(0, 50, 40)
    hv = rng.integers(0, np.iinfo(np.uint64).max, int(counts.sum()), dtype=np.uint64, endpoint=True)
    a, b = permutations("fast", 64, 1)
    np.testing.assert_array_equal(signatures_fast_torch(hv, counts, a, b, "cpu", chunk=256),
                                  K.signatures(hv, counts, a, b, 0))


@pytest.mark.gpu
def test_torch_fast_kernel_on_cuda_matches_numba():
    from curate.filters._minhash_torch import signatures_fast_torch

    rng = np.random.default_rng(4)
    counts = rng.integers(0, 300, 500)
    hv = rng.integers(0, np.iinfo(np.uint64).max, int(counts.sum()), dtype=np.uint64, endpoint=True)
    a, b = permutations("fast", 128, 1)
    np.testing.assert_array_equal(signatures_fast_torch(hv, counts, a, b, "cuda"), K.signatures(hv, counts, a, b, 0))


# ---------------------------------------------------------------------------------------- parameters
def test_optimal_param_matches_datasketch():
    lsh = pytest.importorskip("datasketch.lsh")
    for num_perm in (64, 128, 256):
        for t in (0.3, 0.5, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95):
            assert optimal_param(t, num_perm) == lsh._optimal_param(t, num_perm, 0.5, 0.5), (t, num_perm)
    assert optimal_param(0.8, 128, fp_weight=0.3, fn_weight=0.7) == lsh._optimal_param(0.8, 128, 0.3, 0.7)
    assert optimal_param(0.8, 128) == (9, 13)  # algorithms.md §3.3 reference values


def test_presets_and_defaults():
    s = MinHashDedup(preset="datatrove").settings()
    assert (s["shingle"], s["ngram"], s["bands"], s["rows"], s["num_perm"], s["verify"]) == ("word", 5, 14, 8, 112, False)
    s = MinHashDedup(preset="nemo").settings()
    assert (s["shingle"], s["ngram"], s["bands"], s["rows"], s["num_perm"], s["normalize"]) == ("char", 24, 20, 13, 260, False)
    s = MinHashDedup(preset="datatrove", verify=True).settings()
    assert s["verify"] is True
    assert MinHashDedup(threshold=0.6).settings()["verify"] is False
    with pytest.raises(ValueError):
        MinHashDedup(bands=4)
    with pytest.raises(ValueError):
        MinHashDedup(keep="score")


# ------------------------------------------------------------------------------------- S-curve
def _pair_sets(rng: np.random.Generator, jac: float, size: int = 200) -> tuple[np.ndarray, np.ndarray, float]:
    x = int(round(2 * size * jac / (1 + jac)))
    common = rng.integers(0, 2**63, x, dtype=np.uint64)
    a = np.concatenate([common, rng.integers(0, 2**63, size - x, dtype=np.uint64)])
    b = np.concatenate([common, rng.integers(0, 2**63, size - x, dtype=np.uint64)])
    return a, b, x / (2 * size - x)


def test_band_collision_rate_follows_s_curve_and_estimator_unbiased():
    rng = np.random.default_rng(11)
    bands, rows, trials = 14, 8, 400
    a_, b_ = permutations("fast", bands * rows, 1)
    for jac in (0.5, 0.6, 0.7, 0.8, 0.9):
        sets = [_pair_sets(rng, jac) for _ in range(trials)]
        true_j = sets[0][2]
        hv = np.concatenate([np.concatenate([a, b]) for a, b, _ in sets])
        counts = np.full(2 * trials, len(sets[0][0]), dtype=np.int64)
        sig = K.signatures(hv, counts, a_, b_, 0)
        keys = K.band_keys(sig, bands, rows)
        hit = (keys[0::2] == keys[1::2]).any(axis=1).mean()
        est = (sig[0::2] == sig[1::2]).mean(axis=1)
        expected = float(s_curve(true_j, bands, rows))
        sd = np.sqrt(expected * (1 - expected) / trials)
        assert abs(hit - expected) <= 4 * sd + 1e-9, (jac, hit, expected)
        assert abs(est.mean() - true_j) <= 4 * np.sqrt(true_j * (1 - true_j) / (bands * rows) / trials)
        assert est.std() == pytest.approx(np.sqrt(true_j * (1 - true_j) / (bands * rows)), rel=0.25)


def test_identical_always_collide_disjoint_never():
    rng = np.random.default_rng(5)
    hv = rng.integers(0, 2**63, 300, dtype=np.uint64)
    a, b = permutations("fast", 128, 1)
    sig = K.signatures(np.concatenate([hv, hv[::-1], rng.integers(0, 2**63, 150, dtype=np.uint64)]),
                       np.array([300, 300, 150]), a, b, 0)
    keys = K.band_keys(sig, 16, 8)
    assert (keys[0] == keys[1]).all() and not (keys[0] == keys[2]).any()


# --------------------------------------------------------------------------- real text, exact truth
def _spill(tmp: Path, frames: list[pl.DataFrame]) -> FitContext:
    shards = []
    uid = 0
    for i, df in enumerate(frames):
        w = SpillWriter(tmp / "spill" / f"shard-{i:05d}")
        w.write(df.with_columns(pl.Series(UID, np.arange(uid, uid + df.height), dtype=pl.UInt64)))
        w.close()
        uid += df.height
        shards.append(tmp / "spill" / f"shard-{i:05d}")
    (tmp / "state").mkdir(exist_ok=True)
    return FitContext(work_dir=tmp, state_dir=tmp / "state", shards=shards, scratch_dir=tmp / "scratch")


def _planted_corpus(shared_data: Path, n_base: int, n_dup: int, seed: int = 0) -> pl.DataFrame:
    """Book paragraphs (>= 40 words) + copies with 0-6% of words replaced (a spread of Jaccard values)."""
    rng = random.Random(seed)
    with gzip.open(shared_data / "books" / "gutenberg_slice.jsonl.gz", "rt") as fh:
        paras: list[str] = []
        for line in fh:
            body = json.loads(line)["text"]
            body = body.replace("\r\n", "\n")
            paras += [p.replace("\n", " ") for p in body.split("\n\n")[50:400] if len(p.split()) >= 40]
            if len(paras) > 4 * n_base:
                break
    base = rng.sample(paras, n_base)
    rows = [{"id": f"p{i}", "text": t} for i, t in enumerate(base)]
    for k in range(n_dup):
        i = rng.randrange(n_base)
        w = base[i].split()
        for _ in range(int(len(w) * rng.uniform(0.0, 0.06))):
            w[rng.randrange(len(w))] = rng.choice(["alpha", "beta", "gamma", "delta", "the", "and"])
        rows.append({"id": f"dup{k}-p{i}", "text": " ".join(w)})
    rng.shuffle(rows)
    return pl.DataFrame(rows)


def _exact_pairs(texts: pl.Series) -> pl.DataFrame:
    """Exact word-5-gram Jaccard of every pair sharing a shingle (inverted index), same normalisation."""
    hv, counts = shingle_hashes(texts, shingle="word", ngram=5, normalize=True, kind=0, seed=99)
    vals, ucounts = K.sorted_unique_per_doc(hv, counts)
    doc = np.repeat(np.arange(len(texts)), ucounts)
    inv = pl.DataFrame({"d": doc, "h": vals})
    pairs = (inv.join(inv, on="h").filter(pl.col("d") < pl.col("d_right"))
             .group_by("d", "d_right").len().rename({"len": "inter"}))
    size = pl.Series(ucounts)
    return pairs.with_columns(
        (pl.col("inter") / (size.gather(pairs["d"]) + size.gather(pairs["d_right"]) - pl.col("inter"))).alias("j"))


def test_precision_recall_vs_exact_jaccard(shared_data, tmp_path):
    df = _planted_corpus(shared_data, 1500, 400)
    ctx = _spill(tmp_path, [df[:900], df[900:]])
    op = MinHashDedup(threshold=0.8)
    op.fit(ctx)
    op.setup(ctx)
    out = op.apply(pl.concat([b for s in ctx.shards for b in ctx.read_shard(s)]))
    s = op.settings()
    truth = _exact_pairs(df["text"])
    cluster = out["dup_cluster_id"].to_numpy()
    same = (cluster[truth["d"].to_numpy()] == cluster[truth["d_right"].to_numpy()]) & \
        ~np.isnan(cluster[truth["d"].to_numpy()].astype(float))
    pos = truth["j"].to_numpy() >= 0.8
    recall = same[pos].mean()
    expected = s_curve(truth["j"].to_numpy()[pos], s["bands"], s["rows"]).mean()
    assert pos.sum() > 100
    assert recall >= expected - 3 * np.sqrt(expected * (1 - expected) / pos.sum()) - 0.02, (recall, expected)
    # predicted pairs: all pairs inside a cluster; verified edges keep chained members close
    ids = np.nonzero(~np.isnan(cluster.astype(float)))[0]
    grp = pl.DataFrame({"d": ids, "c": cluster[ids]})
    pred = grp.join(grp, on="c").filter(pl.col("d") < pl.col("d_right")).select("d", "d_right")
    tp = pred.join(truth.filter(pl.col("j") >= 0.8), on=["d", "d_right"]).height
    assert tp / pred.height >= 0.95
    # removed rows carry the kept doc and their Jaccard with it
    rem = out.filter(pl.col("dup_of").is_not_null())
    assert rem.height > 0 and rem["dup_jaccard"].min() > 0.5
    kept_ids = set(out.filter(pl.col("dup_of").is_null())["id"])
    assert set(rem["dup_of"]) <= kept_ids


def test_keep_policies_and_short_docs(tmp_path):
    base = " ".join("w" + "abcdefghij"[i // 10] + "abcdefghij"[i % 10] for i in range(60))
    df = pl.DataFrame({
        "id": ["a", "b", "c", "short1", "short2"],
        "text": [base, base + " extra", base + " more words", "tiny doc", "tiny doc"],
        "q": [0.1, 0.2, 0.9, 0.0, 0.0],
    })
    for keep, kept in [("earliest", "a"), ("longest", "c"), ("score", "c")]:
        ctx = _spill(tmp_path / keep, [df])
        op = MinHashDedup(threshold=0.8, keep=keep, score_column="q" if keep == "score" else None)
        op.fit(ctx)
        op.setup(ctx)
        out = op.apply(df.with_columns(pl.Series(UID, np.arange(5), dtype=pl.UInt64)))
        assert set(out.filter(pl.col("dup_of").is_not_null())["id"]) == {"a", "b", "c"} - {kept}
        assert set(out.filter(pl.col("dup_of").is_not_null())["dup_of"]) == {kept}
        assert out.filter(pl.col("id").str.starts_with("short"))["dup_of"].null_count() == 2  # short: kept
        stats = ctx.numbers.counters  # the fit's counters, which the executor puts in the step's stats
        assert stats["short_docs"] == 2 and stats["removed"] == 2


def test_signature_shards_resume(tmp_path):
    df = pl.DataFrame({"id": [str(i) for i in range(20)], "text": [f"doc {i} " * 30 for i in range(20)]})
    ctx = _spill(tmp_path, [df[:10], df[10:]])
    op = MinHashDedup(threshold=0.8)
    op.fit(ctx)
    sig_files = sorted((ctx.scratch_dir).glob("minhash_sig_*/*.parquet"))
    assert len(sig_files) == 2
    before = [f.stat().st_mtime_ns for f in sig_files]
    sig_files[1].unlink()  # as if interrupted after the first shard
    op.fit(ctx)
    after = sorted((ctx.scratch_dir).glob("minhash_sig_*/*.parquet"))
    assert after[0].stat().st_mtime_ns == before[0] and len(after) == 2


# ------------------------------------------------------------------ real Pipeline, worker counts
def test_same_output_with_one_or_two_workers(shared_data, tmp_path):
    df = _planted_corpus(shared_data, 160, 60, seed=1)
    inp = tmp_path / "in"
    inp.mkdir()
    for p in range(3):
        df[p::3].write_ndjson(inp / f"part{p}.jsonl")
    results = []
    for workers in (1, 2):
        Pipeline(read(str(inp / "*.jsonl")), MinHashDedup(threshold=0.8), write(str(tmp_path / f"out{workers}"))
                 ).run(work_dir=str(tmp_path / f"work{workers}"), workers=workers, progress=False)
        out = read_output(tmp_path / f"out{workers}").sort("id")
        rej = pl.concat([pl.read_ndjson(f) for f in (tmp_path / f"work{workers}" / "rejects").rglob("*.jsonl")])
        results.append((out, rej.sort("id")))
    assert results[0][0].equals(results[1][0])
    assert results[0][1].equals(results[1][1])
    rej = results[0][1]
    assert rej.height > 20 and set(rej["reason"]) == {"near_duplicate"}
    assert {"dup_of", "dup_jaccard_est", "dup_jaccard", "score", "threshold"} <= set(rej.columns)
    assert (rej["score"] == rej["dup_jaccard"]).all()


# ------------------------------------------------------------- verification inside one LSH bucket
def _text_with_same_signature(base: str, cfg: _Cfg, extra_words: int) -> str:
    """``base`` + ``extra_words`` filler words chosen so the MinHash signature stays exactly that of
    ``base`` (every new shingle hashes above base's minimum in every permutation): the result lands in
    every LSH bucket ``base`` is in, yet its Jaccard with ``base`` is low."""
    target, _ = compute_signatures(pl.Series([base]), cfg)
    text, k = base, 0
    added = 0
    while added < extra_words:
        k += 1
        cand = f"{text} f" + "".join("abcdefghij"[int(c)] for c in str(k))  # letters: digits normalise to 0
        sig, _ = compute_signatures(pl.Series([cand]), cfg)
        if (sig == target).all():
            text, added = cand, added + 1
        assert k < 50 * extra_words
    return text


def test_verification_links_near_duplicates_behind_a_dissimilar_bucket_head(tmp_path):
    """A (earliest) shares every LSH bucket with B and C but is far from both; B ~ C. Checking each doc
    only against its bucket's earliest doc rejects (A, B) and (A, C) and never pairs B with C."""
    words = ["w" + "".join("abcdefghij"[int(c)] for c in f"{i:03d}") for i in range(120)]
    b_text = " ".join(words)
    c_text = " ".join(words[:-3] + ["zzz"] + words[-2:])
    op = MinHashDedup(threshold=0.8, bands=4, rows=2, verify=True)
    cfg = op._cfg(op.settings())
    a_text = _text_with_same_signature(b_text, cfg, 90)
    sig, _ = compute_signatures(pl.Series([a_text, b_text, c_text]), cfg)
    keys = K.band_keys(sig.astype(np.uint64), 4, 2)
    assert (keys[0] == keys[1]).all() and (keys[1] == keys[2]).any()  # A is in every B-C bucket
    js = {tuple(sorted(p)): len(set(shingles_py(x)) & set(shingles_py(y))) / len(set(shingles_py(x)) | set(shingles_py(y)))
          for p, (x, y) in {("a", "b"): (a_text, b_text), ("a", "c"): (a_text, c_text),
                            ("b", "c"): (b_text, c_text)}.items()}
    assert js[("a", "b")] < 0.8 and js[("a", "c")] < 0.8 and js[("b", "c")] >= 0.8
    df = pl.DataFrame({"id": ["a", "b", "c"], "text": [a_text, b_text, c_text]})
    ctx = _spill(tmp_path, [df])
    op.fit(ctx)
    op.setup(ctx)
    out = op.apply(df.with_columns(pl.Series(UID, np.arange(3), dtype=pl.UInt64))).sort("id")
    assert out["dup_of"].to_list() == [None, None, "b"]
    assert out["dup_cluster_id"].to_list() == [None, 1, 1]
    assert out["dup_jaccard"][2] == pytest.approx(js[("b", "c")])


def _components(root: np.ndarray) -> set[frozenset[int]]:
    groups: dict[int, set[int]] = {}
    for i, r in enumerate(root):
        groups.setdefault(int(r), set()).add(i)
    return {frozenset(g) for g in groups.values() if len(g) > 1}


def test_bucket_verification_equals_brute_force_closure_and_is_bounded():
    """One big bucket: singletons (some before every group) and groups of near-duplicate sets in shuffled
    input order. The verified components equal the brute-force closure of exact-Jaccard >= t over all
    pairs; on a bucket of unrelated docs the work stays <= members * (verify_heads + 1)."""
    rng = np.random.default_rng(8)
    sets: list[np.ndarray] = []
    for _ in range(6):  # groups: base set with 4 of 100 elements replaced per member (J ~ 0.85-0.92)
        base = rng.integers(0, 2**62, 100, dtype=np.uint64)
        for _ in range(int(rng.integers(2, 6))):
            s = base.copy()
            s[rng.choice(100, 4, replace=False)] = rng.integers(0, 2**62, 4, dtype=np.uint64)
            sets.append(s)
    n_grouped = len(sets)
    sets += [rng.integers(0, 2**62, 100, dtype=np.uint64) for _ in range(8)]  # singletons
    perm = list(rng.permutation(len(sets)))
    perm.insert(0, perm.pop(next(k for k, i in enumerate(perm) if i >= n_grouped)))  # head: a singleton
    sets = [np.unique(sets[i]) for i in perm]
    n = len(sets)
    off = np.concatenate([[0], np.cumsum([len(s) for s in sets])]).astype(np.int64)
    vals = np.concatenate(sets)
    jac = np.array([[len(np.intersect1d(a, b)) / len(np.union1d(a, b)) for b in sets] for a in sets])
    ii, jj = np.nonzero(np.triu(jac >= 0.8, 1))
    truth = _components(K.union_find(n, ii, jj))
    assert len(truth) == 6
    head, member = np.zeros(n - 1, dtype=np.int64), np.arange(1, n, dtype=np.int64)
    parent, size = np.arange(n, dtype=np.int64), np.ones(n, dtype=np.int64)
    K.verify_buckets(parent, size, head, member, vals, off, 0.8, 16)
    assert _components(K.roots(parent)) == truth
    # head-only checking (the old star verification) finds none of these groups
    ok = np.array([jac[0, m] >= 0.8 for m in member])
    assert _components(K.union_find(n, head[ok], member[ok])) == set()
    # bounded work on a large bucket of unrelated docs
    m = 400
    rnd = [np.unique(rng.integers(0, 2**62, 50, dtype=np.uint64)) for _ in range(m)]
    off2 = np.concatenate([[0], np.cumsum([len(s) for s in rnd])]).astype(np.int64)
    parent, size = np.arange(m, dtype=np.int64), np.ones(m, dtype=np.int64)
    n_pass, n_fail = K.verify_buckets(parent, size, np.zeros(m - 1, dtype=np.int64), np.arange(1, m, dtype=np.int64),
                                      np.concatenate(rnd), off2, 0.8, 4)
    assert n_pass == 0 and n_fail <= (m - 1) * 5


def test_bands_times_rows_over_num_perm_fails_at_validation():
    from pydantic import ValidationError

    from curate.filters.minhash import MinHashDedup

    with pytest.raises(ValidationError, match="exceeds num_perm"):
        MinHashDedup(bands=20, rows=10, num_perm=128)


def test_recall_rule_is_the_default_when_verifying():
    """Verification removes false positives, so derived bands/rows aim at recall: S(threshold) >= 0.99 with
    the most rows possible; datasketch's balanced choice stays available as bands_rule='datasketch'."""
    s = MinHashDedup(threshold=0.8).settings()
    assert s["verify"] is True and s["bands_rule"] == "recall"
    assert (s["bands"], s["rows"]) == (21, 6)
    assert s_curve(0.8, s["bands"], s["rows"]) >= 0.99
    for t, n in ((0.7, 128), (0.8, 128), (0.9, 128), (0.85, 256)):
        b, r = recall_param(t, n)
        assert b == n // r and s_curve(t, b, r) >= 0.99
        assert s_curve(t, n // (r + 1), r + 1) < 0.99  # one more row would miss the target
    # explicit datasketch parity, with and without verification
    s = MinHashDedup(threshold=0.8, bands_rule="datasketch").settings()
    assert (s["bands"], s["rows"]) == (9, 13) == optimal_param(0.8, 128)
    s = MinHashDedup(threshold=0.6).settings()  # no verification: balanced rule by default
    assert s["verify"] is False and (s["bands"], s["rows"]) == optimal_param(0.6, 128)
    # explicit bands/rows and presets are untouched by the rule
    assert MinHashDedup(preset="datatrove", verify=True).settings()["bands"] == 14


# ------------------------------------------------------------------------------ candidate spill (issue 14)
def test_spill_candidates_sorted_memory_mapped(tmp_path: Path, shared_data: Path):
    """The candidates gathered file by file into memory-mapped arrays equal the in-memory gather
    (sort by row key, explode the shingle sets) on real signatures, across files whose row keys
    interleave, with a null and an empty set and an empty file; the big arrays are files under the dir."""
    from curate.filters.minhash import _sig_from_binary, _sig_to_binary, _spill_candidates

    cfg = _Cfg(shingle="word", ngram=5, normalize=True, hash="fast", num_perm=16, seed=1, bands=4, rows=4,
               score_column=None, device="cpu")
    texts = pl.Series(_news(shared_data, 60))
    sig, _ = compute_signatures(texts, cfg)
    hv, counts = shingle_hashes(texts, shingle="word", ngram=5, normalize=True, kind=0, seed=7)
    vals, ucounts = K.sorted_unique_per_doc(hv, counts)
    off = np.concatenate([[0], np.cumsum(ucounts)])
    sets = [vals[off[i]:off[i + 1]].tolist() for i in range(len(texts))]
    sets[3], sets[10] = None, []
    uids = np.random.default_rng(0).permutation(len(texts)).astype(np.uint64) * 3 + 5
    df = pl.DataFrame({UID: pl.Series(uids, dtype=pl.UInt64), "id": [f"d{i}" for i in range(len(texts))],
                       "length": pl.Series(range(len(texts)), dtype=pl.UInt32),
                       "score": pl.Series([None] * len(texts), dtype=pl.Float64),
                       "sig": _sig_to_binary(sig), "shingles": pl.Series(sets, dtype=pl.List(pl.UInt64))})
    files = []
    for k, part in enumerate([df[:25], df[25:25], df[25:]]):
        files.append(tmp_path / f"c{k}.parquet")
        part.write_parquet(files[-1])
    got = _spill_candidates(files, 16, True, tmp_path / "mm")
    ref = df.sort(UID)
    assert got.meta.select(UID, "id", "length").equals(ref.select(UID, "id", "length"))
    assert np.array_equal(np.asarray(got.sig), _sig_from_binary(ref["sig"], 16))
    lens = ref["shingles"].list.len().fill_null(0).to_numpy()
    assert np.array_equal(got.off, np.concatenate([[0], np.cumsum(lens)]))
    assert np.array_equal(np.asarray(got.vals), ref["shingles"].explode().drop_nulls().to_numpy())
    assert isinstance(got.sig, np.memmap) and isinstance(got.vals, np.memmap)
    assert (tmp_path / "mm" / "sig.npy").exists() and (tmp_path / "mm" / "vals.npy").exists()
    none = _spill_candidates(files[:1], 16, False, tmp_path / "mm2")  # without verification: no sets
    assert none.off.tolist() == [0] * 26 and len(none.vals) == 0


# ------------------------------------------------------------------------------------------- start-up
_STARTUP_SCRIPT = r'''
import json, sys
import numpy as np
from numba import njit
from curate import Pipeline, read, write
from curate.filters.minhash import MinHashDedup

inp, out = sys.argv[1], sys.argv[2]
Pipeline(read(inp), MinHashDedup(preset="datatrove"), write(out + "/out", format="jsonl")).run(
    work_dir=out + "/work", workers=1, progress=False)
loaded = [m for m in ("scipy.linalg", "pyarrow.compute") if m in sys.modules]


@njit
def corr(x):
    return np.correlate(x, x)  # numba's inner-product choice is the one thing the hidden probe changes


@njit
def dot(x):
    return np.dot(x, x)  # BLAS: imports SciPy when compiled, as without curate


x = np.arange(4.0)
print(json.dumps({"loaded": loaded, "corr": corr(x).tolist(), "dot": float(dot(x)),
                  "scipy_after_dot": "scipy.linalg" in sys.modules}))
'''


def test_minhash_run_loads_neither_scipy_nor_pyarrow_compute(shared_data, tmp_path):
    """numba's first registry load probes BLAS by importing scipy.linalg (0.3-0.4 CPU-s) and an Arrow cast
    imports pyarrow.compute: a MinHash run needs neither (curate/core/jit.py); other numba code in the
    process still gets np.correlate and BLAS np.dot (which imports SciPy when it is compiled)."""
    import subprocess
    import sys

    texts = _news(shared_data, 200)
    texts.append(texts[3])
    pl.DataFrame({"id": [str(i) for i in range(len(texts))], "text": texts}).write_ndjson(tmp_path / "in.jsonl")
    root = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, "-c", _STARTUP_SCRIPT, str(tmp_path / "in.jsonl"), str(tmp_path)],
                       capture_output=True, text=True, cwd=root,
                       env={**__import__("os").environ, "PYTHONPATH": str(root)}, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["loaded"] == []
    assert res["corr"] == [14.0] and res["dot"] == 14.0 and res["scipy_after_dot"]
    kept = pl.read_ndjson(next((tmp_path / "out").rglob("*.jsonl")))
    assert len({"3", "200"} & set(kept["id"].to_list())) == 1  # the planted copy or its original went


_EXIT_SCRIPT = r'''
import atexit, gc, os, sys
atexit.register(lambda: os.write(1, f"frozen at exit {gc.get_freeze_count()}\n".encode()))  # runs last (LIFO)
import numpy as np
from curate.filters import _minhash_kernels as K
K.union_find(3, np.array([0]), np.array([1]))
if sys.argv[1] == "cli":
    from curate import cli
    sys.argv = ["curate", "--version"]
    try:
        cli.main()
    except SystemExit:
        pass
print("frozen during run", gc.get_freeze_count(), flush=True)
'''


def test_the_gc_is_frozen_at_exit_only_in_curates_own_processes():
    """Python's exit-time collections over numba's ~130k registry objects cost 0.3-0.4 CPU-s a process:
    curate/core/jit.py freezes the GC at exit (and only then: during the run it collects as usual), but only
    in processes curate owns (the `curate` command, pool workers): a user's script that loads curate's
    kernels keeps Python's exit collections, which may finalise the user's own objects."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]

    def counts(mode: str) -> tuple[int, int]:
        r = subprocess.run([sys.executable, "-c", _EXIT_SCRIPT, mode], capture_output=True, text=True, cwd=root,
                           env={**__import__("os").environ, "PYTHONPATH": str(root)}, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        during, at_exit = (int(line.split()[-1]) for line in r.stdout.strip().splitlines()[-2:])
        return during, at_exit

    during, at_exit = counts("cli")
    assert during == 0
    assert at_exit > 50_000
    assert counts("script") == (0, 0)
