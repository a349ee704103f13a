"""The numba union-find of :meth:`curate.core.global_ops.GlobalOps.connected_components` (its own module so
that importing the global ops, as every selector does, loads no numba)."""

from __future__ import annotations

import numpy as np
from numba import njit

from curate.core.jit import prepare

prepare()  # numba's registries without SciPy, before any kernel loads (curate/core/jit.py)


@njit(cache=True)
def _find(parent, x):
    root = x
    while parent[root] != root:
        root = parent[root]
    while parent[x] != root:
        parent[x], x = root, parent[x]
    return root


@njit(cache=True)
def min_label_union_find(n, ia, ib):
    """Components of the graph on n nodes (numbered in ascending id order) with edges (ia, ib): each node's
    component as its smallest member (union keeps the smaller root, so a root is its component's minimum)."""
    parent = np.arange(n, dtype=np.int64)
    for p in range(ia.shape[0]):
        ra, rb = _find(parent, ia[p]), _find(parent, ib[p])
        if ra < rb:
            parent[rb] = ra
        elif rb < ra:
            parent[ra] = rb
    out = np.empty(n, dtype=np.int64)
    for x in range(n):
        out[x] = _find(parent, x)
    return out
