"""Data valuation: closed forms and estimators against exact enumeration; mislabel detection on real SMS
spam; the ``shapley`` selector through the real Pipeline (Python and YAML)."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from curate import Pipeline, read, read_output, write
from curate.selectors import _valuation as V
from curate.selectors.shapley import Shapley

# ---------------------------------------------------------------------------------------------------
# independent oracles (plain Python, no code shared with the implementation)


def brute_shapley(n: int, U) -> np.ndarray:
    phi = np.zeros(n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for s in range(n):
            w = math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n)
            for S in itertools.combinations(others, s):
                phi[i] += w * (U(set(S) | {i}) - U(set(S)))
    return phi


def knn_game(X, y, Xv, yv, K):
    """Jia et al.'s KNN utility by definition: mean over validation points of the top-K label matches / K."""
    orders = [sorted(range(len(X)), key=lambda i, t=t: (float(((X[i] - Xv[t]) ** 2).sum()), i))
              for t in range(len(Xv))]

    def U(S):
        tot = 0.0
        for t, order in enumerate(orders):
            top = [i for i in order if i in S][:K]
            tot += sum(float(y[i] == yv[t]) for i in top) / K
        return tot / len(Xv)

    return U


def _toy(seed, n=8, T=3, d=2, classes=2):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    Xv = rng.normal(size=(T, d))
    y = rng.integers(0, classes, n)
    yv = rng.integers(0, classes, T)
    return X, y, Xv, yv


