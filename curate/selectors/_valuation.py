"""Data valuation on numpy arrays: exact KNN-Shapley, TMC-Shapley, Beta Shapley, Data Banzhaf (MSR),
cluster-level Shapley and exact enumeration (the oracle of the tests). No pipeline code here.

A *utility* is a callable ``U(idx) -> float``: the score of a model trained on the training points
``idx`` (an int array, possibly empty). Utilities may also define ``prefix_scores(perm)``, the utility of
every prefix ``perm[:j]`` (j = 0..len(perm)) in one pass; permutation samplers use it when present
(the KNN utility computes it incrementally, exactly, in O(n·T·K) per permutation instead of n refits).

Conventions (algorithms.md §8):

* Shapley φ_i = Σ_{S⊆N\\{i}} |S|!(n−|S|−1)!/n! · [U(S∪{i}) − U(S)]; efficiency Σφ = U(N) − U(∅).
* KNN utility (Jia et al. 2019): U(S) = mean over validation points t of (1/K) Σ_{k≤min(K,|S|)}
  1[y_{α_k(S)} = y_t] (divided by K even when |S| < K), so U(∅) = 0. Values are the MEAN over
  validation points (OpenDataVal ``knnshap.py``); pyDVL ``knn_shapley.py`` SUMS them (multiply by T).
  Ties in distance are broken by training index (stable argsort); values depend on that order.
* Classifier utility: accuracy on the validation set; U(∅) = ``empty_score`` (default 0.0, pyDVL's
  ``default_score``); a subset holding one class predicts that class.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from numba import njit

from curate.selectors._threads import single_threaded

UtilityFn = Callable[[np.ndarray], float]


@dataclass
class ValuationResult:
    """Values of the ``n`` players and how they were estimated."""

    values: np.ndarray
    stderr: np.ndarray | None = None
    iterations: int = 0
    converged: bool = True
    utility_calls: int = 0
    method: str = ""


def _threads_for(utility: object):
    """Model-fitting utilities fit thousands of tiny models: run them single-threaded (see ``_threads``)."""
    return single_threaded(bool(getattr(utility, "limit_threads", False)))


# ----------------------------------------------------------------------------------------------------
# neighbour orderings


def _distances(X: np.ndarray, Xv: np.ndarray, metric: str) -> np.ndarray:
    """Distances (len(Xv), len(X)); 'euclidean' (squared: same order) or 'cosine' (1 - cos)."""
    X = np.asarray(X, dtype=np.float64)
    Xv = np.asarray(Xv, dtype=np.float64)
    if metric == "cosine":
        nx = np.linalg.norm(X, axis=1)
        nv = np.linalg.norm(Xv, axis=1)
        return 1.0 - (Xv @ X.T) / np.maximum(np.outer(nv, nx), 1e-30)
    if metric == "euclidean":
        d = (Xv * Xv).sum(1)[:, None] + (X * X).sum(1)[None, :] - 2.0 * (Xv @ X.T)
        return np.maximum(d, 0.0)
    raise ValueError(f"unknown metric {metric!r} (euclidean, cosine)")


def neighbour_orders(X: np.ndarray, Xv: np.ndarray, *, metric: str = "euclidean",
                     max_cells: int = 1 << 24) -> Iterator[tuple[int, np.ndarray]]:
    """For chunks of validation points: (first index, training indices sorted by distance, stable)."""
    n = len(X)
    step = max(1, max_cells // max(n, 1))
    for a in range(0, len(Xv), step):
        d = _distances(X, Xv[a:a + step], metric)
        yield a, np.argsort(d, axis=1, kind="stable")


# ----------------------------------------------------------------------------------------------------
# exact KNN-Shapley (Jia et al. 2019, Theorem 1)


def knn_shapley(X: np.ndarray, y: np.ndarray, Xv: np.ndarray, yv: np.ndarray, *, k: int = 10,
                metric: str = "euclidean") -> np.ndarray:
    """Exact Shapley values of the KNN utility, averaged over the validation points.

    For one validation point with training points sorted by distance α_1..α_N:
    s_{α_N} = 1[y_{α_N}=y_t]/max(N,K) (the paper's 1/N assumes N >= K), s_{α_i} = s_{α_{i+1}} + (1[y_{α_i}=y_t] − 1[y_{α_{i+1}}=y_t])/K · min(K,i)/i.
    Vectorised over validation points: a reversed cumulative sum per row, scattered back with bincount.
    """
    X, y, Xv, yv = np.asarray(X), np.asarray(y), np.asarray(Xv), np.asarray(yv)
    n, T = len(X), len(Xv)
    if n == 0 or T == 0:
        return np.zeros(n)
    i1 = np.arange(1, n, dtype=np.float64)  # i = 1..n-1 (1-based rank of the nearer point of each pair)
    coef = np.minimum(k, i1) / (i1 * k)
    total = np.zeros(n)
    for a, order in neighbour_orders(X, Xv, metric=metric):
        m = (y[order] == yv[a:a + len(order), None]).astype(np.float64)
        s = np.empty_like(m)
        last = m[:, -1:] / max(n, k)  # = 1/N when N >= K (the paper's case); exact for N < K too
        s[:, -1:] = last
        if n > 1:
            diff = (m[:, :-1] - m[:, 1:]) * coef
            s[:, :-1] = last + np.cumsum(diff[:, ::-1], axis=1)[:, ::-1]
        total += np.bincount(order.ravel(), weights=s.ravel(), minlength=n)
    return total / T


# ----------------------------------------------------------------------------------------------------
# utilities


class KNNUtility:
    """The KNN utility of :func:`knn_shapley` for any subset, with an exact incremental prefix path."""

    def __init__(self, X: np.ndarray, y: np.ndarray, Xv: np.ndarray, yv: np.ndarray, *, k: int = 10,
                 metric: str = "euclidean"):
        self.n, self.k = len(X), int(k)
        T = len(Xv)
        # rank of training point i for validation point t, stored (n, T) so a point's column is contiguous
        ranks = np.empty((self.n, T), dtype=np.int32)
        for a, order in neighbour_orders(np.asarray(X), np.asarray(Xv), metric=metric):
            b = a + len(order)
            r = np.empty_like(order, dtype=np.int32)
            np.put_along_axis(r, order, np.arange(self.n, dtype=np.int32)[None, :].repeat(len(order), 0), axis=1)
            ranks[:, a:b] = r.T
        self.ranks = ranks
        self.match = (np.asarray(y)[:, None] == np.asarray(yv)[None, :]).astype(np.uint8)  # (n, T)

    def __call__(self, idx: np.ndarray) -> float:
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size == 0 or self.ranks.shape[1] == 0:
            return 0.0
        r = self.ranks[idx]  # (s, T)
        kk = min(self.k, len(idx))
        top = np.argpartition(r, kk - 1, axis=0)[:kk] if kk < len(idx) else np.broadcast_to(
            np.arange(len(idx))[:, None], r.shape)
        hits = np.take_along_axis(self.match[idx], top, axis=0).sum(0)
        return float(hits.mean() / self.k)

    def prefix_scores(self, perm: np.ndarray) -> np.ndarray:
        return _knn_prefix(np.asarray(perm, dtype=np.int64), self.ranks, self.match, self.k)


@njit(cache=True)
def _knn_prefix(perm, ranks, match, k):  # pragma: no cover - compiled
    n_steps = perm.shape[0]
    T = ranks.shape[1]
    out = np.zeros(n_steps + 1)
    if T == 0:
        return out
    top_r = np.empty((T, k), dtype=np.int32)
    top_m = np.empty((T, k), dtype=np.uint8)
    worst = np.zeros(T, dtype=np.int64)  # slot of the farthest neighbour kept for each t
    hits = 0
    for j in range(n_steps):
        i = perm[j]
        for t in range(T):
            r = ranks[i, t]
            if j < k:
                top_r[t, j] = r
                top_m[t, j] = match[i, t]
                hits += match[i, t]
                if j == 0 or r > top_r[t, worst[t]]:
                    worst[t] = j
            elif r < top_r[t, worst[t]]:
                w = worst[t]
                hits += match[i, t]
                hits -= top_m[t, w]
                top_r[t, w] = r
                top_m[t, w] = match[i, t]
                best = 0
                for q in range(1, k):
                    if top_r[t, q] > top_r[t, best]:
                        best = q
                worst[t] = best
        out[j + 1] = hits / (k * T)
    return out


class ClassifierUtility:
    """Validation accuracy of a classifier trained on the subset.

    ``model``: ``"logistic"`` (sklearn ``LogisticRegression(C, max_iter=1000)``, lbfgs) or a factory
    returning an sklearn-style estimator. One-class subsets predict that class; U(∅) = ``empty_score``.
    """

    limit_threads = True

    def __init__(self, X: np.ndarray, y: np.ndarray, Xv: np.ndarray, yv: np.ndarray,
                 *, model: str | Callable[[], object] = "logistic", C: float = 1.0, empty_score: float = 0.0):
        self.X, self.y, self.Xv, self.yv = X, np.asarray(y), Xv, np.asarray(yv)
        self.n = len(X)
        self.empty_score = float(empty_score)
        if model == "logistic":
            from sklearn.linear_model import LogisticRegression

            self._make = lambda: LogisticRegression(C=C, max_iter=1000)
        elif callable(model):
            self._make = model
        else:
            raise ValueError(f"unknown model {model!r}")

    def __call__(self, idx: np.ndarray) -> float:
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size == 0:
            return self.empty_score
        ys = self.y[idx]
        if (ys == ys[0]).all():
            return float((self.yv == ys[0]).mean())
        m = self._make()
        m.fit(self.X[idx], ys)
        return float((m.predict(self.Xv) == self.yv).mean())


class CallableUtility:
    """A user function ``fn(X_train, y_train, X_val, y_val) -> float`` as a utility; U(∅) = ``empty_score``."""

    limit_threads = True

    def __init__(self, fn: Callable[..., float], X: np.ndarray, y: np.ndarray, Xv: np.ndarray, yv: np.ndarray,
                 empty_score: float = 0.0):
        self.fn, self.X, self.y, self.Xv, self.yv = fn, X, np.asarray(y), Xv, np.asarray(yv)
        self.n = len(X)
        self.empty_score = float(empty_score)

    def __call__(self, idx: np.ndarray) -> float:
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size == 0:
            return self.empty_score
        return float(self.fn(self.X[idx], self.y[idx], self.Xv, self.yv))


class ClusterUtility:
    """The game whose players are clusters: U_c(C) = U(union of the members of the clusters in C)."""

    def __init__(self, base: UtilityFn, assign: np.ndarray, n_clusters: int):
        self.base = base
        self.limit_threads = getattr(base, "limit_threads", False)
        self.n = int(n_clusters)
        order = np.argsort(assign, kind="stable")
        counts = np.bincount(assign, minlength=self.n)
        bounds = np.concatenate([[0], np.cumsum(counts)])
        self.members = [order[bounds[c]:bounds[c + 1]] for c in range(self.n)]
        self.sizes = counts
        if hasattr(base, "prefix_scores"):
            self.prefix_scores = self._prefix_scores

    def _expand(self, clusters: np.ndarray) -> np.ndarray:
        parts = [self.members[c] for c in np.asarray(clusters, dtype=np.int64)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def __call__(self, idx: np.ndarray) -> float:
        return self.base(self._expand(idx))

    def _prefix_scores(self, perm: np.ndarray) -> np.ndarray:
        full = self.base.prefix_scores(self._expand(perm))  # type: ignore[attr-defined]
        ends = np.concatenate([[0], np.cumsum(self.sizes[np.asarray(perm, dtype=np.int64)])])
        return full[ends]


# ----------------------------------------------------------------------------------------------------
# semivalue weights


def beta_weights(n: int, alpha: float, beta: float) -> np.ndarray:
    """w(j), j = 1..n, of Beta(α,β)-Shapley (Kwon & Zou 2022): φ_i = (1/n) Σ_j w(j)·mean_{|S|=j−1} Δ_i(S),
    w(j) = n·C(n−1,j−1)·B(j+β−1, n−j+α)/B(α,β); (1/n)Σ_j w(j) = 1 and Beta(1,1) gives w ≡ 1 (Shapley)."""
    j = np.arange(1, n + 1, dtype=np.float64)
    lb = np.vectorize(lambda a, b: math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    logw = (math.log(n) + np.array([math.lgamma(n) - math.lgamma(x) - math.lgamma(n - x + 1) for x in j])
            + lb(j + beta - 1, n - j + alpha) - lb(alpha, beta))
    return np.exp(logw)


def subset_weights(n: int, kind: str = "shapley", *, alpha: float = 1.0, beta: float = 1.0) -> np.ndarray:
    """p(s), s = 0..n−1: weight of one subset S ∌ i of size s in φ_i = Σ_S p(|S|)·[U(S∪i) − U(S)]."""
    s = np.arange(n)
    binom = np.array([math.comb(n - 1, int(x)) for x in s], dtype=np.float64)
    if kind == "shapley":
        return 1.0 / (n * binom)
    if kind == "beta":
        return beta_weights(n, alpha, beta) / (n * binom)
    if kind == "banzhaf":
        return np.full(n, 2.0 ** (1 - n))
    raise ValueError(f"unknown semivalue {kind!r}")


def exact_semivalue(utility: UtilityFn, n: int, *, kind: str = "shapley", alpha: float = 1.0,
                    beta: float = 1.0) -> np.ndarray:
    """Exact semivalues by enumerating all 2^n subsets (each utility evaluated once); n <= ~16."""
    if n > 20:
        raise ValueError("exact enumeration is for n <= 20 players")
    masks = np.arange(1 << n, dtype=np.int64)
    bits = (masks[:, None] >> np.arange(n)) & 1
    U = np.array([utility(np.flatnonzero(b)) for b in bits])
    size = bits.sum(1)
    p = subset_weights(n, kind, alpha=alpha, beta=beta)
    phi = np.zeros(n)
    for i in range(n):
        without = masks[bits[:, i] == 0]
        phi[i] = (p[size[without]] * (U[without | (1 << i)] - U[without])).sum()
    return phi


# ----------------------------------------------------------------------------------------------------
# permutation sampling: TMC-Shapley and Beta Shapley


def _truncation_point(v: np.ndarray, u_full: float, tolerance: float, patience: int = 5) -> int:
    """DataShapley ``one_iteration``: stop after more than ``patience`` consecutive prefixes within
    ``tolerance·|U(D)|`` of U(D). Returns the number of positions whose marginal is kept."""
    within = np.abs(v[1:] - u_full) <= tolerance * abs(u_full)
    run = 0
    for j, w in enumerate(within):
        run = run + 1 if w else 0
        if run > patience:
            return j + 1
    return len(within)


def _ghorbani_error(history: np.ndarray) -> float:
    """DataShapley ``shap_utils.error``: max over the stored running means of mean_i |φ_t − φ_T|/|φ_T|."""
    last = history[-1]
    return float(np.max(np.mean(np.abs(history - last) / (np.abs(last) + 1e-12), axis=1)))


def permutation_semivalue(utility: UtilityFn, n: int, *, weights: np.ndarray | None = None,
                          truncation: float | None = 0.01, convergence: float = 0.1, check_every: int = 100,
                          min_iterations: int = 100, max_iterations: int = 1000, seed: int = 0,
                          method: str = "tmc") -> ValuationResult:
    """TMC-Shapley (Ghorbani & Zou 2019) and, with position ``weights`` w(j), Beta Shapley.

    Defaults follow amiratag/DataShapley ``DShap.py``: truncation ``tolerance=0.01`` (a permutation stops
    after more than 5 consecutive prefixes within 1% of U(D); the rest of its marginals are 0), and the
    convergence error ``err=0.1`` checked every 100 permutations (max over the last 100 running means of the
    mean relative change). ``max_iterations`` caps the run (``converged`` says whether the error was met).
    U(D) is computed once on the whole validation set (the original averages 100 bootstraps of it).
    ``truncation=None`` disables truncation (plain permutation sampling).
    """
    with _threads_for(utility):
        return _permutation_semivalue(utility, n, weights=weights, truncation=truncation,
                                      convergence=convergence, check_every=check_every,
                                      min_iterations=min_iterations, max_iterations=max_iterations,
                                      seed=seed, method=method)


def _permutation_semivalue(utility, n, *, weights, truncation, convergence, check_every, min_iterations,
                           max_iterations, seed, method) -> ValuationResult:
    rng = np.random.default_rng(seed)
    full = np.arange(n)
    u_full = float(utility(full))
    u_empty = float(utility(full[:0]))
    calls = 2
    fast = getattr(utility, "prefix_scores", None)
    total = np.zeros(n)
    total_sq = np.zeros(n)
    hist = np.zeros((check_every, n))
    t = 0
    converged = False
    while t < max_iterations:
        perm = rng.permutation(n)
        if fast is not None:
            v = fast(perm)
            calls += n
            keep = _truncation_point(v, u_full, truncation) if truncation is not None else n
            v = v.copy()
            v[keep + 1:] = v[keep]
        else:
            v = np.empty(n + 1)
            v[0] = u_empty
            run = 0
            j = 0
            while j < n:
                v[j + 1] = utility(perm[:j + 1])
                calls += 1
                j += 1
                if truncation is not None:
                    run = run + 1 if abs(v[j] - u_full) <= truncation * abs(u_full) else 0
                    if run > 5:
                        break
            v[j + 1:] = v[j]
        marg = np.diff(v)
        if weights is not None:
            marg = marg * weights
        contrib = np.empty(n)
        contrib[perm] = marg
        total += contrib
        total_sq += contrib * contrib
        t += 1
        hist[(t - 1) % check_every] = total / t
        if t >= min_iterations and t % check_every == 0:
            order = np.r_[t % check_every:check_every, 0:t % check_every]
            if _ghorbani_error(hist[order]) < convergence:
                converged = True
                break
    mean = total / max(t, 1)
    var = np.maximum(total_sq / max(t, 1) - mean * mean, 0.0)
    return ValuationResult(mean, np.sqrt(var / max(t - 1, 1)), t, converged, calls, method)


def tmc_shapley(utility: UtilityFn, n: int, **kw) -> ValuationResult:
    return permutation_semivalue(utility, n, method="tmc", **kw)


def beta_shapley(utility: UtilityFn, n: int, *, alpha: float = 16.0, beta: float = 1.0,
                 **kw) -> ValuationResult:
    """Beta(α,β)-Shapley by permutation sampling reweighted by position (default Beta(16,1), the paper's
    recommendation; OpenDataVal uses Beta(4,1))."""
    return permutation_semivalue(utility, n, weights=beta_weights(n, alpha, beta), method="beta", **kw)


# ----------------------------------------------------------------------------------------------------
# Data Banzhaf: maximum sample reuse (Wang & Jia 2023)


def msr_banzhaf(utility: UtilityFn, n: int, *, n_samples: int = 1000, seed: int = 0) -> ValuationResult:
    """MSR estimator: subsets with each point in w.p. ½; φ̂_i = mean{U(S): i∈S} − mean{U(S): i∉S}.
    Default 1000 subsets (OpenDataVal ``DataBanzhaf(num_models=1000)``)."""
    rng = np.random.default_rng(seed)
    masks = rng.random((n_samples, n)) < 0.5
    with _threads_for(utility):
        u = np.array([utility(np.flatnonzero(m)) for m in masks])
    mf = masks.astype(np.float64)
    n_in = mf.sum(0)
    n_out = n_samples - n_in
    s_in = mf.T @ u
    s_out = u.sum() - s_in
    with np.errstate(invalid="ignore", divide="ignore"):
        phi = np.where(n_in > 0, s_in / np.maximum(n_in, 1), 0.0) - np.where(n_out > 0, s_out / np.maximum(n_out, 1), 0.0)
    # per-point standard error of the difference of two means
    d_in = np.array([u[m].var() if m.any() else 0.0 for m in masks.T])
    d_out = np.array([u[~m].var() if (~m).any() else 0.0 for m in masks.T])
    se = np.sqrt(d_in / np.maximum(n_in, 1) + d_out / np.maximum(n_out, 1))
    return ValuationResult(phi, se, n_samples, True, n_samples, "banzhaf")


# ----------------------------------------------------------------------------------------------------
# cluster-level Shapley


def kmeans(X: np.ndarray, k: int, *, seed: int = 0, iters: int = 50, sample: int = 20000) -> np.ndarray:
    """Cluster assignment by k-means (k-means++ seeding on at most ``sample`` points, then Lloyd
    iterations over all points until assignments stop changing). Deterministic under ``seed``."""
    X = np.asarray(X, dtype=np.float64)
    n = len(X)
    k = min(k, n)
    rng = np.random.default_rng(seed)
    P = X if n <= sample else X[rng.choice(n, sample, replace=False)]
    centres = np.empty((k, X.shape[1]))
    centres[0] = P[rng.integers(len(P))]
    d = ((P - centres[0]) ** 2).sum(1)
    for c in range(1, k):
        tot = d.sum()
        i = int(rng.choice(len(P), p=d / tot)) if tot > 0 else int(rng.integers(len(P)))
        centres[c] = P[i]
        d = np.minimum(d, ((P - centres[c]) ** 2).sum(1))
    assign = np.full(n, -1, dtype=np.int64)
    for _ in range(iters):
        new = np.concatenate([_distances(centres, X[a:a + 8192], "euclidean").argmin(1)
                              for a in range(0, n, 8192)])
        if np.array_equal(new, assign):
            break
        assign = new
        counts = np.bincount(assign, minlength=k)
        sums = np.zeros_like(centres)
        np.add.at(sums, assign, X)
        nonempty = counts > 0
        centres[nonempty] = sums[nonempty] / counts[nonempty, None]
    return np.unique(assign, return_inverse=True)[1].astype(np.int64)  # relabel 0..c-1, no empty cluster


def spread_to_members(cluster_values: np.ndarray, assign: np.ndarray) -> np.ndarray:
    """Each member gets its cluster's value divided by the cluster size (sums are preserved)."""
    sizes = np.bincount(assign, minlength=len(cluster_values)).astype(np.float64)
    return (cluster_values / np.maximum(sizes, 1))[assign]


def cluster_shapley(utility: UtilityFn, assign: np.ndarray, n_clusters: int, *, exact_below: int = 12,
                    **kw) -> ValuationResult:
    """Shapley values of clusters as players (exact when there are at most ``exact_below`` clusters,
    TMC otherwise), spread equally to the members."""
    game = ClusterUtility(utility, np.asarray(assign, dtype=np.int64), n_clusters)
    if n_clusters <= exact_below:
        cv = exact_semivalue(game, n_clusters)
        res = ValuationResult(cv, None, 1, True, 1 << n_clusters, "cluster")
    else:
        res = tmc_shapley(game, n_clusters, **kw)
        res.method = "cluster"
    res.values = spread_to_members(res.values, np.asarray(assign, dtype=np.int64))
    if res.stderr is not None:
        res.stderr = spread_to_members(res.stderr, np.asarray(assign, dtype=np.int64))
    return res
