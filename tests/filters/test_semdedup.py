"""SemDeDup against a brute-force pairwise-cosine reference (same clusters), on vectors and on real text."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from curate import Pipeline, read, read_output, write
from curate.filters.embed import Embed
from curate.filters.semdedup import SemDeDup, kept_fraction, semdedup_vectors
from curate.models.sentence import embeddings_to_numpy


def brute_force(x: np.ndarray, labels: np.ndarray, centroids: np.ndarray, which: str = "hard"):
    """Reference semantics written the slow, obvious way: per cluster, Python's stable sort by cosine
    distance to the centroid (reverse for hard), then M_j = max_{i<j} cos(x_i, x_j) by a double loop."""
    x = x.astype(np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    c = centroids.astype(np.float64)
    c = c / np.linalg.norm(c, axis=1, keepdims=True)
    max_sim = np.full(len(x), np.nan)
    for k in np.unique(labels):
        members = [int(i) for i in np.flatnonzero(labels == k)]
        dist = {i: 1.0 - float(x[i] @ c[k]) for i in members}
        order = sorted(members, key=lambda i: dist[i], reverse=(which == "hard"))
        for jpos in range(1, len(order)):
            j = order[jpos]
            max_sim[j] = max(float(x[i] @ x[j]) for i in order[:jpos])
    return max_sim


def _removed(max_sim: np.ndarray, eps: float) -> set[int]:
    return {int(i) for i in np.flatnonzero(np.nan_to_num(max_sim, nan=-np.inf) > 1 - eps)}


def _planted(n_base: int = 300, dim: int = 24, seed: int = 0) -> np.ndarray:
    """Random directions plus near-copies (small noise) and exact copies."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n_base, dim))
    near = base[:60] + rng.normal(scale=0.03, size=(60, dim))
    exact = base[60:90].copy()
    return np.vstack([base, near, exact]).astype(np.float32)


# ------------------------------------------------------------------------------------ vector core


@pytest.mark.parametrize("which", ["hard", "easy"])
def test_vectors_match_brute_force(which):
    x = _planted()
    res = semdedup_vectors(x, n_clusters=6, which=which, seed=3)
    ref = brute_force(x, res.cluster, res.centroids, which)
    assert np.array_equal(np.isnan(ref), np.isnan(res.max_sim))
    np.testing.assert_allclose(res.max_sim[~np.isnan(ref)], ref[~np.isnan(ref)], atol=1e-5)
    for eps in (0.001, 0.01, 0.05, 0.2, 0.5):
        assert _removed(res.max_sim, eps) == _removed(ref, eps)
    assert len(_removed(ref, 0.01)) >= 90 - 5  # the planted copies (nearly all share their original's cluster)


def test_identical_vectors_collapse_to_one_survivor():
    rng = np.random.default_rng(1)
    groups = rng.normal(size=(20, 16)).astype(np.float32)
    x = np.repeat(groups, 5, axis=0)  # 20 groups of 5 identical vectors
    res = semdedup_vectors(x, n_clusters=4)
    for eps in (1e-4, 0.01, 0.1):
        kept = np.setdiff1d(np.arange(len(x)), sorted(_removed(res.max_sim, eps)))
        group_of_kept = kept // 5
        assert sorted(group_of_kept.tolist()) == list(range(20))  # exactly one survivor per group
        assert np.all(kept % 5 == 0)  # ties in distance keep input order: the first copy survives


@pytest.mark.parametrize("which", ["hard", "easy"])
def test_survivor_is_farthest_or_nearest_to_centroid(which):
    rng = np.random.default_rng(2)
    centers = rng.normal(size=(15, 32))
    x = (np.repeat(centers, 6, axis=0) + rng.normal(scale=0.01, size=(90, 32))).astype(np.float32)
    res = semdedup_vectors(x, n_clusters=3, which=which)
    removed = _removed(res.max_sim, 0.05)
    for g in range(15):
        members = np.arange(6 * g, 6 * g + 6)
        survivors = [i for i in members if i not in removed]
        assert len(survivors) == 1
        d = res.dist[members]
        expect = members[np.argmax(d)] if which == "hard" else members[np.argmin(d)]
        assert survivors[0] == expect