def auc(scores_pos: np.ndarray, scores_neg: np.ndarray) -> float:
    """Mann-Whitney AUC: P(score of a positive > score of a negative), ties counted half."""
    s = np.concatenate([scores_pos, scores_neg])
    r = pl.Series(s).rank("average").to_numpy()
    n1, n0 = len(scores_pos), len(scores_neg)
    return float((r[:n1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


# ---------------------------------------------------------------------------------------------------
# exact KNN-Shapley


@pytest.mark.parametrize("seed,K", [(1, 1), (2, 3), (3, 3), (4, 5), (5, 10)])
def test_knn_shapley_equals_brute_force_enumeration(seed, K):
    X, y, Xv, yv = _toy(seed, n=8, T=3, classes=3 if seed % 2 else 2)
    U = knn_game(X, y, Xv, yv, K)
    closed = V.knn_shapley(X, y, Xv, yv, k=K)
    brute = brute_shapley(len(X), U)
    assert np.abs(closed - brute).max() < 1e-12
    # efficiency: sum = U(N) - U(empty), U(empty) = 0
    assert closed.sum() == pytest.approx(U(set(range(len(X)))), abs=1e-12)


def test_knn_utility_and_incremental_prefixes_match_definition():
    X, y, Xv, yv = _toy(7, n=10, T=4)
    U = knn_game(X, y, Xv, yv, 3)
    u = V.KNNUtility(X, y, Xv, yv, k=3)
    rng = np.random.default_rng(0)
    for _ in range(5):
        S = np.flatnonzero(rng.random(10) < 0.5)
        assert u(S) == pytest.approx(U(set(S.tolist())), abs=1e-12)
        perm = rng.permutation(10)
        pref = u.prefix_scores(perm)
        assert np.allclose(pref, [U(set(perm[:j].tolist())) for j in range(11)], atol=1e-12)


def test_knn_symmetry_for_cloned_point():
    X, y, Xv, yv = _toy(11, n=7, T=4)
    X = np.vstack([X, X[2]])
    y = np.append(y, y[2])
    closed = V.knn_shapley(X, y, Xv, yv, k=3)
    assert closed[2] == pytest.approx(closed[7], abs=1e-15)
    exact = V.exact_semivalue(V.KNNUtility(X, y, Xv, yv, k=3), len(X))
    assert exact[2] == pytest.approx(exact[7], abs=1e-12)
    assert np.abs(exact - closed).max() < 1e-12


# ---------------------------------------------------------------------------------------------------
# semivalue axioms on games with known answers


def test_additive_game_every_semivalue_returns_the_weights():
    w = np.random.default_rng(0).normal(size=6)

    def U(S):
        return float(w[np.asarray(S, dtype=np.int64)].sum())

    for kind in ("shapley", "banzhaf", "beta"):
        assert np.abs(V.exact_semivalue(U, 6, kind=kind, alpha=16, beta=1) - w).max() < 1e-12
    assert np.abs(brute_shapley(6, lambda S: float(sum(w[j] for j in S))) - w).max() < 1e-12
    tmc = V.tmc_shapley(U, 6, truncation=None, max_iterations=20, convergence=1e-9)
    assert np.abs(tmc.values - w).max() < 1e-12  # every permutation's marginal of j is exactly w_j
    beta = V.beta_shapley(U, 6, alpha=16, beta=1, truncation=None, max_iterations=4000, convergence=1e-9)
    assert np.abs(beta.values - w).max() < 0.1  # unbiased, weighted permutation sampling
    msr = V.msr_banzhaf(U, 6, n_samples=20000, seed=1)
    assert np.abs(msr.values - w).max() < 4 * msr.stderr.max() + 1e-9


def test_null_player_gets_zero():
    X, y, Xv, yv = _toy(5, n=7, T=3)
    base = V.KNNUtility(X, y, Xv, yv, k=2)
    null = 3

    def U(S):
        S = np.asarray(S, dtype=np.int64)
        return base(S[S != null])

    for kind in ("shapley", "banzhaf", "beta"):
        assert V.exact_semivalue(U, 7, kind=kind, alpha=16, beta=1)[null] == 0.0
    assert V.tmc_shapley(U, 7, max_iterations=50).values[null] == 0.0


def test_efficiency_and_linearity():
    X, y, Xv, yv = _toy(9, n=8, T=3)
    U1 = V.KNNUtility(X, y, Xv, yv, k=2)
    U2 = V.KNNUtility(X, y, Xv, yv, k=4)
    full, empty = np.arange(8), np.zeros(0, np.int64)
    e1 = V.exact_semivalue(U1, 8)
    assert e1.sum() == pytest.approx(U1(full) - U1(empty), abs=1e-12)
    e2 = V.exact_semivalue(U2, 8)
    e12 = V.exact_semivalue(lambda S: U1(S) + U2(S), 8)
    assert np.abs(e12 - (e1 + e2)).max() < 1e-12
    # permutation sampling without truncation telescopes: efficiency holds exactly for any sample size
    t = V.tmc_shapley(U1, 8, truncation=None, max_iterations=37, convergence=1e-9)
    assert t.values.sum() == pytest.approx(U1(full) - U1(empty), abs=1e-12)
    # cluster Shapley spreads values, so the sum is preserved too
    c = V.cluster_shapley(U1, np.array([0, 0, 1, 1, 2, 2, 3, 3]), 4)
    assert c.values.sum() == pytest.approx(U1(full) - U1(empty), abs=1e-12)


def test_beta_weights():
    assert np.allclose(V.beta_weights(9, 1, 1), 1.0)
    w = V.beta_weights(9, 16, 1)
    assert w.mean() == pytest.approx(1.0, abs=1e-12) and np.all(np.diff(w) < 0)  # emphasises small sets
    X, y, Xv, yv = _toy(3, n=7)
    u = V.KNNUtility(X, y, Xv, yv, k=3)
    assert np.allclose(V.exact_semivalue(u, 7, kind="beta", alpha=1, beta=1),
                       V.exact_semivalue(u, 7, kind="shapley"), atol=1e-14)


def test_samplers_converge_to_exact_values():
    X, y, Xv, yv = _toy(21, n=9, T=5)
    u = V.KNNUtility(X, y, Xv, yv, k=3)
    exact = V.exact_semivalue(u, 9)
    errs = [np.abs(V.tmc_shapley(u, 9, truncation=None, max_iterations=T, convergence=1e-9, seed=3).values
                   - exact).mean() for T in (100, 6400)]
    assert errs[1] < errs[0] / 3  # error ~ 1/sqrt(T): 8x expected
    assert errs[1] < 5e-3
    bex = V.exact_semivalue(u, 9, kind="beta", alpha=4, beta=1)
    best = V.beta_shapley(u, 9, alpha=4, beta=1, truncation=None, max_iterations=6400, convergence=1e-9)
    assert np.abs(best.values - bex).max() < 0.02
    banz = V.exact_semivalue(u, 9, kind="banzhaf")
    msr = V.msr_banzhaf(u, 9, n_samples=20000, seed=2)
    assert np.abs(msr.values - banz).max() < 4 * msr.stderr.max()
    assign = np.array([0, 0, 1, 1, 2, 2, 3, 4, 4])
    exact_cl = V.cluster_shapley(u, assign, 5)
    tmc_cl = V.cluster_shapley(u, assign, 5, exact_below=0, truncation=None, max_iterations=4000, convergence=1e-9)
    assert np.abs(exact_cl.values - tmc_cl.values).max() < 0.01


def test_tmc_truncation_and_ghorbani_convergence():
    X, y, Xv, yv = _toy(4, n=40, T=20, d=3)
    u = V.KNNUtility(X, y, Xv, yv, k=5)
    res = V.tmc_shapley(u, 40, max_iterations=5000, seed=0)
    assert res.converged and res.iterations % 100 == 0 and res.iterations < 5000
    exact = V.knn_shapley(X, y, Xv, yv, k=5)
    assert np.corrcoef(res.values, exact)[0, 1] > 0.95
    # generic (non-incremental) path gives the same numbers as the incremental one
    g = V.tmc_shapley(lambda S: u(S), 40, max_iterations=100, convergence=1e-9, seed=0)
    f = V.tmc_shapley(u, 40, max_iterations=100, convergence=1e-9, seed=0)
    assert np.allclose(g.values, f.values, atol=1e-12)
    assert g.utility_calls < 2 + 100 * 40  # truncation skipped evaluations


# ---------------------------------------------------------------------------------------------------
# real data: mislabelled SMS get the lowest values


def _sms(shared_data: Path, n: int) -> pl.DataFrame:
    p = shared_data / "spam" / "SMSSpamCollection"
    if not p.exists():
        pytest.skip(f"{p} not found")
    df = pl.read_csv(p, separator="\t", has_header=True, new_columns=["label", "text"], quote_char=None)
    return df.sample(n, seed=0, shuffle=True)


def _flip(df: pl.DataFrame, frac: float, seed: int) -> tuple[pl.DataFrame, np.ndarray]:
    flip = np.random.default_rng(seed).random(df.height) < frac
    lab = df["label"].to_numpy()
    noisy = np.where(flip, np.where(lab == "spam", "ham", "spam"), lab)
    return df.with_columns(label=pl.Series(noisy), flipped=pl.Series(flip)), flip


def test_mislabelled_points_get_lowest_values(shared_data):
    from curate.selectors._features import HashedFeatures

    df, flip = _flip(_sms(shared_data, 2400), 0.1, seed=1)
    tr, va = slice(0, 2000), slice(2000, None)
    hf = HashedFeatures(1024).fit(df["text"][tr])
    X, Xv = hf.transform(df["text"][tr]), hf.transform(df["text"][va])
    clean = _sms(shared_data, 2400)["label"].to_numpy()
    y = (df["label"].to_numpy() == "spam").astype(int)
    yv = (clean[va] == "spam").astype(int)  # validation labels are clean
    f = flip[tr]
    knn = V.knn_shapley(X, y[tr], Xv, yv, k=10)
    auc_knn = auc(-knn[f], -knn[~f])
    tmc = V.tmc_shapley(V.KNNUtility(X, y[tr], Xv, yv, k=10), 2000, max_iterations=300, seed=0)
    auc_tmc = auc(-tmc.values[f], -tmc.values[~f])
    print(f"mislabel detection AUC on SMS spam (10% flipped, n=2000): knn {auc_knn:.3f}, tmc {auc_tmc:.3f}")
    assert auc_knn > 0.9
    assert auc_tmc > 0.85


def test_logistic_utility_flags_flipped_labels():
    """Ghorbani's setting (logistic-regression accuracy) on two Gaussian blobs, the labels of the 3 points
    deepest inside their class flipped: Banzhaf (MSR) and TMC-Shapley rank them lowest."""
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 10)
    X = rng.normal(size=(20, 2)) + 1.5 * np.where(y[:, None] == 1, 1.0, -1.0)
    yv = np.repeat([0, 1], 50)
    Xv = rng.normal(size=(100, 2)) + 1.5 * np.where(yv[:, None] == 1, 1.0, -1.0)
    flip = np.zeros(20, bool)
    flip[np.argsort(-np.abs(X.sum(1)))[:3]] = True
    y = np.where(flip, 1 - y, y)
    lr = V.ClassifierUtility(X, y, Xv, yv, model="logistic")
    banz = V.msr_banzhaf(lr, 20, n_samples=256, seed=0)
    tmc = V.tmc_shapley(lr, 20, max_iterations=15, seed=0)
    for vals in (banz.values, tmc.values):
        assert auc(-vals[flip], -vals[~flip]) > 0.9


# ---------------------------------------------------------------------------------------------------
# the operator through the real pipeline


def _write_sms(shared_data: Path, tmp: Path, n: int) -> tuple[Path, pl.DataFrame]:
    df, _ = _flip(_sms(shared_data, n), 0.1, seed=2)
    df = df.with_row_index("i").with_columns(id=pl.col("i").cast(pl.String))
    p = tmp / "sms.jsonl"
    df.select("id", "text", "label", "flipped").write_ndjson(p)
    return p, df


def test_shapley_pipeline_python_and_yaml(shared_data, tmp_path):
    path, df = _write_sms(shared_data, tmp_path, 1500)
    res = Pipeline(read(str(path)), Shapley(method="knn", label_field="label", k=10, fraction=0.9),
                   write(str(tmp_path / "out_py"))).run(work_dir=str(tmp_path / "wd_py"), workers=1, progress=False)
    out_py = read_output(tmp_path / "out_py")
    n_val = round(0.1 * 1500)
    assert out_py.height == n_val + round(0.9 * (1500 - n_val))
    assert out_py["shapley_value"].null_count() == n_val  # held-out rows kept, not valued
    rejects = pl.concat([pl.read_ndjson(f) for f in (tmp_path / "wd_py" / "rejects").rglob("*.jsonl")])
    assert set(rejects["reason"]) == {"not_selected"}
    dropped = df.filter(pl.col("id").is_in(rejects["id"].to_list()))
    assert dropped["flipped"].mean() > 0.5  # rejects are mostly the flipped labels (base rate 10%)
    assert res is not None

    yaml_path = tmp_path / "p.yaml"
    yaml_path.write_text(f"""
input: {{path: {path}}}
steps:
  - shapley: {{method: knn, label_field: label, k: 10, fraction: 0.9}}
output: {{path: {tmp_path / 'out_yaml'}}}
work_dir: {tmp_path / 'wd_yaml'}
""")
    Pipeline.from_yaml(yaml_path).run(workers=1, progress=False)
    out_y = read_output(tmp_path / "out_yaml")
    key = ["id", "shapley_value"]
    assert out_y.select(key).sort("id").equals(out_py.select(key).sort("id"))
    summary = json.loads(next((tmp_path / "wd_yaml").rglob("valuation.json")).read_text())
    assert summary["method"] == "knn" and summary["features"] == "hashed" and summary["players"] == 1350


def _mean_accuracy_util(Xtr, ytr, Xv, yv):
    """A user utility: nearest-centroid accuracy."""
    classes = np.unique(ytr)
    cents = np.stack([Xtr[ytr == c].mean(0) for c in classes])
    pred = classes[((Xv[:, None, :] - cents[None]) ** 2).sum(-1).argmin(1)]
    return float((pred == yv).mean())


@pytest.mark.parametrize("method,extra", [("tmc", {"max_iterations": 100}), ("beta", {"max_iterations": 100}),
                                          ("banzhaf", {"n_samples": 200}),
                                          ("cluster", {"n_clusters": 10}),
                                          ("cluster", {"n_clusters": 30, "max_iterations": 200}),
                                          ("tmc", {"utility": _mean_accuracy_util, "max_iterations": 20})])
def test_shapley_methods_in_pipeline(shared_data, tmp_path, method, extra):
    path, df = _write_sms(shared_data, tmp_path, 600)
    op = Shapley(method=method, label_field="label", fraction=0.8, **extra)
    Pipeline(read(str(path)), op, write(str(tmp_path / "out"))).run(
        work_dir=str(tmp_path / "wd"), workers=1, progress=False)
    out = read_output(tmp_path / "out")
    summary = json.loads(next((tmp_path / "wd").rglob("valuation.json")).read_text())
    assert summary["players"] == 540
    valued = out.filter(pl.col("shapley_value").is_not_null())
    assert out.height == 60 + 432 and valued.height == 432
    if method in ("cluster", "tmc") and "utility" not in extra:
        # spread / telescoped values keep the total within truncation of U(N) - U(empty)
        assert summary["sum_values"] > 0
    if method == "cluster":
        # members of one cluster share one value
        assert valued["shapley_value"].n_unique() <= extra["n_clusters"] + 1


def test_shapley_validation_file_and_errors(shared_data, tmp_path):
    path, df = _write_sms(shared_data, tmp_path, 500)
    val = _sms(shared_data, 2000).tail(200).with_row_index("i").with_columns(id=pl.col("i").cast(pl.String))
    vpath = tmp_path / "val.jsonl"
    val.select("id", "text", "label").write_ndjson(vpath)
    Pipeline(read(str(path)), Shapley(label_field="label", validation=str(vpath), top_k=100),
             write(str(tmp_path / "out"))).run(work_dir=str(tmp_path / "wd"), workers=1, progress=False)
    out = read_output(tmp_path / "out")
    assert out.height == 100 and out["shapley_value"].null_count() == 0
    with pytest.raises(Exception, match="max_players"):
        Pipeline(read(str(path)), Shapley(label_field="label", method="tmc", max_players=10),
                 write(str(tmp_path / "o2"))).run(work_dir=str(tmp_path / "wd2"), workers=1, progress=False)
    with pytest.raises(Exception, match="no label column"):
        Pipeline(read(str(path)), Shapley(label_field="nope"),
                 write(str(tmp_path / "o3"))).run(work_dir=str(tmp_path / "wd3"), workers=1, progress=False)
