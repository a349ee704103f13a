"""KNN-Shapley and TMC-Shapley: curate vs pyDVL on the same data and utility.

    python benchmarks/bench_selectors.py [--small] [--pydvl-python PATH]   # PATH: benchmarks/setup_peers.sh

TMC is reported in three rows, so that the engine ratio is not mixed with algorithmic gains:
  * engine, same utility and same work: both sides evaluate the same precomputed-rank KNN utility on every
    prefix of the same number of permutations, no truncation on either side (pyDVL ``NoTruncation``,
    curate ``truncation=None``), and curate is driven through the plain call path (no prefix kernel);
  * algorithmic: curate's incremental KNN prefix kernel against its own plain call path (same permutations);
  * logistic regression (the real use case): accuracy of ``LogisticRegression(C=1, max_iter=1000)`` trained on
    the prefix, pyDVL ``ModelUtility`` against curate ``ClassifierUtility``, one-class prefixes predicting
    that class on both sides, no truncation on either side, same number of permutations.
The pyDVL-as-is row (its SoftKNN model recomputing every distance per prefix, its default truncation) is
kept as the "as a pyDVL user would write it" figure, labelled so.
Times are CPU seconds of the one thread each side runs on (``time.process_time``), so that a shared, loaded
machine does not tilt a ratio. Memory: each pyDVL side process's own VmHWM and summed PSS
(benchmarks/_mem.py), curate's in-process VmHWM.

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
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _mem import load, measure, self_hwm_mb  # noqa: E402

WORK = HERE / "_work" / "bench_selectors"
PEERS = Path(os.environ.get("CURATE_PEERS", HERE.parent / ".peers"))  # benchmarks/setup_peers.sh
PYDVL_PY = PEERS / "pydvl" / "bin" / "python"
DATA = Path(os.environ.get("CURATE_SHARED_DATA", HERE.parent.parent / "shared" / "data"))


def rss_mb() -> float:
    """This process's own peak RSS (VmHWM), MB."""
    return self_hwm_mb()


def rank_table(X: np.ndarray, Xv: np.ndarray) -> np.ndarray:
    """(n, T) rank of training point i among the neighbours of validation point t (squared euclidean,
    stable ties): the precomputation curate's KNNUtility does once, handed to pyDVL's side as well."""
    d = (Xv * Xv).sum(1)[:, None] + (X * X).sum(1)[None] - 2 * Xv @ X.T
    order = np.argsort(d, axis=1, kind="stable")
    r = np.empty_like(order)
    np.put_along_axis(r, order, np.arange(X.shape[0])[None, :].repeat(len(Xv), 0), axis=1)
    return np.ascontiguousarray(r.T.astype(np.int32))


# ------------------------------------------------------------------------------------------ pyDVL side


