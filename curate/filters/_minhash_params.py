"""MinHash/LSH parameters: permutation coefficients, the S-curve, datasketch's optimal (bands, rows), presets."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

MERSENNE = (1 << 61) - 1

#: Peers' settings, so their results can be reproduced (peers.md §8.1; algorithms.md §3.1).
#: DataTrove ``MinhashConfig``: word 5-grams of ``simplify_text``, 14 buckets x 8 hashes, 64-bit hashes.
#: NeMo Curator ``FuzzyDuplicatesConfig``: character 24-grams of the raw text, 20 bands x 13 rows.
PRESETS: dict[str, dict] = {
    "datatrove": {"shingle": "word", "ngram": 5, "bands": 14, "rows": 8, "normalize": True, "verify": False},
    "nemo": {"shingle": "char", "ngram": 24, "bands": 20, "rows": 13, "normalize": False, "verify": False},
}


def permutations(scheme: str, num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) coefficient arrays (uint64) for ``num_perm`` hash permutations.

    ``affine32`` and ``legacy`` draw exactly as ``datasketch.MinHash._init_permutations`` (2.0.0) does
    from ``np.random.RandomState(seed)``; ``fast`` draws odd 64-bit multipliers from ``default_rng(seed)``.
    """
    if scheme == "legacy":
        gen = np.random.RandomState(seed)
        ab = np.array([(gen.randint(1, MERSENNE, dtype=np.uint64), gen.randint(0, MERSENNE, dtype=np.uint64))
                       for _ in range(num_perm)], dtype=np.uint64).T
        return ab[0].copy(), ab[1].copy()
    if scheme == "affine32":
        gen = np.random.RandomState(seed)
        a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
        b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
        return a.astype(np.uint64), b.astype(np.uint64)
    if scheme == "fast":
        rng = np.random.default_rng(seed)
        a = rng.integers(0, 1 << 63, num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        b = rng.integers(0, np.iinfo(np.uint64).max, num_perm, dtype=np.uint64, endpoint=True)
        return a, b
    raise ValueError(f"unknown scheme {scheme!r}")


def s_curve(s: np.ndarray | float, bands: int, rows: int) -> np.ndarray:
    """P(two documents with Jaccard s share at least one band) = 1 - (1 - s^r)^b."""
    return 1.0 - (1.0 - np.asarray(s, dtype=np.float64) ** rows) ** bands


@lru_cache(maxsize=4)
def _gauss_legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.polynomial.legendre.leggauss(n)


@lru_cache(maxsize=64)
def optimal_param(threshold: float, num_perm: int, *, fp_weight: float = 0.5, fn_weight: float = 0.5
                  ) -> tuple[int, int]:
    """(bands, rows) minimising fp_weight * FP + fn_weight * FN, as ``datasketch.lsh._optimal_param``:
    FP = integral_0^t S(s) ds, FN = integral_t^1 (1 - S(s)) ds over b in [1, num_perm], r in [1, num_perm // b],
    first minimum in (b, r) order. Integrals by 200-point Gauss-Legendre (datasketch uses scipy ``quad``)."""
    x, w = _gauss_legendre(200)
    t = float(threshold)
    s_fp = 0.5 * t * (x + 1.0)
    s_fn = t + 0.5 * (1.0 - t) * (x + 1.0)
    bs = np.concatenate([np.full(num_perm // b, b) for b in range(1, num_perm + 1)]).astype(np.float64)
    rs = np.concatenate([np.arange(1, num_perm // b + 1) for b in range(1, num_perm + 1)]).astype(np.float64)
    fp = 0.5 * t * ((1.0 - (1.0 - s_fp[None, :] ** rs[:, None]) ** bs[:, None]) @ w)
    fn = 0.5 * (1.0 - t) * (((1.0 - s_fn[None, :] ** rs[:, None]) ** bs[:, None]) @ w)
    i = int(np.argmin(fp * fp_weight + fn * fn_weight))  # first minimum in (b, r) order
    return int(bs[i]), int(rs[i])


#: The ``recall`` rule's target: P(candidate | J = threshold) must be at least this.
RECALL_TARGET = 0.99


@lru_cache(maxsize=64)
def recall_param(threshold: float, num_perm: int, *, target: float = RECALL_TARGET) -> tuple[int, int]:
    """(bands, rows) for recall when candidates are verified afterwards: the largest ``rows`` r (fewest
    candidates to verify) whose ``bands = num_perm // r`` give S(threshold) = 1 - (1 - t^r)^b >= ``target``;
    r = 1 (every shared hash a candidate) when none does.

    Verification drops every false positive, so LSH only has to not miss true pairs; datasketch's balanced
    rule (fp = fn weight) instead leaves 13-60 % of pairs at the threshold undetected. S-curves at
    num_perm 128 (``s_curve``):

    ======================  =======  =======  =======  =======  =======  =======
    J                       0.70     0.75     0.80     0.85     0.90     0.95
    ======================  =======  =======  =======  =======  =======  =======
    t=0.8 datasketch 9x13   0.084    0.195    0.399    0.686    0.929    0.999
    t=0.8 recall 21x6       0.928    0.982    0.998    1.000    1.000    1.000
    14x8 (DataTrove)        0.565    0.772    0.924    0.988    1.000    1.000
    t=0.7 datasketch 14x9   0.438    0.665    0.867    0.975    0.999    1.000
    t=0.7 recall 32x4       1.000    1.000    1.000    1.000    1.000    1.000
    t=0.9 datasketch 5x25   0.001    0.004    0.019    0.083    0.311    0.803
    t=0.9 recall 12x10      0.278    0.479    0.712    0.910    0.994    1.000
    ======================  =======  =======  =======  =======  =======  =======
    """
    for r in range(num_perm, 0, -1):
        b = num_perm // r
        if float(s_curve(threshold, b, r)) >= target:
            return b, r
    return num_perm, 1
