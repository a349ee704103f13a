"""Metrics on embeddings and hidden representations (numpy; ``mauve-text`` for MAUVE).

* :func:`embedding_diversity`: mean pairwise cosine distance of a set of embeddings (1 - mean cosine
  similarity over distinct pairs), computed from the sum of unit vectors in O(n d) instead of O(n^2 d).
* :func:`linear_cka`: linear Centered Kernel Alignment between two representations of the same examples
  (Kornblith et al. 2019, Eq. 2 in its feature-space form ``||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)`` on
  centred features); 1 for representations equal up to rotation and isotropic scaling.
* :func:`mauve`: MAUVE (Pillutla et al. 2021) between two sets of text embeddings through the authors'
  ``mauve-text`` package (k-means quantisation of the joint embeddings, area under the divergence curve);
  ``mauve-text``'s defaults except the number of clusters, which defaults to ``n / 10`` as the package does.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def embedding_diversity(embeddings: Any) -> float:
    """1 - mean cosine similarity over all distinct pairs (0 = all identical directions)."""
    x = np.asarray(embeddings, dtype=np.float64)
    n = x.shape[0]
    if n < 2:
        return float("nan")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    u = x / np.where(norms == 0, 1.0, norms)
    s = u.sum(axis=0)
    # sum over i != j of u_i . u_j = |sum u|^2 - sum |u_i|^2
    pair_sum = float(s @ s) - float((u * u).sum())
    return 1.0 - pair_sum / (n * (n - 1))


def linear_cka(x: Any, y: Any) -> float:
    """Linear CKA of ``x [n, d1]`` and ``y [n, d2]`` (rows are the same examples), in float64."""
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"CKA needs the same examples in both: {a.shape[0]} vs {b.shape[0]} rows")
    a = a - a.mean(axis=0, keepdims=True)
    b = b - b.mean(axis=0, keepdims=True)
    cross = np.linalg.norm(b.T @ a) ** 2
    den = np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b)
    return float(cross / den) if den > 0 else float("nan")


def mauve(p_features: Any, q_features: Any, *, num_clusters: int | None = None, seed: int = 25) -> float:
    """MAUVE between two sets of text embeddings (rows), via ``mauve.compute_mauve``; 1 = same distribution.

    ``seed`` 25 and ``num_buckets='auto'`` (n/10 clusters) are mauve-text's defaults."""
    import mauve as mauve_pkg

    p = np.asarray(p_features, dtype=np.float32)
    q = np.asarray(q_features, dtype=np.float32)
    out = mauve_pkg.compute_mauve(p_features=p, q_features=q, num_buckets=num_clusters or "auto", seed=seed,
                                  verbose=False)
    return float(out.mauve)
