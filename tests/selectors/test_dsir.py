"""DSIR: features bit-for-bit against the reference's hashing, log weights by brute force, Gumbel top-k
sampling frequencies, and importance resampling on real data (GSM8K target, 20news + books + GSM8K raw)."""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from curate import Pipeline, read, read_output, write
from curate.selectors.dsir import (
    DSIR,
    EPS,
    gumbel_noise,
    hashed_ngram_features,
    log_importance_weights,
)

_WORDPUNCT = re.compile(r"\w+|[^\w\s]+")  # nltk.tokenize.WordPunctTokenizer's pattern


def ref_counts(text: str, n: int = 2, m: int = 10_000) -> np.ndarray:
    """p-lambda/dsir ``get_ngram_counts`` with the wordpunct tokenizer, in plain Python + hashlib."""
    words = _WORDPUNCT.findall(text.lower())
    c = np.zeros(m, np.int64)
    for i in range(1, n + 1):
        for j in range(len(words) - i + 1):
            c[int(hashlib.sha256(" ".join(words[j:j + i]).encode("utf-8")).hexdigest(), 16) % m] += 1
    return c


def _lines(path: Path, n: int) -> list[dict]:
    op = gzip.open if path.suffix == ".gz" else open
    out = []
    with op(path, "rt", encoding="utf-8") as f:
        for line in f:
            out.append(json.loads(line))
            if len(out) >= n:
                break
    return out


@pytest.fixture(scope="module")
def corpus(shared_data: Path, tmp_path_factory) -> dict:
    """raw = 1200 newsgroup posts + 1200 book paragraphs + 300 held-out GSM8K test questions;
    target = the 7473 GSM8K train questions."""
    d = tmp_path_factory.mktemp("dsir")
    news = [r["text"] for r in _lines(shared_data / "web/20news-bydate.jsonl.gz", 1200)]
    books = _lines(shared_data / "books/gutenberg_slice.jsonl.gz", 6)
    paras = [p.strip() for b in books for p in re.split(r"\n\s*\n", b["text"]) if len(p.split()) >= 40][:1200]
    gsm = [r["question"] for r in _lines(shared_data / "instructions/gsm8k/test.jsonl", 300)]
    rows = ([{"id": f"news-{i}", "src": "news", "text": t} for i, t in enumerate(news)]
            + [{"id": f"book-{i}", "src": "book", "text": t} for i, t in enumerate(paras)]
            + [{"id": f"gsm-{i}", "src": "gsm", "text": t} for i, t in enumerate(gsm)])
    rng = np.random.default_rng(0)
    rows = [rows[i] for i in rng.permutation(len(rows))]
    raw = d / "raw.jsonl"
    raw.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return {"dir": d, "raw": raw, "rows": rows, "target": shared_data / "instructions/gsm8k/train.jsonl"}


def _run(corpus: dict, name: str, **params) -> tuple[pl.DataFrame, Path]:
    work = corpus["dir"] / f"work-{name}"
    out = corpus["dir"] / f"out-{name}"
    op = DSIR(target=str(corpus["target"]), target_text_field="question", **params)
    Pipeline(read(str(corpus["raw"])), op, write(str(out))).run(work_dir=str(work), workers=1, progress=False)
    return read_output(str(out)), work


def _state(work: Path, name: str) -> Path:
    return next(work.rglob(f"state/{name}"))


# ------------------------------------------------------------------------------------------- features
def test_features_match_reference_hashing_on_real_text(corpus):
    texts = [r["text"] for r in corpus["rows"][:150]] + ["Café déjà-vu!!! naïve ... 3.14 ü", "", "one"]
    for n, m in ((2, 10_000), (3, 997)):
        buckets, off = hashed_ngram_features(pl.Series(texts), ngrams=n, num_buckets=m)
        for i, t in enumerate(texts):
            got = np.bincount(buckets[off[i]:off[i + 1]], minlength=m)
            assert np.array_equal(got, ref_counts(t, n, m)), (n, m, t[:80])


def test_log_weight_toy_value_and_brute_force():
    # algorithms.md 6.2: p=(.5,.3,.2), q=(.2,.3,.5), c=(2,1,0) -> log w = 2 ln 2.5
    p, q = np.array([0.5, 0.3, 0.2]), np.array([0.2, 0.3, 0.5])
    log_diff = np.log(p + EPS) - np.log(q + EPS)
    lw = log_importance_weights(np.array([0, 0, 1]), np.array([0, 3]), log_diff)
    assert lw[0] == pytest.approx(2 * math.log(2.5), abs=1e-6)
    rng = np.random.default_rng(1)
    texts = ["the cat sat on the mat .", "Janet has 3 apples and buys 5 more; how many?", "x"]
    log_diff = rng.normal(size=10_000)
    b, off = hashed_ngram_features(pl.Series(texts))
    got = log_importance_weights(b, off, log_diff)
    want = [float(ref_counts(t) @ log_diff) for t in texts]
    assert np.allclose(got, want, rtol=1e-12, atol=1e-9)


