"""Numba kernels for Gopher repetition n-gram statistics.

The duplicate n-gram statistic skips ``n`` words after each repeated n-gram (DataTrove's
``find_all_duplicate``), which is sequential per document and cannot be written as a polars expression;
this kernel does it over a whole batch with one open-addressing hash table per document.
Inputs are per-word 64-bit hashes and character lengths, flattened, with document offsets.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from curate.core.jit import prepare
from curate.core.tokens import longest_row

prepare()  # numba's registries without SciPy, before any kernel loads (curate/core/jit.py)

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
    max_words = longest_row(offsets)
    size = 16
    while size < 2 * max_words + 2:
        size *= 2
    keys = np.zeros(size, dtype=np.uint64)
    max_n = 1
    for n in top_ns:
        max_n = max(max_n, n)
    for n in dup_ns:
        max_n = max(max_n, n)
    # hashes of every n-gram, n = 1..max_n, built by extending the (n-1)-gram's: the same values as
    # _ngram_hash (its loop is this chain), without rehashing n words per n-gram
    grams = np.empty((max_n, max(max_words, 1)), dtype=np.uint64)
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
        for i in range(m):
            acc = (np.uint64(0xCBF29CE484222325) ^ w[i]) * _MULT
            grams[0, i] = acc ^ (acc >> np.uint64(29))
        for n1 in range(1, min(max_n, m)):
            for i in range(m - n1):
                acc = (grams[n1 - 1, i] ^ w[i + n1]) * _MULT
                grams[n1, i] = acc ^ (acc >> np.uint64(29))
        for t in range(top_ns.shape[0]):
            n = top_ns[t]
            if m < n:
                continue
            keys[:cap] = 0
            best_count, best_first, best_len = 0, 0, 0
            for i in range(m - n + 1):
                k = grams[n - 1, i]
                if k == np.uint64(0):  # 0 marks an empty slot (as _ngram_hash)
                    k = np.uint64(1)
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
                k = grams[n - 1, i]
                if k == np.uint64(0):  # 0 marks an empty slot (as _ngram_hash)
                    k = np.uint64(1)
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


@njit(cache=True)
def gopher_word_stats(offsets: np.ndarray, hashes: np.ndarray, lengths: np.ndarray, flags: np.ndarray,
                      stop_hashes: np.ndarray, stop_lengths: np.ndarray, punct_bit: int,
                      alpha_bit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per document: non-symbol words, their total characters, tokens with a letter, distinct stop words
    present (a token is a stop word when its hash and length equal one's: ``stop_hashes`` sorted)."""
    n_docs = offsets.shape[0] - 1
    n_words = np.zeros(n_docs, dtype=np.int64)
    len_sum = np.zeros(n_docs, dtype=np.int64)
    n_alpha = np.zeros(n_docs, dtype=np.int64)
    n_stop = np.zeros(n_docs, dtype=np.int64)
    k = stop_hashes.shape[0]
    seen = np.zeros(max(k, 1), dtype=np.uint8)
    bloom = np.zeros(4096, dtype=np.uint8)  # rejects most tokens before the binary search
    for h in stop_hashes:
        bloom[h & np.uint64(4095)] = 1
    for d in range(n_docs):
        seen[:] = 0
        for t in range(offsets[d], offsets[d + 1]):
            f = flags[t]
            if (f & punct_bit) == 0:
                n_words[d] += 1
                len_sum[d] += lengths[t]
            if f & alpha_bit:
                n_alpha[d] += 1
            if k and bloom[hashes[t] & np.uint64(4095)]:
                i = np.searchsorted(stop_hashes, hashes[t])
                while i < k and stop_hashes[i] == hashes[t]:
                    if stop_lengths[i] == lengths[t] and seen[i] == 0:
                        seen[i] = 1
                        n_stop[d] += 1
                    i += 1
    return n_words, len_sum, n_alpha, n_stop


@njit(cache=True)
def _seg_hash(data: np.ndarray, s: int, e: int) -> np.uint64:
    h = np.uint64(0xCBF29CE484222325)
    for i in range(s, e):
        h = (h ^ np.uint64(data[i])) * np.uint64(0x100000001B3)
    h ^= h >> np.uint64(31)
    return h if h != np.uint64(0) else np.uint64(1)


@njit(cache=True)
def _same_bytes(data: np.ndarray, s1: int, e1: int, s2: int, e2: int) -> bool:
    if e1 - s1 != e2 - s2:
        return False
    for k in range(e1 - s1):
        if data[s1 + k] != data[s2 + k]:
            return False
    return True


@njit(cache=True)
def _utf8_chars(data: np.ndarray, s: int, e: int) -> int:
    n = 0
    for i in range(s, e):
        if (data[i] & 0xC0) != 0x80:
            n += 1
    return n