def test_kept_fraction_monotone_in_eps():
    x = _planted(seed=5)
    res = semdedup_vectors(x, n_clusters=5)
    eps = np.linspace(0, 0.99, 60)
    kept = [f for _, f in kept_fraction(res.max_sim, eps)]
    assert all(a >= b for a, b in zip(kept, kept[1:]))
    assert kept[0] > kept[-1]
    # the removal sets are nested, not just their sizes
    sets = [_removed(res.max_sim, e) for e in eps]
    assert all(a <= b for a, b in zip(sets, sets[1:]))


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_batched_faiss_search_equals_unbatched(batch_size):
    x = _planted(seed=7)
    whole = semdedup_vectors(x, n_clusters=4)  # one exact matrix product per cluster
    blocked = semdedup_vectors(x, n_clusters=4, batch_size=batch_size, faiss_min=0)  # faiss, blocks
    assert np.array_equal(whole.cluster, blocked.cluster)
    assert np.array_equal(np.isnan(whole.max_sim), np.isnan(blocked.max_sim))
    np.testing.assert_allclose(np.nan_to_num(whole.max_sim), np.nan_to_num(blocked.max_sim), atol=1e-5)
    for eps in (0.001, 0.01, 0.1):
        assert _removed(whole.max_sim, eps) == _removed(blocked.max_sim, eps)
    # the nearest earlier item agrees wherever the maximum is not a (float) tie
    srt = np.sort(x @ x.T, axis=0)
    clear = (srt[-2] - srt[-3]) > 1e-4
    assert np.mean(whole.nearest[clear] == blocked.nearest[clear]) == 1.0


# ------------------------------------------------------------------------------------ real text


def _mrpc_texts(shared_data: Path) -> list[str]:
    rows = []
    with open(shared_data / "paraphrase/msr_paraphrase_train.txt", encoding="utf-8-sig") as f:
        for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if r and r[0] in ("0", "1"):
                rows.append(r)
    pos = [r for r in rows if r[0] == "1"][:70]
    neg = [r for r in rows if r[0] == "0"][:40]
    texts = [t for r in pos + neg for t in (r[3], r[4])]
    return texts + texts[:30:3]  # 10 exact copies of earlier sentences


@pytest.fixture(scope="module")
def real_run(shared_data, tmp_path_factory):
    """embed -> semdedup(eps 0.1) on ~230 MRPC sentences (paraphrase pairs + exact copies)."""
    root = tmp_path_factory.mktemp("semdedup")
    texts = _mrpc_texts(shared_data)
    src = root / "in.jsonl"
    src.write_text("".join(json.dumps({"id": f"d{i:04d}", "text": t}) + "\n" for i, t in enumerate(texts)))
    cache = root / "cache"
    Pipeline(read(str(src)), Embed(cache_dir=str(cache)), SemDeDup(eps=0.1, n_clusters=4),
             write(str(root / "out"), format="parquet")).run(work_dir=str(root / "w"), workers=1, progress=False)
    kept = read_output(str(root / "out"))
    rej = pl.concat([pl.read_ndjson(p) for p in sorted((root / "w/rejects/semdedup").glob("*.jsonl"))])
    return root, src, cache, texts, kept, rej


def test_real_text_matches_brute_force(real_run):
    root, _, _, texts, kept, rej = real_run
    assert kept.height + rej.height == len(texts)
    allrows = pl.concat([kept.select("id", "embedding", "semdup_cluster"),
                         rej.select("id", pl.col("embedding").cast(pl.List(pl.Float32)), "semdup_cluster")],
                        how="vertical_relaxed").sort("id")
    x = embeddings_to_numpy(allrows["embedding"])
    cents = np.load(next((root / "w/stages").glob("*/state/centroids.npy")))
    ref = brute_force(x, allrows["semdup_cluster"].to_numpy(), cents, "hard")
    ids = allrows["id"].to_list()
    assert {ids[i] for i in _removed(ref, 0.1)} == set(rej["id"].to_list())
    assert rej.height >= 10  # the exact copies at least
    # every exact copy is removed and names an identical earlier text
    by_id = dict(zip(ids, [texts[int(i[1:])] for i in ids]))
    for row in rej.iter_rows(named=True):
        assert row["reason"] == "semantic_duplicate" and row["score"] > 0.9
    copies = [f"d{i:04d}" for i in range(len(texts) - 10, len(texts))]
    removed_copies = rej.filter(pl.col("id").is_in(copies))
    assert removed_copies.height + kept.filter(pl.col("id").is_in(copies)).height == 10
    for row in removed_copies.iter_rows(named=True):
        assert by_id[row["semdup_of"]] == by_id[row["id"]]
    for i in range(0, 30, 3):  # of each exact pair, one survives
        pair = {f"d{i:04d}", f"d{len(texts) - 10 + i // 3:04d}"}
        assert len(pair & set(kept["id"].to_list())) == 1


