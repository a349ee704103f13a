"""KNN-Shapley and TMC-Shapley: curate vs pyDVL on the same data and utility.

    python benchmarks/bench_selectors.py [--small]

Data: SMS Spam Collection (shared/data/spam), 10% of training labels flipped, hashed TF-IDF features
(curate's featuriser, 1024 dims) written once to an .npz that both sides read. Utility: the KNN utility
of Jia et al. 2019 (mean over validation points of the share of the K=10 nearest training points with the
right label), whose exact Shapley values are known in closed form, so both estimators are scored against
the exact values (Pearson / Spearman). pyDVL (0.10, in its own venv: benchmarks/_work/pydvl-venv, created
with `pip install pydvl==0.10.0`) runs ``KNNShapleyValuation`` and ``TMCShapleyValuation`` (its
defaults: RelativeTruncation(0.01, burn_in 0.4)); curate runs ``knn_shapley`` and ``tmc_shapley``
(DataShapley truncation). TMC on both sides: the same number of permutations (pyDVL ``MaxUpdates``), one
process. This script re-runs itself under the pyDVL venv (``--pydvl-side``) for the peer half.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work" / "bench_selectors"
PYDVL_PY = HERE / "_work" / "pydvl-venv" / "bin" / "python"
DATA = Path(os.environ.get("CURATE_SHARED_DATA", HERE.parent.parent / "shared" / "data"))


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------------------ pyDVL side


def pydvl_side(npz: Path, out: Path, what: str, k: int, perms: int) -> None:
    from joblib import parallel_config
    from pydvl.valuation import (
        Dataset,
        KNNShapleyValuation,
        MaxUpdates,
        ModelUtility,
        SupervisedScorer,
        TMCShapleyValuation,
    )
    from sklearn.neighbors import KNeighborsClassifier

    d = np.load(npz)
    train, test = Dataset(d["X"], d["y"]), Dataset(d["Xv"], d["yv"])
    res: dict = {}
    if what == "knn":
        t = time.perf_counter()
        with parallel_config(n_jobs=1):
            v = KNNShapleyValuation(KNeighborsClassifier(n_neighbors=k), test, progress=False).fit(train)
        res["seconds"] = time.perf_counter() - t
        res["values"] = v.result.values.tolist()
    else:

        class SoftKNN:
            """The KNN utility as an sklearn-style model: score = mean share of the k nearest with the label."""

            def __init__(self, k: int = 10):
                self.k = k

            def get_params(self, deep: bool = True) -> dict:
                return {"k": self.k}

            def set_params(self, **p):
                self.k = p.get("k", self.k)
                return self

            def fit(self, X, y):
                self.X_, self.y_ = np.asarray(X), np.asarray(y)
                return self

            def predict(self, X):  # required by pyDVL's SupervisedModel protocol
                return np.zeros(len(X))

            def score(self, X, y) -> float:
                d = ((X * X).sum(1)[:, None] + (self.X_ * self.X_).sum(1)[None] - 2 * X @ self.X_.T)
                kk = min(self.k, len(self.X_))
                idx = np.argsort(d, axis=1, kind="stable")[:, :kk]
                return float((self.y_[idx] == np.asarray(y)[:, None]).sum(1).mean() / self.k)

        scorer = SupervisedScorer(lambda m, X, y: m.score(X, y), test, default=0.0)
        util = ModelUtility(SoftKNN(k), scorer, catch_errors=False, show_warnings=False)
        t = time.perf_counter()
        val = TMCShapleyValuation(util, is_done=MaxUpdates(perms), seed=0, progress=False, show_warnings=False)
        with parallel_config(n_jobs=1):
            val.fit(train)
        res["seconds"] = time.perf_counter() - t
        res["values"] = val.result.values.tolist()
        res["counts"] = int(np.median(val.result.counts))
    res["rss_mb"] = rss_mb()
    out.write_text(json.dumps(res))


# ------------------------------------------------------------------------------------------ our side


def make_data(n_train: int, n_val: int, seed: int = 0) -> Path:
    import polars as pl

    from curate.selectors._features import HashedFeatures

    src = DATA / "spam" / "SMSSpamCollection"
    df = pl.read_csv(src, separator="\t", has_header=True, new_columns=["label", "text"], quote_char=None)
    df = df.sample(n_train + n_val, seed=seed, shuffle=True)
    y = (df["label"] == "spam").to_numpy().astype(np.int64)
    rng = np.random.default_rng(seed)
    flip = np.zeros(len(y), bool)
    flip[:n_train] = rng.random(n_train) < 0.1
    y = np.where(flip, 1 - y, y)
    hf = HashedFeatures(1024).fit(df["text"][:n_train])
    X, Xv = hf.transform(df["text"][:n_train]), hf.transform(df["text"][n_train:])
    WORK.mkdir(parents=True, exist_ok=True)
    p = WORK / f"sms_{n_train}_{n_val}.npz"
    np.savez(p, X=X.astype(np.float64), y=y[:n_train], Xv=Xv.astype(np.float64), yv=y[n_train:],
             flip=flip[:n_train])
    return p


def run_peer(npz: Path, what: str, k: int, perms: int) -> dict:
    out = WORK / f"pydvl_{what}_{npz.stem}.json"
    cmd = [str(PYDVL_PY), __file__, "--pydvl-side", str(npz), str(out), what, str(k), str(perms)]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    subprocess.run(cmd, check=True, env=env)
    return json.loads(out.read_text())


def corr(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    from scipy.stats import spearmanr

    return float(np.corrcoef(a, b)[0, 1]), float(spearmanr(a, b).statistic)


def auc(values: np.ndarray, flip: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(flip, -values))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", action="store_true")
    args = ap.parse_args()
    if not PYDVL_PY.exists():
        sys.exit(f"pyDVL venv missing: python -m venv {PYDVL_PY.parent.parent} && "
                 f"{PYDVL_PY.parent}/pip install pydvl==0.10.0")
    from curate.selectors import _valuation as V
    from curate.selectors._threads import single_threaded

    k = 10
    rows = []
    # ---- exact KNN-Shapley
    n_tr, n_val = (1500, 300) if args.small else (4500, 1000)
    npz = make_data(n_tr, n_val)
    d = np.load(npz)
    V.knn_shapley(d["X"][:50], d["y"][:50], d["Xv"][:5], d["yv"][:5], k=k)  # warm-up
    t = time.perf_counter()
    with single_threaded():
        ours = V.knn_shapley(d["X"], d["y"], d["Xv"], d["yv"], k=k)
    t_ours = time.perf_counter() - t
    peer = run_peer(npz, "knn", k, 0)
    pv = np.asarray(peer["values"])
    rows.append({"what": f"KNN-Shapley exact, n={n_tr}, val={n_val}, K={k}", "curate_s": t_ours,
                 "pydvl_s": peer["seconds"], "ratio": peer["seconds"] / t_ours,
                 "pearson_vs_peer": corr(ours, pv)[0], "spearman_vs_peer": corr(ours, pv)[1],
                 "max_abs_diff": float(np.abs(ours - pv).max()), "auc_curate": auc(ours, d["flip"]),
                 "auc_pydvl": auc(pv, d["flip"]), "curate_pts_per_s": n_tr / t_ours,
                 "pydvl_pts_per_s": n_tr / peer["seconds"], "pydvl_rss_mb": peer["rss_mb"]})

    # ---- TMC-Shapley, KNN utility (exact answer known)
    n_tr, n_val, perms = (200, 100, 100) if args.small else (400, 200, 200)
    npz = make_data(n_tr, n_val, seed=1)
    d = np.load(npz)
    exact = V.knn_shapley(d["X"], d["y"], d["Xv"], d["yv"], k=k)
    util = V.KNNUtility(d["X"][:20], d["y"][:20], d["Xv"], d["yv"], k=k)
    util.prefix_scores(np.arange(20))  # numba compile outside the timing
    t = time.perf_counter()
    with single_threaded():
        util = V.KNNUtility(d["X"], d["y"], d["Xv"], d["yv"], k=k)
        res = V.tmc_shapley(util, n_tr, max_iterations=perms, convergence=1e-12, seed=0)
    t_ours = time.perf_counter() - t
    peer = run_peer(npz, "tmc", k, perms)
    pv = np.asarray(peer["values"])
    rows.append({"what": f"TMC-Shapley, KNN utility, n={n_tr}, val={n_val}, {perms} permutations",
                 "curate_s": t_ours, "pydvl_s": peer["seconds"], "ratio": peer["seconds"] / t_ours,
                 "pearson_vs_peer": corr(res.values, pv)[0], "spearman_vs_peer": corr(res.values, pv)[1],
                 "curate_vs_exact": corr(res.values, exact), "pydvl_vs_exact": corr(pv, exact),
                 "pydvl_permutations_median": peer.get("counts"), "auc_curate": auc(res.values, d["flip"]),
                 "auc_pydvl": auc(pv, d["flip"]), "curate_utility_calls": res.utility_calls,
                 "pydvl_rss_mb": peer["rss_mb"]})
    for r in rows:
        print(json.dumps(r, indent=1))
    print(f"curate peak RSS {rss_mb():.0f} MB")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--pydvl-side":
        pydvl_side(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))
    else:
        main()
