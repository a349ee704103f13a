"""Coresets: k-center 2-approximation and facility-location (1 - 1/e) bound against brute force on tiny
sets, lazy greedy = plain greedy, diversity vs random on real text, and both selectors in the Pipeline."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import polars as pl
import pytest

from curate import Pipeline, read, read_output, write
from curate.selectors.coresets import (
    FacilityLocation,
    KCenterCoreset,
    diversity,
    facility_location_greedy,
    facility_value,
    kcenter_greedy,
)


def _radius(X: np.ndarray, S) -> float:
    D = np.sqrt(((X[:, None, :] - X[None, list(S), :]) ** 2).sum(-1))
    return float(D.min(1).max())


@pytest.mark.parametrize("seed", range(6))
def test_kcenter_greedy_is_a_2_approximation(seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(10, 2)) * rng.uniform(0.5, 3, size=(1, 2))
    for k in (2, 3, 4):
        opt = min(_radius(X, S) for S in itertools.combinations(range(10), k))
        for first in range(10):
            chosen, gains, final = kcenter_greedy(X, k=k, first=first)
            assert len(chosen) == k and len(set(chosen.tolist())) == k
            r = _radius(X, chosen)
            assert r == pytest.approx(final.max(), abs=1e-9)
            assert r <= 2 * opt + 1e-9
            assert np.all(np.diff(gains) <= 1e-12)  # greedy gains never increase
            assert final.max() <= gains[-1] + 1e-12


def _plain_greedy(X, k, ground=None):
    chosen: list[int] = []
    for _ in range(k):
        base = facility_value(X, np.array(chosen, dtype=np.int64), ground)
        gains = [facility_value(X, np.array(chosen + [i]), ground) - base if i not in chosen else -1.0
                 for i in range(len(X))]
        chosen.append(int(np.argmax(gains)))
    return chosen


@pytest.mark.parametrize("seed", range(5))
def test_facility_location_lazy_greedy_matches_greedy_and_bound(seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(11, 3))
    ground = np.array([0, 2, 3, 5, 7, 8, 10]) if seed % 2 else None
    for k in (2, 3, 4):
        chosen, gains, final = facility_location_greedy(X, k=k, ground=ground)
        plain = _plain_greedy(X, k, ground)
        # same objective after every step (exactly tied gains may pick different points)
        for j in range(1, k + 1):
            assert facility_value(X, chosen[:j], ground) == pytest.approx(
                facility_value(X, np.array(plain[:j]), ground), abs=1e-9)
        f = facility_value(X, chosen, ground)
        assert gains.sum() == pytest.approx(f, abs=1e-9)
        opt = max(facility_value(X, np.array(S), ground) for S in itertools.combinations(range(11), k))
        assert f >= (1 - 1 / math.e) * opt - 1e-12
        assert f <= opt + 1e-12
        # final marginal gains: 0 for chosen points, never above the last gain (submodularity)
        assert np.allclose(final[chosen], 0.0) and final.max() <= gains[-1] + 1e-12


def test_stop_rules():
    X = np.random.default_rng(3).normal(size=(200, 4))
    chosen, gains, final = kcenter_greedy(X, radius=1.5)
    assert final.max() <= 1.5 and gains[-1] > 1.5
    tokens = np.arange(1, 201, dtype=float)
    chosen, _, _ = kcenter_greedy(X, k=50, tokens=tokens, budget=300)
    assert tokens[chosen].sum() <= 300
    chosen, gains, _ = facility_location_greedy(X, min_gain=0.5)
    assert gains.min() >= 0.5


def _reviews(shared_data, n):
    p = shared_data / "reviews" / "aclImdb_v1.jsonl.gz"
    if not p.exists():
        pytest.skip(f"{p} not found")
    import gzip

    with gzip.open(p, "rt") as f:
        lines = [next(f) for _ in range(4 * n)]
    df = pl.read_ndjson("".join(lines).encode()).select("text", "label")
    return df.sample(n, seed=0).with_row_index("i").with_columns(id=pl.col("i").cast(pl.String))


def test_coresets_more_diverse_than_random_in_pipeline(shared_data, tmp_path):
    df = _reviews(shared_data, 1200)
    path = tmp_path / "reviews.jsonl"
    df.select("id", "text", "label").write_ndjson(path)
    Pipeline(read(str(path)), KCenterCoreset(top_k=120, seed=1), write(str(tmp_path / "kc"))).run(
        work_dir=str(tmp_path / "wd_kc"), workers=1, progress=False)
    out = read_output(tmp_path / "kc")
    assert out.height == 120 and "kcenter_gain" in out.columns
    rep = json.loads(next((tmp_path / "wd_kc").rglob("diversity.json")).read_text())
    sel, rnd = rep["selected"], rep["random"]
    assert sel["size"] == rnd["size"] == 120 and rep["features"] == "hashed"
    assert sel["coverage_radius"] < rnd["coverage_radius"]
    assert sel["min_pairwise"] > rnd["min_pairwise"] and sel["mean_pairwise"] > rnd["mean_pairwise"]

    yaml_path = tmp_path / "p.yaml"
    yaml_path.write_text(f"""
input: {{path: {path}}}
steps:
  - facility_location: {{fraction: 0.1}}
output: {{path: {tmp_path / 'fl'}}}
work_dir: {tmp_path / 'wd_fl'}
""")
    Pipeline.from_yaml(yaml_path).run(workers=1, progress=False)
    out = read_output(tmp_path / "fl")
    assert out.height == 120 and "facility_gain" in out.columns
    rep = json.loads(next((tmp_path / "wd_fl").rglob("diversity.json")).read_text())
    assert rep["selected"]["mean_coverage"] < rep["random"]["mean_coverage"]
    rejects = pl.concat([pl.read_ndjson(f) for f in (tmp_path / "wd_fl" / "rejects").rglob("*.jsonl")])
    assert rejects.height == 1080 and set(rejects["reason"]) == {"not_selected"}


def test_coreset_token_budget_and_size_required(shared_data, tmp_path):
    df = _reviews(shared_data, 300)
    path = tmp_path / "r.jsonl"
    df.select("id", "text").write_ndjson(path)
    Pipeline(read(str(path)), KCenterCoreset(budget_tokens=5000), write(str(tmp_path / "o"))).run(
        work_dir=str(tmp_path / "wd"), workers=1, progress=False)
    out = read_output(tmp_path / "o")
    assert 0 < out.height < 300 and out["text"].str.count_matches(r"\S+").sum() <= 5000
    with pytest.raises(ValueError, match="needs a size"):
        FacilityLocation()


def test_diversity_of_known_points():
    X = np.array([[0.0, 0], [1, 0], [0, 1], [5, 5]])
    d = diversity(X, np.array([0, 3]))
    assert d["min_pairwise"] == pytest.approx(math.sqrt(50))
    assert d["coverage_radius"] == pytest.approx(1.0)
    assert d["mean_coverage"] == pytest.approx(0.5)