def pydvl_side(npz: Path, out: Path, what: str, k: int, perms: int) -> None:
    from joblib import parallel_config
    from pydvl.valuation import (
        Dataset,
        KNNShapleyValuation,
        MaxUpdates,
        ModelUtility,
        NoTruncation,
        SupervisedScorer,
        TMCShapleyValuation,
    )
    from sklearn.neighbors import KNeighborsClassifier

    d = np.load(npz)
    train, test = Dataset(d["X"], d["y"]), Dataset(d["Xv"], d["yv"])
    res: dict = {}
    if what == "tmc_same":
        # same utility as curate's KNNUtility.__call__: ranks precomputed once, a subset's score by lookup.
        # pyDVL hands the model feature rows, so the features are the training indices.
        ranks = rank_table(d["X"], d["Xv"])
        match = (d["y"][:, None] == d["yv"][None, :]).astype(np.uint8)

        class RankKNN:
            def __init__(self, k: int = 10):
                self.k = k

            def get_params(self, deep: bool = True) -> dict:
                return {"k": self.k}

            def set_params(self, **p):
                self.k = p.get("k", self.k)
                return self

            def fit(self, X, y):
                self.idx_ = np.asarray(X[:, 0], dtype=np.int64)
                return self

            def predict(self, X):
                return np.zeros(len(X))

            def score(self, X, y) -> float:  # X, y: the validation set (unused: precomputed above)
                idx = self.idx_
                r = ranks[idx]
                kk = min(self.k, len(idx))
                top = np.argpartition(r, kk - 1, axis=0)[:kk] if kk < len(idx) else np.broadcast_to(
                    np.arange(len(idx))[:, None], r.shape)
                return float(np.take_along_axis(match[idx], top, axis=0).sum(0).mean() / self.k)

        train = Dataset(np.arange(len(d["y"]), dtype=np.float64)[:, None], d["y"])
        scorer = SupervisedScorer(lambda m, X, y: m.score(X, y), test, default=0.0)
        util = ModelUtility(RankKNN(k), scorer, catch_errors=False, show_warnings=False)
        t = time.process_time()
        val = TMCShapleyValuation(util, is_done=MaxUpdates(perms), truncation=NoTruncation(), seed=0,
                                  progress=False, show_warnings=False)
        with parallel_config(n_jobs=1):
            val.fit(train)
        res["seconds"] = time.process_time() - t
        res["values"] = val.result.values.tolist()
        res["counts"] = int(np.median(val.result.counts))
    elif what == "tmc_lr":
        from sklearn.linear_model import LogisticRegression

        class LR:
            """LogisticRegression(C=1, max_iter=1000); a one-class subset predicts its class (curate's rule)."""

            def get_params(self, deep: bool = True) -> dict:
                return {}

            def set_params(self, **p):
                return self

            def fit(self, X, y):
                y = np.asarray(y)
                self.const_ = y[0] if (y == y[0]).all() else None
                self.m_ = None if self.const_ is not None else LogisticRegression(C=1.0, max_iter=1000).fit(X, y)
                return self

            def predict(self, X):
                return np.full(len(X), self.const_) if self.m_ is None else self.m_.predict(X)

        scorer = SupervisedScorer("accuracy", test, default=0.0)
        util = ModelUtility(LR(), scorer, catch_errors=False, show_warnings=False)
        t = time.process_time()
        val = TMCShapleyValuation(util, is_done=MaxUpdates(perms), truncation=NoTruncation(), seed=0,
                                  progress=False, show_warnings=False)
        with parallel_config(n_jobs=1):
            val.fit(train)
        res["seconds"] = time.process_time() - t
        res["values"] = val.result.values.tolist()
        res["counts"] = int(np.median(val.result.counts))
    elif what == "knn":
        t = time.process_time()
        with parallel_config(n_jobs=1):
            v = KNNShapleyValuation(KNeighborsClassifier(n_neighbors=k), test, progress=False).fit(train)
        res["seconds"] = time.process_time() - t
        res["values"] = v.result.values.tolist()
    else:  # "tmc": pyDVL as a user would write it (distances per prefix, default truncation)

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
        t = time.process_time()
        val = TMCShapleyValuation(util, is_done=MaxUpdates(perms), seed=0, progress=False, show_warnings=False)
        with parallel_config(n_jobs=1):
            val.fit(train)
        res["seconds"] = time.process_time() - t
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
    """pyDVL's side in its venv, one thread; its own VmHWM and PSS measured from outside."""
    out = WORK / f"pydvl_{what}_{npz.stem}.json"
    cmd = [str(PYDVL_PY), __file__, "--pydvl-side", str(npz), str(out), what, str(k), str(perms)]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    m = measure(cmd, env=env)
    if m["rc"]:
        raise RuntimeError(f"pyDVL side {what} failed ({m['rc']})")
    r = json.loads(out.read_text())
    return {**r, "rss_mb": max(r["rss_mb"], m["max_hwm_mb"]), "pss_mb": m["peak_pss_mb"], "wall": m["wall"]}