def test_embeddings_in_fit_reuse_cache_and_agree(real_run, tmp_path):
    root, src, cache, _, kept, rej = real_run
    parts_before = sorted(cache.rglob("part-*.parquet"))
    Pipeline(read(str(src)), SemDeDup(eps=0.1, n_clusters=4, cache_dir=str(cache)),
             write(str(tmp_path / "out"), format="parquet")).run(work_dir=str(tmp_path / "w"), workers=1,
                                                                 progress=False)
    assert sorted(cache.rglob("part-*.parquet")) == parts_before  # nothing re-encoded
    kept2 = read_output(str(tmp_path / "out"))
    assert set(kept2["id"].to_list()) == set(kept["id"].to_list())


def test_report_mode_and_eps_monotone_yaml(real_run, tmp_path):
    root, src, cache, texts, _, rej = real_run
    eps_list = [0.0, 0.02, 0.1, 0.3]
    cfg = {"input": {"path": str(src)},
           "steps": [{"semdedup": {"n_clusters": 4, "cache_dir": str(cache), "report_eps": eps_list}}],
           "output": {"path": str(tmp_path / "out"), "format": "parquet"}, "work_dir": str(tmp_path / "w")}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg))
    Pipeline.from_yaml(tmp_path / "p.yaml").run(workers=1, progress=False)
    out = read_output(str(tmp_path / "out"))
    assert out.height == len(texts)  # report mode removes nothing
    report = json.loads(next((tmp_path / "w/stages").glob("*/state/eps_report.json")).read_text())
    kept = {r["eps"]: r["kept"] for r in report["kept"]}
    fr = [kept[e] for e in sorted(kept)]
    assert all(a >= b for a, b in zip(fr, fr[1:]))
    assert kept[0.1] == len(texts) - rej.height  # the same count the eps=0.1 run removed
    # the max_sim column carries the same decision as the removing run
    assert int((out["semdup_max_sim"] > 0.9).sum()) == rej.height


def test_semdedup_model2vec_backend_in_fit(shared_data, tmp_path):
    """semdedup embedding in fit with backend model2vec (the static model distilled from MiniLM, cached):
    256-d vectors, rows in = kept + rejected, and every exact copy pair loses exactly one member."""
    pytest.importorskip("model2vec")
    texts = _mrpc_texts(shared_data)
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": f"d{i:04d}", "text": t}) + "\n" for i, t in enumerate(texts)))
    Pipeline(read(str(src)), SemDeDup(eps=0.01, n_clusters=4, backend="model2vec"),
             write(str(tmp_path / "out"), format="parquet")).run(work_dir=str(tmp_path / "w"), workers=1,
                                                                progress=False)
    kept = read_output(str(tmp_path / "out"))
    rej = pl.concat([pl.read_ndjson(p) for p in sorted((tmp_path / "w/rejects/semdedup").glob("*.jsonl"))])
    assert kept.height + rej.height == len(texts)
    cache = list((tmp_path / "w/cache/embeddings").glob("*-model2vec256"))
    assert len(cache) == 1  # its own embedding-cache key, apart from MiniLM's
    kept_ids = set(kept["id"].to_list())
    for i in range(0, 30, 3):
        pair = {f"d{i:04d}", f"d{len(texts) - 10 + i // 3:04d}"}
        assert len(pair & kept_ids) == 1