def test_gumbel_top1_frequencies_follow_the_weights():
    # Gumbel-max: P(argmax(log w + G) = i) = w_i / sum w; over seeds, with keys from the row ids
    w = np.array([0.1, 0.2, 0.7])
    seeds = np.arange(200_000, dtype=np.uint64)[:, None]
    keys = np.log(w)[None, :] + gumbel_noise(np.array([11, 12, 13], dtype=np.uint64)[None, :], seeds)
    freq = np.bincount(keys.argmax(axis=1), minlength=3) / seeds.shape[0]
    assert np.allclose(freq, w, atol=0.005), freq
    g = gumbel_noise(np.arange(100_000, dtype=np.uint64), 7)
    assert g.mean() == pytest.approx(np.euler_gamma, abs=0.02)  # Gumbel(0,1) mean
    assert g.var() == pytest.approx(math.pi**2 / 6, rel=0.03)


# --------------------------------------------------------------------------------------- on real data
def _kl(p_counts: np.ndarray, q_counts: np.ndarray) -> float:
    p = p_counts / p_counts.sum()
    q = (q_counts + 0.5) / (q_counts + 0.5).sum()
    nz = p > 0
    return float(np.sum(p[nz] * np.log(p[nz] / q[nz])))


def _counts(texts: list[str]) -> np.ndarray:
    b, _ = hashed_ngram_features(pl.Series(texts))
    return np.bincount(b, minlength=10_000)


def test_resampling_moves_features_toward_target(corpus):
    k = 300
    out, work = _run(corpus, "a", top_k=k, min_example_length=10, seed=3)
    assert out.height == k
    src = dict((r["id"], r["src"]) for r in corpus["rows"])
    share = np.mean([src[i] == "gsm" for i in out["id"]])
    base = 300 / len(corpus["rows"])
    assert share > 0.8 > 5 * base, share  # enriched in target-like documents
    target = [r["question"] for r in _lines(corpus["target"], 10_000)]
    p = _counts(target)
    kl_raw = _kl(p, _counts([r["text"] for r in corpus["rows"]]))
    kl_sel = _kl(p, _counts(out["text"].to_list()))
    # and a random subset of the same size, so the drop is not an artefact of the smaller sample
    rnd = np.random.default_rng(0).choice(len(corpus["rows"]), k, replace=False)
    kl_rnd = _kl(p, _counts([corpus["rows"][i]["text"] for i in rnd]))
    assert kl_sel < 0.5 * kl_raw and kl_sel < 0.5 * kl_rnd, (kl_sel, kl_raw, kl_rnd)
    # the stored score is the reference's log importance weight
    log_diff = np.load(_state(work, "log_diff.npy"))
    sample = out.head(5)
    for t, lw in zip(sample["text"], sample["dsir_logw"]):
        assert lw == pytest.approx(float(ref_counts(t) @ log_diff), rel=1e-9, abs=1e-6)
    # and the target distribution is the normalised reference counts of the whole target file
    assert np.allclose(np.load(_state(work, "target_probs.npy")), p / p.sum())


def test_deterministic_under_seed_and_k_respected(corpus):
    a, _ = _run(corpus, "s1", top_k=200, min_example_length=10, seed=5)
    b, _ = _run(corpus, "s1b", top_k=200, min_example_length=10, seed=5)
    c, _ = _run(corpus, "s2", top_k=200, min_example_length=10, seed=6)
    assert a.height == b.height == c.height == 200
    assert sorted(a["id"]) == sorted(b["id"])
    assert sorted(a["id"]) != sorted(c["id"])  # a real sample, not a fixed top-k


def test_deterministic_top_k_and_min_length(corpus):
    out, work = _run(corpus, "topk", fraction=0.05, resample=False, min_example_length=60)
    n = len(corpus["rows"])
    assert out.height == round(0.05 * n)
    sel = pl.read_parquet(_state(work, "selection.parquet"))
    valid = sel.filter(pl.col("dsir_logw").is_not_null())
    best = valid.sort("dsir_logw", descending=True).head(out.height)
    assert set(best["__uid"]) == set(sel.filter(pl.col("__selected"))["__uid"])
    assert (out["text"].str.count_matches(r"\w+|[^\w\s]+") >= 60).all()  # shorter docs never selected


def test_same_distribution_gives_zero_weights(corpus, tmp_path):
    # p = q  =>  log w = 0 for every document (target = the raw data itself, fitted on all tokens)
    work, out = tmp_path / "w", tmp_path / "o"
    op = DSIR(target=str(corpus["raw"]), num_tokens_to_fit="all", min_example_length=0)
    Pipeline(read(str(corpus["raw"])), op, write(str(out))).run(work_dir=str(work), workers=1, progress=False)
    got = read_output(str(out))
    assert got.height == len(corpus["rows"])
    assert got["dsir_logw"].abs().max() < 1e-6


@pytest.mark.slow
def test_same_selection_with_shards_and_two_workers(corpus):
    # per-shard raw fitting and scoring in spawned workers: the result does not depend on the worker count
    def run(name: str, workers: int) -> list[str]:
        out, work = corpus["dir"] / f"out-{name}", corpus["dir"] / f"work-{name}"
        op = DSIR(target=str(corpus["target"]), target_text_field="question", top_k=150, min_example_length=10,
                  seed=2)
        Pipeline(read(str(corpus["raw"]), shard_mb=1), op, write(str(out))).run(
            work_dir=str(work), workers=workers, progress=False)
        assert len(list(work.rglob("dsir-counts/*.npy"))) > 1  # really several shards
        return sorted(read_output(str(out))["id"])

    assert run("w1", 1) == run("w2", 2)
