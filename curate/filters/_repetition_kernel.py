"""Numba kernels for Gopher repetition n-gram statistics.

The duplicate n-gram statistic skips ``n`` words after each repeated n-gram (DataTrove's
``find_all_duplicate``), which is sequential per document and cannot be written as a polars expression;
this kernel does it over a whole batch with one open-addressing hash table per document.
Inputs are per-word 64-bit hashes and character lengths, flattened, with document offsets.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_MULT = np.uint64(0x9E3779B97F4A7C15)


@njit(cache=True, inline="always")
def _ngram_hash(h: np.ndarray, i: int, n: int) -> np.uint64:
    acc = np.uint64(0xCBF29CE484222325)
    for j in range(n):
        acc = (acc ^ h[i + j]) * _MULT
        acc ^= acc >> np.uint64(29)
    if acc == np.uint64(0):  # 0 marks an empty slot
        acc = np.uint64(1)
    return acc


@njit(cache=True)
def repetition_stats(hashes: np.ndarray, lengths: np.ndarray, offsets: np.ndarray,
                     top_ns: np.ndarray, dup_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per document: characters in the most common n-gram (space-joined, x its count) for each n in
    ``top_ns``, and characters in repeated n-grams (concatenated, skip-ahead) for each n in ``dup_ns``."""
    n_docs = offsets.shape[0] - 1
    top = np.zeros((n_docs, top_ns.shape[0]), dtype=np.int64)
    dup = np.zeros((n_docs, dup_ns.shape[0]), dtype=np.int64)
    max_words = 0
    for d in range(n_docs):
        max_words = max(max_words, offsets[d + 1] - offsets[d])
    size = 16
    while size < 2 * max_words + 2:
        size *= 2
    keys = np.zeros(size, dtype=np.uint64)
    counts = np.zeros(size, dtype=np.int64)
    first = np.zeros(size, dtype=np.int64)
    clen = np.zeros(size, dtype=np.int64)
    for d in range(n_docs):
        s, e = offsets[d], offsets[d + 1]
        m = e - s
        cap = 16
        while cap < 2 * m + 2:
            cap *= 2
        mask = np.uint64(cap - 1)
        w = hashes[s:e]
        ln = lengths[s:e]
        for t in range(top_ns.shape[0]):
            n = top_ns[t]
            if m < n:
                continue
            keys[:cap] = 0
            best_count, best_first, best_len = 0, 0, 0
            for i in range(m - n + 1):
                k = _ngram_hash(w, i, n)
                slot = k & mask
                while keys[slot] != 0 and keys[slot] != k:
                    slot = (slot + np.uint64(1)) & mask
                if keys[slot] == 0:
                    keys[slot] = k
                    counts[slot] = 0
                    first[slot] = i
                    chars = n - 1
                    for j in range(n):
                        chars += ln[i + j]
                    clen[slot] = chars
                counts[slot] += 1
                c = counts[slot]
                if c > best_count or (c == best_count and first[slot] < best_first):
                    best_count, best_first, best_len = c, first[slot], clen[slot]
            top[d, t] = best_count * best_len
        for t in range(dup_ns.shape[0]):
            n = dup_ns[t]
            keys[:cap] = 0
            repeated = 0
            i = 0
            while i < m - n + 1:
                k = _ngram_hash(w, i, n)
                slot = k & mask
                while keys[slot] != 0 and keys[slot] != k:
                    slot = (slot + np.uint64(1)) & mask
                if keys[slot] == k:
                    for j in range(n):
                        repeated += ln[i + j]
                    i += n
                else:
                    keys[slot] = k
                    i += 1
            dup[d, t] = repeated
    return top, dup