def corr(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    from scipy.stats import spearmanr

    return float(np.corrcoef(a, b)[0, 1]), float(spearmanr(a, b).statistic)


def auc(values: np.ndarray, flip: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(flip, -values))


def main() -> None:
    global PYDVL_PY
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--pydvl-python", default=str(PEERS / "pydvl" / "bin" / "python"),
                    help="pyDVL's venv python (benchmarks/setup_peers.sh; env CURATE_PEERS sets the folder)")
    args = ap.parse_args()
    PYDVL_PY = Path(args.pydvl_python)
    print(f"load {load()}")
    if not PYDVL_PY.exists():
        sys.exit(f"pyDVL venv missing at {PYDVL_PY}: benchmarks/setup_peers.sh DEST pydvl")
    from curate.selectors import _valuation as V
    from curate.selectors._threads import single_threaded

    k = 10
    rows = []
    # ---- exact KNN-Shapley
    n_tr, n_val = (1500, 300) if args.small else (4500, 1000)
    npz = make_data(n_tr, n_val)
    d = np.load(npz)
    V.knn_shapley(d["X"][:50], d["y"][:50], d["Xv"][:5], d["yv"][:5], k=k)  # warm-up
    t = time.process_time()
    with single_threaded():
        ours = V.knn_shapley(d["X"], d["y"], d["Xv"], d["yv"], k=k)
    t_ours = time.process_time() - t
    peer = run_peer(npz, "knn", k, 0)
    pv = np.asarray(peer["values"])
    rows.append({"what": f"KNN-Shapley exact, n={n_tr}, val={n_val}, K={k}", "curate_s": t_ours,
                 "pydvl_s": peer["seconds"], "ratio": peer["seconds"] / t_ours,
                 "pearson_vs_peer": corr(ours, pv)[0], "spearman_vs_peer": corr(ours, pv)[1],
                 "max_abs_diff": float(np.abs(ours - pv).max()), "auc_curate": auc(ours, d["flip"]),
                 "auc_pydvl": auc(pv, d["flip"]), "curate_pts_per_s": n_tr / t_ours,
                 "pydvl_pts_per_s": n_tr / peer["seconds"], "pydvl_rss_mb": peer["rss_mb"]})

    # ---- TMC-Shapley, KNN utility (exact answer known): pyDVL as a user writes it vs curate's best
    n_tr, n_val, perms = (200, 100, 100) if args.small else (400, 200, 200)
    npz = make_data(n_tr, n_val, seed=1)
    d = np.load(npz)
    exact = V.knn_shapley(d["X"], d["y"], d["Xv"], d["yv"], k=k)
    util = V.KNNUtility(d["X"][:20], d["y"][:20], d["Xv"], d["yv"], k=k)
    util.prefix_scores(np.arange(20))  # numba compile outside the timing
    t = time.process_time()
    with single_threaded():
        util = V.KNNUtility(d["X"], d["y"], d["Xv"], d["yv"], k=k)
        res = V.tmc_shapley(util, n_tr, max_iterations=perms, convergence=1e-12, seed=0)
    t_ours = time.process_time() - t
    peer = run_peer(npz, "tmc", k, perms)
    pv = np.asarray(peer["values"])
    rows.append({"what": f"TMC-Shapley as each library's user writes it (NOT the same work: pyDVL recomputes "
                         f"distances + argsort per prefix, RelativeTruncation; curate precomputed ranks, prefix "
                         f"kernel, DataShapley truncation), KNN utility, n={n_tr}, val={n_val}, {perms} permutations",
                 "curate_s": t_ours, "pydvl_s": peer["seconds"], "ratio": peer["seconds"] / t_ours,
                 "pearson_vs_peer": corr(res.values, pv)[0], "spearman_vs_peer": corr(res.values, pv)[1],
                 "curate_vs_exact": corr(res.values, exact), "pydvl_vs_exact": corr(pv, exact),
                 "pydvl_permutations_median": peer.get("counts"), "auc_curate": auc(res.values, d["flip"]),
                 "auc_pydvl": auc(pv, d["flip"]), "curate_utility_calls": res.utility_calls,
                 "pydvl_rss_mb": peer["rss_mb"], "pydvl_pss_mb": peer["pss_mb"]})

    # ---- TMC engine on the same utility and the same work; then the KNN prefix kernel alone
    n_tr, n_val, perms = (200, 100, 20) if args.small else (300, 200, 50)
    npz = make_data(n_tr, n_val, seed=2)
    d = np.load(npz)

    class PlainCall:
        """curate's KNNUtility through its call path only (no ``prefix_scores``): one subset per call."""

        def __init__(self, u: V.KNNUtility) -> None:
            self.u = u

        def __call__(self, idx: np.ndarray) -> float:
            return self.u(idx)

    with single_threaded():
        t = time.process_time()
        util = V.KNNUtility(d["X"], d["y"], d["Xv"], d["yv"], k=k)
        plain = V.tmc_shapley(PlainCall(util), n_tr, max_iterations=perms, convergence=1e-12, truncation=None,
                              seed=0)
        t_plain = time.process_time() - t
        t = time.process_time()
        util = V.KNNUtility(d["X"], d["y"], d["Xv"], d["yv"], k=k)
        kern = V.tmc_shapley(util, n_tr, max_iterations=perms, convergence=1e-12, truncation=None, seed=0)
        t_kern = time.process_time() - t
    peer = run_peer(npz, "tmc_same", k, perms)
    pv = np.asarray(peer["values"])
    rows.append({"what": f"TMC engine, same utility (precomputed ranks, call per prefix), no truncation either "
                         f"side, n={n_tr}, val={n_val}, {perms} permutations",
                 "curate_s": t_plain, "pydvl_s": peer["seconds"], "ratio": peer["seconds"] / t_plain,
                 "pearson_vs_peer": corr(plain.values, pv)[0], "curate_utility_calls": plain.utility_calls,
                 "pydvl_permutations_median": peer.get("counts"), "pydvl_rss_mb": peer["rss_mb"],
                 "pydvl_pss_mb": peer["pss_mb"]})
    rows.append({"what": f"KNN prefix kernel (algorithmic): curate kernel vs curate call path, same "
                         f"permutations, n={n_tr}, val={n_val}, {perms} permutations",
                 "kernel_s": t_kern, "plain_s": t_plain, "ratio": t_plain / t_kern,
                 "max_abs_diff_values": float(np.abs(kern.values - plain.values).max())})

    # ---- TMC with logistic regression (the real use case): pyDVL ModelUtility vs curate ClassifierUtility
    n_tr, n_val, perms = (40, 200, 4) if args.small else (80, 300, 8)
    npz = make_data(n_tr, n_val, seed=3)
    d = np.load(npz)
    with single_threaded():
        t = time.process_time()
        lr = V.tmc_shapley(V.ClassifierUtility(d["X"], d["y"], d["Xv"], d["yv"], model="logistic"), n_tr,
                           max_iterations=perms, convergence=1e-12, truncation=None, seed=0)
        t_lr = time.process_time() - t
    peer = run_peer(npz, "tmc_lr", k, perms)
    pv = np.asarray(peer["values"])
    rows.append({"what": f"TMC, logistic regression accuracy (C=1, max_iter=1000), no truncation either side, "
                         f"n={n_tr}, val={n_val}, {perms} permutations",
                 "curate_s": t_lr, "pydvl_s": peer["seconds"], "ratio": peer["seconds"] / t_lr,
                 "curate_utility_calls": lr.utility_calls, "pydvl_permutations_median": peer.get("counts"),
                 "pearson_vs_peer": corr(lr.values, pv)[0], "pydvl_rss_mb": peer["rss_mb"],
                 "pydvl_pss_mb": peer["pss_mb"]})
    for r in rows:
        print(json.dumps(r, indent=1))
    print(f"curate peak RSS (VmHWM, this process) {rss_mb():.0f} MB; load {load()}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--pydvl-side":
        pydvl_side(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))
    else:
        main()
