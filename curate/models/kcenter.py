"""Greedy k-center (Gonzalez 1985; Sener & Savarese 2018 "core-set"), shared by the ``kcenter_coreset``
selector (:mod:`curate.selectors.coresets`) and the dataset-distillation baselines
(:mod:`curate.distill.dataset_distill`); it lives here because areas import only curate.core, curate.io and
curate.models. numpy only; callers that run it on a loaded machine limit BLAS threads themselves.
"""

from __future__ import annotations

import numpy as np


def kcenter_greedy(X: np.ndarray, k: int | None = None, *, radius: float | None = None, first: int = 0,
                   tokens: np.ndarray | None = None, budget: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy k-center: start at ``first``, repeatedly add the point farthest (Euclidean) from the chosen
    set. Its radius is at most twice the optimum.

    Stops after ``k`` centres, when the coverage radius is <= ``radius``, or before the chosen points'
    ``tokens`` would exceed ``budget``. Returns (chosen indices in order, distance of each to the set when
    chosen - the first centre gets its own coverage radius -, every point's final distance to the set).
    """
    X = np.asarray(X, dtype=np.float64)
    n = len(X)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
    sq = (X * X).sum(1)

    def dist_to(c: int) -> np.ndarray:
        return np.sqrt(np.maximum(sq + sq[c] - 2.0 * (X @ X[c]), 0.0))

    d = dist_to(first)
    d[first] = 0.0
    chosen, gains = [first], [float(d.max())]
    used = float(tokens[first]) if tokens is not None else 0.0
    while True:
        nxt = int(np.argmax(d))
        g = float(d[nxt])
        if (k is not None and len(chosen) >= k) or (radius is not None and g <= radius) or g <= 0.0:
            break
        if tokens is not None and budget is not None:
            if used + tokens[nxt] > budget:
                break
            used += float(tokens[nxt])
        chosen.append(nxt)
        gains.append(g)
        d = np.minimum(d, dist_to(nxt))
        d[nxt] = 0.0
    return np.asarray(chosen, dtype=np.int64), np.asarray(gains), d