@njit(cache=True)
def dup_segment_stats(data: np.ndarray, offsets: np.ndarray, space: np.ndarray,
                      paragraphs: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per document (UTF-8 ``data`` with row ``offsets``): segments, distinct segments, characters in all
    segments, characters in distinct segments - the four numbers of Gopher's duplicate line/paragraph
    fractions, computed as GopherRepetition's polars definition does: lines split on every run of "\\n"
    (``replace_all("\\n+", "\\0").split("\\0")``), paragraphs on every run of 2+ "\\n" after stripping
    whitespace at both ends (``space``: one flag per code point, Unicode White_Space); a NUL already in the
    text splits too, as it does there. Distinct means byte-equal (hash, then compared byte by byte)."""
    n_docs = offsets.shape[0] - 1
    n_seg = np.zeros(n_docs, dtype=np.int64)
    n_uniq = np.zeros(n_docs, dtype=np.int64)
    chars = np.zeros(n_docs, dtype=np.int64)
    uchars = np.zeros(n_docs, dtype=np.int64)
    max_len = max(1, longest_row(offsets))
    starts = np.empty(max_len + 2, dtype=np.int64)
    ends = np.empty(max_len + 2, dtype=np.int64)
    size = 16
    while size < 2 * (max_len + 2):
        size *= 2
    keys = np.zeros(size, dtype=np.uint64)
    slot_seg = np.zeros(size, dtype=np.int64)
    for d in range(n_docs):
        s, e = offsets[d], offsets[d + 1]
        if paragraphs:  # strip leading and trailing whitespace (code points)
            while s < e:
                b = np.int64(data[s])
                if b < 0x80:
                    cp, ln = b, 1
                elif b < 0xE0:
                    cp, ln = ((b & 0x1F) << 6) | (np.int64(data[s + 1]) & 0x3F), 2
                elif b < 0xF0:
                    cp, ln = ((b & 0x0F) << 12) | ((np.int64(data[s + 1]) & 0x3F) << 6) | (np.int64(data[s + 2]) & 0x3F), 3
                else:
                    cp, ln = (((b & 0x07) << 18) | ((np.int64(data[s + 1]) & 0x3F) << 12)
                              | ((np.int64(data[s + 2]) & 0x3F) << 6) | (np.int64(data[s + 3]) & 0x3F)), 4
                if space[cp] == 0:
                    break
                s += ln
            while e > s:
                j = e - 1
                while j > s and (data[j] & 0xC0) == 0x80:
                    j -= 1
                b = np.int64(data[j])
                if b < 0x80:
                    cp = b
                elif b < 0xE0:
                    cp = ((b & 0x1F) << 6) | (np.int64(data[j + 1]) & 0x3F)
                elif b < 0xF0:
                    cp = ((b & 0x0F) << 12) | ((np.int64(data[j + 1]) & 0x3F) << 6) | (np.int64(data[j + 2]) & 0x3F)
                else:
                    cp = (((b & 0x07) << 18) | ((np.int64(data[j + 1]) & 0x3F) << 12)
                          | ((np.int64(data[j + 2]) & 0x3F) << 6) | (np.int64(data[j + 3]) & 0x3F))
                if space[cp] == 0:
                    break
                e = j
        k = 0
        seg_start = s
        i = s
        while i < e:
            c = data[i]
            if c == 0:
                starts[k] = seg_start
                ends[k] = i
                k += 1
                i += 1
                seg_start = i
            elif c == 10:
                j = i
                while j < e and data[j] == 10:
                    j += 1
                if not paragraphs or j - i >= 2:
                    starts[k] = seg_start
                    ends[k] = i
                    k += 1
                    seg_start = j
                i = j
            else:
                i += 1
        starts[k] = seg_start
        ends[k] = e
        k += 1
        cap = 16
        while cap < 2 * k + 2:
            cap *= 2
        mask = np.uint64(cap - 1)
        keys[:cap] = 0
        u = 0
        total = 0
        utotal = 0
        for g in range(k):
            nch = _utf8_chars(data, starts[g], ends[g])
            total += nch
            h = _seg_hash(data, starts[g], ends[g])
            slot = h & mask
            new = True
            while keys[slot] != 0:
                if keys[slot] == h:
                    o = slot_seg[slot]
                    if _same_bytes(data, starts[o], ends[o], starts[g], ends[g]):
                        new = False
                        break
                slot = (slot + np.uint64(1)) & mask
            if new:
                keys[slot] = h
                slot_seg[slot] = g
                u += 1
                utotal += nch
        n_seg[d] = k
        n_uniq[d] = u
        chars[d] = total
        uchars[d] = utotal
    return n_seg, n_uniq, chars, uchars
